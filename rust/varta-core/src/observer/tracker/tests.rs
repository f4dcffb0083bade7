//! Tracker unit tests that look inside: slot layout and the pid index as
//! the tracker fills it.

use super::*;
use crate::frame::Status;
use crate::observer::pid_index::{mix, LINE_ENTRIES, SLOT_MASK};

const OK: Frame = Frame {
    status: Status::Ok,
    pid: 0,
    timestamp: 0,
    nonce: 0,
    payload: 0,
};

fn beat(pid: u32, nonce: u64) -> Frame {
    Frame {
        pid,
        nonce,
        timestamp: nonce,
        ..OK
    }
}

const KA: BeatOrigin = BeatOrigin::KernelAttested;

fn tracker(capacity: usize) -> Tracker {
    Tracker::new(TrackerConfig {
        capacity,
        ..TrackerConfig::new(1_000)
    })
    .unwrap()
}

#[test]
fn slots_are_one_cache_line_each() {
    assert_eq!(core::mem::size_of::<Slot>(), 64);
    assert_eq!(core::mem::align_of::<Slot>(), 64);
}

/// A pid goes to its preferred entry (its place in its block), and a
/// second block homed on the same line to the second half, so lookups
/// take the one-entry fast path.
#[test]
fn pids_sit_at_their_preferred_entries() {
    let mut t = tracker(1_000);
    let home = t.index.home(800);
    let other = (101u32..)
        .find(|&b| t.index.home(u64::from(b << 3)) == home)
        .unwrap()
        << 3;
    for pid in (800..808).chain(other..other + 8) {
        assert_eq!(
            t.record(&beat(pid, 1), KA, None, None, 1),
            RecordOutcome::Inserted
        );
    }
    let pos = |t: &Tracker, pid: u32| match t.index.probe(u64::from(pid), &t.slots) {
        Probe::Found { line, pos, .. } => (line, pos),
        Probe::Absent => panic!("pid {pid} not found"),
    };
    for i in 0..8u32 {
        assert_eq!(pos(&t, 800 + i), (home, i as usize));
    }
    for i in 0..7u32 {
        assert_eq!(pos(&t, other + i), (home, 8 + i as usize));
    }
    // The 16th pid finds the line full and goes on to the next one.
    assert_eq!(pos(&t, other + 7).0, t.index.next(home));
    assert_eq!(t.index.lines[home].overflow, 1);
    t.check_invariants().unwrap();
}

/// Two pids whose index entries carry the same tag and share a home
/// line: only the pid stored in the slot tells them apart.
#[test]
fn a_tag_collision_is_resolved_by_the_slot_pid() {
    let mut t = tracker(4);
    let key = |t: &Tracker, pid: u32| (mix(pid) & !SLOT_MASK, t.index.home(u64::from(pid)));
    let a = 1000;
    let b = (a + 1..u32::MAX)
        .find(|&p| key(&t, p) == key(&t, a))
        .unwrap();
    assert_eq!(
        t.record(&beat(a, 1), KA, None, None, 1),
        RecordOutcome::Inserted
    );
    assert!(t.get(b).is_none(), "b must not match a's entry");
    assert_eq!(
        t.record(&beat(b, 1), KA, None, None, 2),
        RecordOutcome::Inserted
    );
    assert_eq!(
        t.record(&beat(b, 2), KA, None, None, 3),
        RecordOutcome::Refreshed
    );
    assert_eq!(t.get(a).unwrap().beats, 1);
    assert_eq!(t.get(b).unwrap().beats, 2);
    assert!(t.retire(a));
    assert!(t.get(a).is_none());
    assert_eq!(t.get(b).unwrap().pid, b);
    t.check_invariants().unwrap();
}

/// 960 pids with one home line fill the 64 lines of its chain; the
/// next is refused as exhausted (nothing else changes), pids elsewhere
/// still get in, and a retirement on the chain makes room again.
#[test]
fn a_full_chain_refuses_a_new_pid_until_one_leaves() {
    let mut t = tracker(2_000);
    let home = t.index.home(8);
    let chain: Vec<u32> = (1..u32::MAX >> 3)
        .filter(|&b| t.index.home(u64::from(b << 3)) == home)
        .flat_map(|b| (b << 3)..(b << 3) + 8)
        .take(MAX_PROBE_LINES * LINE_ENTRIES + 1)
        .collect();
    let (last, fill) = chain.split_last().unwrap();
    for (i, &pid) in fill.iter().enumerate() {
        let out = t.record(&beat(pid, 1), KA, None, None, i as u64);
        assert_eq!(out, RecordOutcome::Inserted, "pid {pid}");
    }
    t.check_invariants().unwrap();
    assert_eq!(
        t.record(&beat(*last, 1), KA, None, None, 10_000),
        RecordOutcome::CapacityExceeded
    );
    assert_eq!(t.counters().probe_exhausted, 1);
    assert_eq!(t.len(), fill.len());
    let elsewhere = (1u32..)
        .find(|&p| t.index.home(u64::from(p)) != home)
        .unwrap();
    assert_eq!(
        t.record(&beat(elsewhere, 1), KA, None, None, 10_001),
        RecordOutcome::Inserted
    );
    assert!(t.retire(fill[0]));
    assert_eq!(
        t.record(&beat(*last, 1), KA, None, None, 10_002),
        RecordOutcome::Inserted
    );
    assert_eq!(t.counters().probe_exhausted, 1);
    t.check_invariants().unwrap();
}

/// Dense pids crowd lines, so inserts overflow and removals must undo
/// exactly the overflow counts they added (checked from scratch).
#[test]
fn overflow_counts_follow_dense_churn() {
    let mut t = tracker(240);
    let mut live = std::collections::VecDeque::new();
    for (next, step) in (1_000u32..).zip(0..5_000u64) {
        if live.len() == 240 || (step % 7 == 3 && !live.is_empty()) {
            // Retire from the middle as well as the oldest.
            let at = (step as usize * 31) % live.len();
            let pid = live.remove(at).unwrap();
            assert!(t.retire(pid));
        }
        assert_eq!(
            t.record(&beat(next, 1), KA, None, None, step),
            RecordOutcome::Inserted
        );
        live.push_back(next);
        if step % 97 == 0 {
            t.check_invariants().unwrap();
        }
    }
    assert!(
        t.index.lines.iter().any(|l| l.overflow > 0),
        "test must reach overflow"
    );
    for &pid in &live {
        assert_eq!(t.get(pid).unwrap().pid, pid);
    }
    assert_eq!(t.counters().probe_exhausted, 0);
    t.check_invariants().unwrap();
}

fn net(addr: &str) -> NetPeer {
    NetPeer {
        addr: addr.parse().unwrap(),
        key: PeerKey::Plain,
    }
}

const NU: BeatOrigin = BeatOrigin::NetworkUnverified;

/// docs/observer.md#agent-identity: equal pids from two hosts are two
/// agents, apart from the Unix socket's; each stalls on its own; both
/// count against the capacity; sender ids go with their last agent.
#[test]
fn equal_pids_on_two_hosts_are_two_agents() {
    let mut t = tracker(3);
    let (a, b) = (net("127.0.0.1"), net("127.0.0.2"));
    assert_eq!(
        t.record_net(&beat(77, 5), NU, a, 0),
        RecordOutcome::Inserted
    );
    // b's lower nonce is not out of order: it is another agent.
    assert_eq!(
        t.record_net(&beat(77, 1), NU, b, 10),
        RecordOutcome::Inserted
    );
    assert_eq!(
        t.record(&beat(77, 1), KA, None, None, 20),
        RecordOutcome::Inserted
    );
    assert_eq!(t.len(), 3);
    assert_eq!(t.get_at(Some(&a), 77).unwrap().last_nonce, 5);
    assert_eq!(t.get_at(Some(&b), 77).unwrap().peer, Some(b));
    assert_eq!(t.get(77).unwrap().origin, KA);
    assert!(t.get_at(Some(&net("127.0.0.3")), 77).is_none());
    // Full: a fourth agent is refused (strict eviction, nobody stalled).
    assert_eq!(
        t.record_net(&beat(77, 1), NU, net("127.0.0.3"), 30),
        RecordOutcome::CapacityExceeded
    );
    assert_eq!(t.peers().0, 2, "the refused sender's id was given back");
    t.check_invariants().unwrap();
    // a keeps beating, b falls silent: only b stalls.
    assert_eq!(
        t.record_net(&beat(77, 6), NU, a, 900),
        RecordOutcome::Refreshed
    );
    assert_eq!(
        t.record(&beat(77, 2), KA, None, None, 900),
        RecordOutcome::Refreshed
    );
    let mut stalled = Vec::new();
    t.expire(1_010, &mut |s| stalled.push(s.peer));
    assert_eq!(stalled, [Some(b)]);
    // Retiring the Unix socket's pid leaves both network agents.
    assert!(t.retire(77));
    assert_eq!(t.len(), 2);
    let mut removed = Vec::new();
    t.take_removed(&mut removed);
    assert_eq!(
        removed,
        [AgentRef {
            pid: 77,
            peer: None
        }]
    );
    t.check_invariants().unwrap();
    // Evicting b (stalled, silent > 10 thresholds) frees its sender id.
    assert_eq!(
        t.record_net(&beat(78, 1), NU, a, 20_000),
        RecordOutcome::Inserted
    );
    assert_eq!(
        t.record_net(&beat(79, 1), NU, a, 20_001),
        RecordOutcome::Inserted
    );
    assert_eq!(t.counters().tracker_evicted, 1);
    assert_eq!(t.peers().0, 1);
    removed.clear();
    t.take_removed(&mut removed);
    assert_eq!(
        removed,
        [AgentRef {
            pid: 77,
            peer: Some(b)
        }]
    );
    t.check_invariants().unwrap();
}

/// The sender table is bounded by capacity + 1 ids, so it cannot fill
/// before the tracker does; a sender refused for capacity leaves no id.
#[test]
fn sender_ids_are_bounded_and_reused() {
    let mut t = tracker(2);
    assert_eq!(t.peers().1, 3);
    for i in 0..50u32 {
        let p = net(&format!("10.0.{}.{}", i / 200, i % 200 + 1));
        let out = t.record_net(&beat(5, 1), NU, p, u64::from(i) * 100_000);
        if i < 2 {
            assert_eq!(out, RecordOutcome::Inserted);
        }
        t.expire(u64::from(i) * 100_000 + 1_000, &mut |_| {});
        t.check_invariants().unwrap();
    }
    // Each new sender evicted a stalled old one: ids were recycled.
    assert!(t.peers().0 <= 2);
    assert_eq!(t.counters().peer_table_full, 0);
}

/// Local agents hash as before: the index key of the Unix socket's pid
/// is the pid itself.
#[test]
fn unix_socket_keys_are_plain_pids() {
    let mut t = tracker(16);
    t.record(&beat(4242, 1), KA, None, None, 1);
    assert!(matches!(t.index.probe(4242, &t.slots), Probe::Found { .. }));
    assert_eq!(t.index.home(4242), {
        let lines = t.index.lines.len() as u64;
        ((u64::from(mix(4242 >> 3)) * lines) >> 32) as usize
    });
}
