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
    let other = (101u32..).find(|&b| t.index.home(b << 3) == home).unwrap() << 3;
    for pid in (800..808).chain(other..other + 8) {
        assert_eq!(
            t.record(&beat(pid, 1), KA, None, None, 1),
            RecordOutcome::Inserted
        );
    }
    let pos = |t: &Tracker, pid| match t.index.probe(pid, &t.slots) {
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
    let key = |t: &Tracker, pid: u32| (mix(pid) & !SLOT_MASK, t.index.home(pid));
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
        .filter(|&b| t.index.home(b << 3) == home)
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
    let elsewhere = (1..).find(|&p| t.index.home(p) != home).unwrap();
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
