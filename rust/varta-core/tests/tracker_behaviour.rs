//! Tracker transitions (`docs/observer.md#tracker`) driven by a fake clock: no sleeps.

use varta_core::frame::{Frame, Status, NONCE_TERMINAL};
#[cfg(feature = "bench")]
use varta_core::observer::bench::{
    bench_tracker, bench_tracker_scaling, bench_tracker_scaling_layout, PidLayout,
};
use varta_core::observer::clock::{Clock, FakeClock};
use varta_core::observer::tracker::ExitOutcome;
use varta_core::observer::tracker::{
    BeatOrigin, EvictionPolicy, RecordOutcome, StallDecision, StallInfo, Tracker, TrackerConfig,
    TrackerConfigError, MAX_CAPACITY, NONCE_WRAP_THRESHOLD,
};
use varta_core::observer::verdict::{TerminalCause, PAYLOAD_CLEAN_EXIT};
use varta_core::observer::Verdict;

const T: u64 = 1_000_000; // 1 ms threshold
const KA: BeatOrigin = BeatOrigin::KernelAttested;

fn beat(pid: u32, nonce: u64) -> Frame {
    Frame {
        status: Status::Ok,
        pid,
        timestamp: nonce,
        nonce,
        payload: 0,
    }
}

fn terminal(pid: u32, ts: u64) -> Frame {
    Frame {
        status: Status::Critical,
        pid,
        timestamp: ts,
        nonce: NONCE_TERMINAL,
        payload: 0,
    }
}

fn tracker(capacity: usize, eviction: EvictionPolicy, scan_window: usize) -> Tracker {
    Tracker::new(TrackerConfig {
        capacity,
        threshold_ns: T,
        eviction,
        scan_window,
    })
    .unwrap()
}

fn small() -> Tracker {
    tracker(16, EvictionPolicy::Strict, 256)
}

fn stalls(t: &mut Tracker, now: u64) -> Vec<StallInfo> {
    let mut out = Vec::new();
    t.expire(now, &mut |s| out.push(s));
    t.check_invariants().unwrap();
    out
}

fn pids(v: &[StallInfo]) -> Vec<u32> {
    v.iter().map(|s| s.pid).collect()
}

#[test]
fn config_is_validated() {
    let ok = TrackerConfig::new(T);
    assert_eq!(ok.capacity, 256);
    assert_eq!(ok.scan_window, 256);
    assert_eq!(ok.eviction, EvictionPolicy::Strict);
    assert!(Tracker::new(ok).is_ok());
    for (cfg, err) in [
        (
            TrackerConfig { capacity: 0, ..ok },
            TrackerConfigError::Capacity(0),
        ),
        (
            TrackerConfig {
                capacity: MAX_CAPACITY + 1,
                ..ok
            },
            TrackerConfigError::Capacity(MAX_CAPACITY + 1),
        ),
        (
            TrackerConfig {
                threshold_ns: 0,
                ..ok
            },
            TrackerConfigError::Threshold(0),
        ),
        (
            TrackerConfig {
                scan_window: 0,
                ..ok
            },
            TrackerConfigError::ScanWindow(0),
        ),
        (
            TrackerConfig {
                scan_window: 4097,
                ..ok
            },
            TrackerConfigError::ScanWindow(4097),
        ),
    ] {
        assert_eq!(Tracker::new(cfg).unwrap_err(), err);
        assert!(!err.to_string().is_empty());
    }
    assert_eq!(
        EvictionPolicy::from_name("balanced"),
        Some(EvictionPolicy::Balanced)
    );
    assert_eq!(EvictionPolicy::from_name("lru"), None);
}

#[test]
fn origin_ranks_match_the_python_enum() {
    for (o, r) in [
        (BeatOrigin::NetworkUnverified, 0),
        (BeatOrigin::SocketModeOnly, 1),
        (BeatOrigin::OperatorAttestedTransport, 2),
        (BeatOrigin::KernelAttested, 3),
    ] {
        assert_eq!(o.rank(), r);
        assert_eq!(BeatOrigin::from_rank(r), Some(o));
    }
    assert_eq!(BeatOrigin::from_rank(4), None);
    assert!(BeatOrigin::KernelAttested.allows_recovery());
    assert!(!BeatOrigin::SocketModeOnly.allows_recovery());
}

#[test]
fn stall_once_then_silence_gives_no_second_stall() {
    let clock = FakeClock::new(0);
    let mut t = small();
    assert_eq!(
        t.record(&beat(7, 1), KA, Some(9), Some(5), clock.now_ns()),
        RecordOutcome::Inserted
    );
    assert_eq!(t.next_deadline_ns(), Some(T));
    clock.advance(T - 1);
    assert!(stalls(&mut t, clock.now_ns()).is_empty());
    clock.advance(1);
    let s = stalls(&mut t, clock.now_ns());
    assert_eq!(
        s,
        vec![StallInfo {
            pid: 7,
            last_nonce: 1,
            last_ns: 0,
            origin: KA,
            pid_ns_inode: Some(9),
            generation: Some(5),
            observer_ns: T,
            verdict: Verdict::Unknown,
            cause: None,
            comm: None,
            forensics: None,
            forensics_sha256: None,
            peer: None,
            cmdline: None,
            unit: None,
            container: None,
        }]
    );
    assert_eq!(t.next_deadline_ns(), None, "a latched slot has no deadline");
    for _ in 0..5 {
        clock.advance(10 * T);
        assert!(stalls(&mut t, clock.now_ns()).is_empty());
    }
    let a = t.get(7).unwrap();
    assert!(a.stalled);
    assert_eq!((a.beats, a.stalls), (1, 1));
    assert_eq!(t.counters().stalls, 1);
}

#[test]
fn next_accepted_beat_rearms_and_stalls_again() {
    let clock = FakeClock::new(100);
    let mut t = small();
    t.record(&beat(7, 1), KA, None, None, clock.now_ns());
    clock.advance(T);
    assert_eq!(pids(&stalls(&mut t, clock.now_ns())), vec![7]);
    clock.advance(5 * T);
    assert_eq!(
        t.record(&beat(7, 2), KA, None, None, clock.now_ns()),
        RecordOutcome::Refreshed
    );
    let a = t.get(7).unwrap();
    assert!(!a.stalled);
    assert_eq!(a.last_ns, clock.now_ns());
    assert_eq!(t.next_deadline_ns(), Some(clock.now_ns() + T));
    clock.advance(T - 1);
    assert!(stalls(&mut t, clock.now_ns()).is_empty());
    clock.advance(1);
    let s = stalls(&mut t, clock.now_ns());
    assert_eq!(pids(&s), vec![7]);
    assert_eq!(s[0].last_nonce, 2);
    let a = t.get(7).unwrap();
    assert_eq!((a.beats, a.stalls), (2, 2));
    assert_eq!(t.counters().stalls, 2);
    assert_eq!(t.counters().beats, 2);
}

#[test]
fn out_of_order_and_duplicates_are_dropped_counted_and_do_not_rearm() {
    let clock = FakeClock::new(0);
    let mut t = small();
    t.record(&beat(7, 10), KA, None, None, 0);
    clock.advance(T / 2);
    // Duplicate and older nonce: dropped, deadline unchanged.
    assert_eq!(
        t.record(&beat(7, 10), KA, None, None, clock.now_ns()),
        RecordOutcome::OutOfOrder
    );
    assert_eq!(
        t.record(&beat(7, 3), KA, None, None, clock.now_ns()),
        RecordOutcome::OutOfOrder
    );
    assert_eq!(t.counters().out_of_order, 2);
    assert_eq!(t.next_deadline_ns(), Some(T));
    let a = t.get(7).unwrap();
    assert_eq!((a.last_nonce, a.last_ns, a.beats), (10, 0, 1));
    clock.set(T);
    assert_eq!(pids(&stalls(&mut t, clock.now_ns())), vec![7]);
    // While latched: a duplicate does not clear the latch, so no new stall.
    clock.advance(T);
    assert_eq!(
        t.record(&beat(7, 10), KA, None, None, clock.now_ns()),
        RecordOutcome::OutOfOrder
    );
    assert!(t.get(7).unwrap().stalled);
    assert_eq!(t.next_deadline_ns(), None);
    clock.advance(3 * T);
    assert!(stalls(&mut t, clock.now_ns()).is_empty());
    assert_eq!(t.counters().out_of_order, 3);
    assert_eq!(t.counters().stalls, 1);
    assert_eq!(t.counters().beats, 1);
}

#[test]
fn wrap_is_accepted_exactly_at_the_threshold_edges() {
    let lowest_last = u64::MAX - NONCE_WRAP_THRESHOLD; // 2^64 - 1 - 2^20
    assert_eq!(lowest_last, u64::MAX - (1 << 20));
    // (last, new, accepted)
    let cases = [
        (lowest_last, NONCE_WRAP_THRESHOLD, true),
        (lowest_last, 0, true),
        (u64::MAX - 1, NONCE_WRAP_THRESHOLD, true),
        (u64::MAX - 1, 1, true),
        (lowest_last - 1, 0, false),
        (lowest_last - 1, NONCE_WRAP_THRESHOLD, false),
        (lowest_last, NONCE_WRAP_THRESHOLD + 1, false),
        (u64::MAX - 1, NONCE_WRAP_THRESHOLD + 1, false),
    ];
    for (last, new, accepted) in cases {
        let mut t = small();
        t.record(&beat(3, last), KA, None, None, 0);
        let out = t.record(&beat(3, new), KA, None, None, 10);
        if accepted {
            assert_eq!(out, RecordOutcome::Refreshed, "last {last} new {new}");
            assert_eq!(t.counters().nonce_wrap, 1);
            assert_eq!(t.get(3).unwrap().last_nonce, new);
            // After the wrap, ordering continues from the new low nonce.
            assert_eq!(
                t.record(&beat(3, new), KA, None, None, 20),
                RecordOutcome::OutOfOrder
            );
            assert_eq!(
                t.record(&beat(3, new + 1), KA, None, None, 20),
                RecordOutcome::Refreshed
            );
        } else {
            assert_eq!(out, RecordOutcome::OutOfOrder, "last {last} new {new}");
            assert_eq!(t.counters().nonce_wrap, 0);
            assert_eq!(t.get(3).unwrap().last_nonce, last);
        }
    }
}

#[test]
fn wrap_clears_the_stall_latch() {
    let mut t = small();
    t.record(&beat(3, u64::MAX - 1), KA, None, None, 0);
    assert_eq!(stalls(&mut t, T).len(), 1);
    assert_eq!(
        t.record(&beat(3, 0), KA, None, None, 2 * T),
        RecordOutcome::Refreshed
    );
    assert!(!t.get(3).unwrap().stalled);
    assert_eq!(pids(&stalls(&mut t, 3 * T)), vec![3]);
}

#[test]
fn terminal_frames_follow_their_own_timestamp_order() {
    let clock = FakeClock::new(0);
    let mut t = small();
    t.record(&beat(5, 100), KA, None, None, 0);
    clock.advance(T / 4);
    assert_eq!(
        t.record(&terminal(5, 50), KA, None, None, clock.now_ns()),
        RecordOutcome::Refreshed
    );
    let a = t.get(5).unwrap();
    assert_eq!(a.last_nonce, NONCE_TERMINAL);
    assert_eq!(
        a.last_regular_nonce,
        Some(100),
        "terminal does not touch the regular nonce"
    );
    assert_eq!(a.last_terminal_ts, Some(50));
    assert_eq!(a.status, Status::Critical);
    assert_eq!(a.last_ns, clock.now_ns());
    // Same timestamp again: OutOfOrder; lower: OutOfOrder; higher: accepted.
    assert_eq!(
        t.record(&terminal(5, 50), KA, None, None, clock.now_ns()),
        RecordOutcome::OutOfOrder
    );
    assert_eq!(
        t.record(&terminal(5, 49), KA, None, None, clock.now_ns()),
        RecordOutcome::OutOfOrder
    );
    assert_eq!(t.counters().out_of_order, 2);
    clock.advance(1);
    assert_eq!(
        t.record(&terminal(5, 51), KA, None, None, clock.now_ns()),
        RecordOutcome::Refreshed
    );
    // The regular sequence continues from 100, unaffected by the terminal.
    assert_eq!(
        t.record(&beat(5, 100), KA, None, None, clock.now_ns()),
        RecordOutcome::OutOfOrder
    );
    assert_eq!(
        t.record(&beat(5, 101), KA, None, None, clock.now_ns()),
        RecordOutcome::Refreshed
    );
    assert_eq!(t.get(5).unwrap().last_nonce, 101);
    assert_eq!(t.get(5).unwrap().beats, 4);
}

#[test]
fn terminal_does_not_suppress_a_later_stall_and_clears_the_latch() {
    let clock = FakeClock::new(0);
    let mut t = small();
    t.record(&terminal(6, 1), KA, None, None, 0);
    let a = t.get(6).unwrap();
    assert_eq!(a.last_regular_nonce, None);
    clock.set(T);
    let s = stalls(&mut t, clock.now_ns());
    assert_eq!(pids(&s), vec![6]);
    assert_eq!(s[0].last_nonce, NONCE_TERMINAL);
    // A later terminal clears the latch and re-arms; a stall follows again.
    clock.advance(T);
    assert_eq!(
        t.record(&terminal(6, 2), KA, None, None, clock.now_ns()),
        RecordOutcome::Refreshed
    );
    assert!(!t.get(6).unwrap().stalled);
    clock.advance(T);
    assert_eq!(pids(&stalls(&mut t, clock.now_ns())), vec![6]);
    // A regular beat after terminal-only history: any nonce is accepted.
    assert_eq!(
        t.record(&beat(6, 0), KA, None, None, clock.now_ns()),
        RecordOutcome::Refreshed
    );
}

#[test]
fn stronger_origin_replaces_weaker_is_refused() {
    let mut t = small();
    t.record(&beat(8, 50), BeatOrigin::SocketModeOnly, None, None, 0);
    // Weaker: conflict, slot untouched.
    assert_eq!(
        t.record(&beat(8, 51), BeatOrigin::NetworkUnverified, None, None, 10),
        RecordOutcome::OriginConflict {
            slot_origin: BeatOrigin::SocketModeOnly
        }
    );
    assert_eq!(t.counters().origin_conflict, 1);
    assert_eq!(t.get(8).unwrap().last_nonce, 50);
    // Stronger: replaces the slot (new nonce baseline, origin, pins).
    assert_eq!(
        t.record(&beat(8, 1), KA, Some(77), Some(3), 20),
        RecordOutcome::Refreshed
    );
    let a = t.get(8).unwrap();
    assert_eq!(a.origin, KA);
    assert_eq!((a.last_nonce, a.last_ns), (1, 20));
    assert_eq!((a.pid_ns_inode, a.generation), (Some(77), Some(3)));
    assert_eq!(a.beats, 2, "per-pid beat count survives the replacement");
    // Now the socket-mode origin is the weaker one.
    assert_eq!(
        t.record(
            &beat(8, 2),
            BeatOrigin::SocketModeOnly,
            Some(77),
            Some(3),
            30
        ),
        RecordOutcome::OriginConflict { slot_origin: KA }
    );
    assert_eq!(t.counters().origin_conflict, 2);
    assert_eq!(t.counters().pid_recycle, 0);
    t.check_invariants().unwrap();
}

#[test]
fn origin_replacement_clears_a_latch() {
    let mut t = small();
    t.record(&beat(8, 5), BeatOrigin::SocketModeOnly, None, None, 0);
    assert_eq!(stalls(&mut t, T).len(), 1);
    assert_eq!(
        t.record(&beat(8, 1), KA, None, None, 2 * T),
        RecordOutcome::Refreshed
    );
    assert!(!t.get(8).unwrap().stalled);
    assert_eq!(pids(&stalls(&mut t, 3 * T)), vec![8]);
}

#[test]
fn namespace_first_pin_wins() {
    let mut t = small();
    t.record(&beat(9, 1), KA, Some(100), None, 0);
    // Different inode: conflict, slot untouched.
    assert_eq!(
        t.record(&beat(9, 2), KA, Some(200), None, 1),
        RecordOutcome::NamespaceConflict { slot_ns: Some(100) }
    );
    // Missing inode on a regular frame: conflict.
    assert_eq!(
        t.record(&beat(9, 2), KA, None, None, 1),
        RecordOutcome::NamespaceConflict { slot_ns: Some(100) }
    );
    assert_eq!(t.counters().namespace_conflict, 2);
    assert_eq!(t.get(9).unwrap().last_nonce, 1);
    // Missing inode on a terminal frame: accepted, pin kept.
    assert_eq!(
        t.record(&terminal(9, 1), KA, None, None, 2),
        RecordOutcome::Refreshed
    );
    assert_eq!(t.get(9).unwrap().pid_ns_inode, Some(100));
    // A different inode is refused even for a terminal.
    assert_eq!(
        t.record(&terminal(9, 2), KA, Some(200), None, 3),
        RecordOutcome::NamespaceConflict { slot_ns: Some(100) }
    );
    assert_eq!(
        t.record(&beat(9, 2), KA, Some(100), None, 4),
        RecordOutcome::Refreshed
    );
}

#[test]
fn namespace_and_generation_are_pinned_only_by_an_accepted_frame() {
    let mut t = small();
    t.record(&beat(9, 5), KA, None, None, 0);
    // Rejected (out of order) frame carrying identity: nothing pinned.
    assert_eq!(
        t.record(&beat(9, 5), KA, Some(100), Some(7), 1),
        RecordOutcome::OutOfOrder
    );
    let a = t.get(9).unwrap();
    assert_eq!((a.pid_ns_inode, a.generation), (None, None));
    // Accepted frame pins both.
    assert_eq!(
        t.record(&beat(9, 6), KA, Some(100), Some(7), 2),
        RecordOutcome::Refreshed
    );
    let a = t.get(9).unwrap();
    assert_eq!((a.pid_ns_inode, a.generation), (Some(100), Some(7)));
    // Generation unknown on a later frame: not a conflict, pin kept.
    assert_eq!(
        t.record(&beat(9, 7), KA, Some(100), None, 3),
        RecordOutcome::Refreshed
    );
    assert_eq!(t.get(9).unwrap().generation, Some(7));
}

#[test]
fn pid_recycle_by_generation_resets_the_slot() {
    let mut t = small();
    t.record(&beat(11, 1000), KA, Some(1), Some(42), 0);
    assert_eq!(stalls(&mut t, T).len(), 1);
    // Same pid, new start time, low nonce, even a different namespace:
    // a new process — reset, Inserted, counted.
    assert_eq!(
        t.record(&beat(11, 1), KA, Some(2), Some(43), T + 5),
        RecordOutcome::Inserted
    );
    let a = t.get(11).unwrap();
    assert_eq!(
        (a.last_nonce, a.generation, a.pid_ns_inode),
        (1, Some(43), Some(2))
    );
    assert!(!a.stalled);
    assert_eq!((a.beats, a.stalls), (2, 1));
    assert_eq!(t.counters().pid_recycle, 1);
    assert_eq!(t.len(), 1);
    // Unknown generation on either side is not a recycle.
    assert_eq!(
        t.record(&beat(11, 1), KA, Some(2), None, T + 6),
        RecordOutcome::OutOfOrder
    );
    let mut u = small();
    u.record(&beat(11, 1000), KA, None, None, 0);
    assert_eq!(
        u.record(&beat(11, 1), KA, None, Some(43), 1),
        RecordOutcome::OutOfOrder
    );
    assert_eq!(u.counters().pid_recycle, 0);
    t.check_invariants().unwrap();
}

#[test]
fn generation_recycle_wins_over_origin_conflict() {
    let mut t = small();
    t.record(&beat(11, 10), KA, None, Some(1), 0);
    // Step 1 precedes step 3: a weaker origin with a new generation resets.
    assert_eq!(
        t.record(&beat(11, 1), BeatOrigin::SocketModeOnly, None, Some(2), 1),
        RecordOutcome::Inserted
    );
    assert_eq!(t.get(11).unwrap().origin, BeatOrigin::SocketModeOnly);
}

#[test]
fn network_recycle_needs_silence_same_network_origin_and_no_generation() {
    for origin in [
        BeatOrigin::NetworkUnverified,
        BeatOrigin::OperatorAttestedTransport,
    ] {
        let mut t = small();
        t.record(&beat(12, 500), origin, None, None, 0);
        // Not silent long enough: a plain out-of-order drop.
        assert_eq!(
            t.record(&beat(12, 1), origin, None, None, T - 1),
            RecordOutcome::OutOfOrder
        );
        // Silent ≥ threshold: recycled.
        assert_eq!(
            t.record(&beat(12, 1), origin, None, None, T),
            RecordOutcome::Inserted
        );
        assert_eq!(t.counters().pid_recycle, 1);
        assert_eq!(t.get(12).unwrap().last_nonce, 1);
        // A terminal after silence is not a recycle signal.
        assert_eq!(
            t.record(&terminal(12, 9), origin, None, None, 3 * T),
            RecordOutcome::Refreshed
        );
        assert_eq!(t.counters().pid_recycle, 1);
    }
    // Kernel-attested and socket-mode slots never network-recycle.
    for origin in [KA, BeatOrigin::SocketModeOnly] {
        let mut t = small();
        t.record(&beat(12, 500), origin, None, None, 0);
        assert_eq!(
            t.record(&beat(12, 1), origin, None, None, 5 * T),
            RecordOutcome::OutOfOrder
        );
        assert_eq!(t.counters().pid_recycle, 0);
    }
    // A known slot generation disables it.
    let mut t = small();
    t.record(
        &beat(12, 500),
        BeatOrigin::NetworkUnverified,
        None,
        Some(1),
        0,
    );
    assert_eq!(
        t.record(
            &beat(12, 1),
            BeatOrigin::NetworkUnverified,
            None,
            None,
            5 * T
        ),
        RecordOutcome::OutOfOrder
    );
}

fn fill(t: &mut Tracker, first_pid: u32, n: u32, now: u64) {
    for pid in first_pid..first_pid + n {
        assert_eq!(
            t.record(&beat(pid, 1), KA, None, None, now),
            RecordOutcome::Inserted
        );
    }
}

#[test]
fn strict_full_table_without_latched_slots_is_capacity_exceeded() {
    let mut t = tracker(4, EvictionPolicy::Strict, 256);
    fill(&mut t, 1, 4, 0);
    // Everyone is ancient but nobody has been reported stalled: no victim,
    // and the skipped strict pass does not count as a truncated scan.
    assert_eq!(
        t.record(&beat(99, 1), KA, None, None, 100 * T),
        RecordOutcome::CapacityExceeded
    );
    assert_eq!(t.counters().capacity_exceeded, 1);
    assert_eq!(t.counters().eviction_scan_truncated, 0);
    assert_eq!(t.counters().tracker_evicted, 0);
    assert!(t.get(99).is_none());
    assert_eq!(t.len(), 4);
    // Known pids still beat normally while full.
    assert_eq!(
        t.record(&beat(2, 2), KA, None, None, 100 * T),
        RecordOutcome::Refreshed
    );
    t.check_invariants().unwrap();
}

#[test]
fn strict_evicts_only_latched_slots_silent_over_ten_thresholds() {
    let mut t = tracker(4, EvictionPolicy::Strict, 256);
    fill(&mut t, 1, 4, 0);
    // Pid 3 keeps beating; the others stall at T.
    t.record(&beat(3, 2), KA, None, None, T / 2);
    assert_eq!(pids(&stalls(&mut t, T)), vec![1, 2, 4]);
    t.record(&beat(3, 3), KA, None, None, 10 * T);
    // At exactly 10T of silence nobody is old enough (needs > 10T).
    assert_eq!(
        t.record(&beat(99, 1), KA, None, None, 10 * T),
        RecordOutcome::CapacityExceeded
    );
    assert_eq!(t.counters().eviction_scan_truncated, 1);
    // Past 10T: first fit from the cursor is a latched, silent slot.
    assert_eq!(
        t.record(&beat(99, 1), KA, None, None, 10 * T + 1),
        RecordOutcome::Inserted
    );
    assert_eq!(t.counters().tracker_evicted, 1);
    let mut removed = Vec::new();
    removed.extend(removed_pids(&mut t));
    assert_eq!(removed.len(), 1);
    let victim = removed[0];
    assert_ne!(victim, 3, "a beating agent is never evicted");
    assert!(t.get(victim).is_none());
    assert!(t.get(99).is_some());
    // Fill up with two more; pid 3 (unlatched) survives even when ancient.
    assert_eq!(
        t.record(&beat(100, 1), KA, None, None, 30 * T),
        RecordOutcome::Inserted
    );
    assert_eq!(
        t.record(&beat(101, 1), KA, None, None, 30 * T),
        RecordOutcome::Inserted
    );
    assert_eq!(
        t.record(&beat(102, 1), KA, None, None, 30 * T),
        RecordOutcome::CapacityExceeded
    );
    assert!(t.get(3).is_some());
    removed.extend(removed_pids(&mut t));
    assert_eq!(removed.len(), 3);
    assert!(!removed.contains(&3));
    t.check_invariants().unwrap();
}

#[test]
fn balanced_evicts_any_slot_silent_over_ten_thresholds() {
    let mut t = tracker(4, EvictionPolicy::Balanced, 256);
    fill(&mut t, 1, 4, 0);
    t.record(&beat(2, 2), KA, None, None, 5 * T);
    // Nobody latched (no expiry ran) and nobody old enough: counted once.
    assert_eq!(
        t.record(&beat(99, 1), KA, None, None, 10 * T),
        RecordOutcome::CapacityExceeded
    );
    assert_eq!(t.counters().eviction_scan_truncated, 1);
    // Pids 1, 3, 4 are silent > 10T; pid 2 is not.
    assert_eq!(
        t.record(&beat(99, 1), KA, None, None, 10 * T + 1),
        RecordOutcome::Inserted
    );
    assert_eq!(
        t.record(&beat(98, 1), KA, None, None, 10 * T + 1),
        RecordOutcome::Inserted
    );
    assert_eq!(
        t.record(&beat(97, 1), KA, None, None, 10 * T + 1),
        RecordOutcome::Inserted
    );
    assert_eq!(
        t.record(&beat(96, 1), KA, None, None, 10 * T + 1),
        RecordOutcome::CapacityExceeded
    );
    assert_eq!(t.counters().tracker_evicted, 3);
    assert!(t.get(2).is_some());
    let mut removed = Vec::new();
    removed.extend(removed_pids(&mut t));
    removed.sort_unstable();
    assert_eq!(removed, vec![1, 3, 4]);
    // The evicted slots' deadlines went with them: only live pids stall.
    let mut s = pids(&stalls(&mut t, 100 * T));
    s.sort_unstable();
    assert_eq!(s, vec![2, 97, 98, 99]);
}

#[test]
fn balanced_prefers_a_latched_victim() {
    let mut t = tracker(4, EvictionPolicy::Balanced, 256);
    fill(&mut t, 1, 4, 0);
    // Only pid 4 is reported stalled; the others beat at T/2 and then stop.
    for pid in 1..=3 {
        t.record(&beat(pid, 2), KA, None, None, T / 2);
    }
    assert_eq!(pids(&stalls(&mut t, T)), vec![4]);
    // At 20T everyone is > 10T silent but pids 1-3 are not latched.
    assert_eq!(
        t.record(&beat(99, 1), KA, None, None, 11 * T),
        RecordOutcome::Inserted
    );
    let mut removed = Vec::new();
    removed.extend(removed_pids(&mut t));
    assert_eq!(removed, vec![4]);
}

#[test]
fn scan_window_truncation_is_counted_and_the_cursor_rotates() {
    let mut t = tracker(8, EvictionPolicy::Strict, 2);
    fill(&mut t, 1, 8, 0);
    // Everybody but the last-inserted pid (slot 7) keeps beating.
    for pid in 1..=7 {
        t.record(&beat(pid, 2), KA, None, None, 11 * T);
    }
    assert_eq!(pids(&stalls(&mut t, 11 * T)), vec![8]);
    // Slots are scanned 2 per attempt from a rotating cursor: slots 0-1,
    // 2-3, 4-5 hold no victim (3 truncated attempts), 6-7 finds pid 8.
    for k in 1..=3 {
        assert_eq!(
            t.record(&beat(200 + k, 1), KA, None, None, 12 * T),
            RecordOutcome::CapacityExceeded
        );
        assert_eq!(t.counters().eviction_scan_truncated, u64::from(k));
    }
    assert_eq!(
        t.record(&beat(204, 1), KA, None, None, 12 * T),
        RecordOutcome::Inserted
    );
    assert_eq!(t.counters().eviction_scan_truncated, 3);
    assert_eq!(t.counters().capacity_exceeded, 3);
    assert!(t.get(8).is_none());
    t.check_invariants().unwrap();
}

#[test]
fn retire_removes_without_a_stall() {
    let mut t = small();
    t.record(&beat(21, 1), KA, None, Some(1), 0);
    t.record(&beat(22, 1), KA, None, Some(1), 0);
    assert!(t.retire(21));
    assert!(!t.retire(21));
    assert!(!t.retire(12345));
    assert_eq!(t.counters().pid_recycle, 1);
    assert_eq!(pids(&stalls(&mut t, T)), vec![22]);
    let mut removed = vec![7];
    removed.extend(removed_pids(&mut t));
    assert_eq!(removed, vec![7, 21], "take_removed appends");
    removed.extend(removed_pids(&mut t));
    assert_eq!(removed.len(), 2, "and drains");
    // The pid can come back as a new agent.
    assert_eq!(
        t.record(&beat(21, 1), KA, None, Some(2), T),
        RecordOutcome::Inserted
    );
    assert_eq!(t.get(21).unwrap().beats, 1);
}

#[test]
fn expire_with_limit_and_retire_verdict() {
    let mut t = small();
    for pid in 1..=5 {
        t.record(
            &beat(pid, 1),
            KA,
            None,
            Some(u64::from(pid)),
            u64::from(pid),
        );
    }
    let mut seen = Vec::new();
    // Limit: the first two due (in deadline order), the rest stay due.
    let n = t.expire_with(10 * T, 2, &mut |s: &StallInfo| {
        seen.push(s.pid);
        StallDecision::Emit(Verdict::Hung)
    });
    assert_eq!(n, 2);
    assert_eq!(seen, vec![1, 2]);
    assert_eq!(t.next_deadline_ns(), Some(T + 3));
    // Retire pid 3 (generation mismatch), emit the others.
    let n = t.expire_with(10 * T, usize::MAX, &mut |s: &StallInfo| {
        if s.pid == 3 {
            StallDecision::Retire
        } else {
            StallDecision::Emit(Verdict::Hung)
        }
    });
    assert_eq!(n, 3);
    assert!(t.get(3).is_none());
    assert_eq!(t.counters().stalls, 4);
    assert_eq!(t.counters().pid_recycle, 1);
    let mut removed = Vec::new();
    removed.extend(removed_pids(&mut t));
    assert_eq!(removed, vec![3]);
    t.check_invariants().unwrap();
}

#[test]
fn removed_list_is_bounded_and_drops_are_counted() {
    let mut t = tracker(1, EvictionPolicy::Balanced, 1);
    let mut now = 0;
    for pid in 0..70u32 {
        assert_eq!(
            t.record(&beat(pid, 1), KA, None, None, now),
            RecordOutcome::Inserted
        );
        now += 11 * T;
    }
    assert_eq!(t.counters().tracker_evicted, 69);
    let mut removed = Vec::new();
    removed.extend(removed_pids(&mut t));
    assert_eq!(removed.len(), 64, "max(capacity, 64)");
    assert_eq!(removed, (0..64).collect::<Vec<_>>());
    assert_eq!(t.counters().removed_pid_drops, 5);
}

#[test]
fn time_is_clamped_forward() {
    let mut t = small();
    t.record(&beat(1, 1), KA, None, None, 5 * T);
    // A caller passing an older time cannot move the slot backwards.
    t.record(&beat(1, 2), KA, None, None, T);
    assert_eq!(t.get(1).unwrap().last_ns, 5 * T);
    assert!(stalls(&mut t, 5 * T).is_empty());
    assert_eq!(pids(&stalls(&mut t, 6 * T)), vec![1]);
}

#[test]
fn iter_and_len_reflect_tracked_pids() {
    let mut t = small();
    for pid in [5, 3, 9] {
        t.record(&beat(pid, 1), BeatOrigin::SocketModeOnly, None, None, 0);
    }
    let mut seen: Vec<u32> = t.iter().map(|a| a.pid).collect();
    seen.sort_unstable();
    assert_eq!(seen, vec![3, 5, 9]);
    assert_eq!(t.len(), 3);
    assert!(!t.is_empty());
    assert!(t
        .iter()
        .all(|a| a.origin == BeatOrigin::SocketModeOnly && a.beats == 1));
}

#[test]
fn pid_index_survives_heavy_churn() {
    // Capacity 64: churn through many distinct pids via retire so tombstones
    // accumulate; lookups and inserts must stay correct.
    let mut t = tracker(64, EvictionPolicy::Strict, 256);
    let mut live: std::collections::VecDeque<u32> = Default::default();
    for k in 0..20_000u32 {
        let pid = k.wrapping_mul(2_654_435_761) % 4_000_000 + 1;
        if t.get(pid).is_some() {
            continue;
        }
        if live.len() == 64 {
            let old = live.pop_front().unwrap();
            assert!(t.retire(old));
        }
        assert_eq!(
            t.record(&beat(pid, 1), KA, None, None, u64::from(k)),
            RecordOutcome::Inserted
        );
        live.push_back(pid);
    }
    for pid in &live {
        assert!(t.get(*pid).is_some());
    }
    assert_eq!(t.counters().probe_exhausted, 0);
    assert_eq!(t.counters().invariant_violations, 0);
    t.check_invariants().unwrap();
}

#[test]
fn a_million_agents_construct_and_fit_the_memory_budget() {
    let t = Tracker::new(TrackerConfig {
        capacity: MAX_CAPACITY,
        ..TrackerConfig::new(T)
    })
    .unwrap();
    assert_eq!(t.capacity(), 1_000_000);
    assert!(t.is_empty());
    assert_eq!(t.next_deadline_ns(), None);
    let bytes = t.bytes_per_agent();
    assert!(bytes <= 200, "{bytes} bytes per agent");
    let (slot, entry, deadline) = Tracker::layout_sizes();
    assert_eq!(slot, 64);
    assert_eq!(entry, 4);
    assert_eq!(deadline, 16);
}

// The drivers are behind the `bench` feature (`cargo test --all-features`).
#[cfg(feature = "bench")]
#[test]
fn bench_helpers_run() {
    let (ns, bytes) = bench_tracker(100, 10_000);
    assert!(ns > 0.0);
    assert!(bytes <= 200);
    let rows = bench_tracker_scaling(&[10, 1000], 500, 3);
    assert_eq!(rows.len(), 2);
    assert_eq!((rows[0].agents, rows[1].agents), (10, 1000));
    assert!(rows.iter().all(|r| r.chunk_ns_per_beat.len() == 3));
    // Every layout yields distinct pids (the bench asserts each beat is
    // accepted, so a duplicate or refused pid would panic here).
    for layout in [
        PidLayout::Dense,
        PidLayout::Strided(3),
        PidLayout::Scattered,
    ] {
        let rows = bench_tracker_scaling_layout(&[1000], 2_000, 2, layout);
        assert_eq!(rows[0].chunk_ns_per_beat.len(), 2);
        let pids: std::collections::HashSet<u32> = (0..100_000).map(|i| layout.pid(i)).collect();
        assert_eq!(pids.len(), 100_000, "{layout:?}");
        assert!(!pids.contains(&0));
    }
    assert_eq!(PidLayout::parse("stride:3"), Some(PidLayout::Strided(3)));
    assert_eq!(PidLayout::parse("stride:9"), None);
    assert_eq!(PidLayout::parse("sparse"), None);
}

fn terminal_with(pid: u32, ts: u64, payload: u32) -> Frame {
    Frame {
        status: Status::Critical,
        pid,
        timestamp: ts,
        nonce: NONCE_TERMINAL,
        payload,
    }
}

#[test]
fn the_last_terminal_cause_is_kept_until_a_regular_beat() {
    let mut t = small();
    t.record(&beat(7, 1), KA, None, Some(5), 0);
    assert_eq!(t.get(7).unwrap().terminal_cause, None);
    t.record(
        &terminal_with(7, 1, PAYLOAD_CLEAN_EXIT),
        KA,
        None,
        Some(5),
        1,
    );
    assert_eq!(
        t.get(7).unwrap().terminal_cause,
        Some(TerminalCause::CleanExit)
    );
    t.record(&beat(7, 2), KA, None, Some(5), 2);
    assert_eq!(t.get(7).unwrap().terminal_cause, None);
    t.record(&terminal_with(7, 2, 0), KA, None, Some(5), 3);
    assert_eq!(t.get(7).unwrap().terminal_cause, Some(TerminalCause::Crash));
}

#[test]
fn an_exit_is_reported_once_and_retires_the_slot() {
    let mut t = small();
    t.record(&beat(7, 1), KA, None, Some(5), 0);
    t.record(
        &terminal_with(7, 1, PAYLOAD_CLEAN_EXIT),
        KA,
        None,
        Some(5),
        1,
    );
    t.record(&beat(8, 1), KA, None, Some(6), 1);
    t.record(&beat(9, 1), BeatOrigin::SocketModeOnly, None, None, 1);
    // A different generation, or an unattested slot, is not that process.
    assert_eq!(t.take_exit(7, 4, 2), ExitOutcome::NotTracked);
    assert_eq!(t.take_exit(9, 1, 2), ExitOutcome::NotTracked);
    let ExitOutcome::Reported(info) = t.take_exit(7, 5, 2) else {
        panic!("not reported");
    };
    assert_eq!((info.pid, info.verdict), (7, Verdict::Exited));
    assert_eq!(info.cause, Some(TerminalCause::CleanExit));
    let ExitOutcome::Reported(info) = t.take_exit(8, 6, 3) else {
        panic!("not reported");
    };
    assert_eq!(info.verdict, Verdict::Vanished);
    assert!(t.get(7).is_none() && t.get(8).is_none());
    assert_eq!(t.take_exit(7, 5, 3), ExitOutcome::NotTracked);
    let c = t.counters();
    assert_eq!((c.stalls, c.retired), (2, 2));
    assert_eq!(c.stall_verdicts[Verdict::Exited as usize], 1);
    assert_eq!(c.stall_verdicts[Verdict::Vanished as usize], 1);
    let mut removed = Vec::new();
    removed.extend(removed_pids(&mut t));
    assert_eq!(removed, vec![7, 8]);
    t.check_invariants().unwrap();
}

#[test]
fn an_exit_after_a_reported_stall_retires_without_a_second_report() {
    let mut t = small();
    t.record(&beat(7, 1), KA, None, Some(5), 0);
    let n = t.expire_with(T, usize::MAX, &mut |_| StallDecision::Emit(Verdict::Hung));
    assert_eq!(n, 1);
    assert_eq!(t.get(7).unwrap().verdict, Some(Verdict::Hung));
    assert_eq!(t.take_exit(7, 5, 2 * T), ExitOutcome::RetiredAfterStall);
    assert!(t.get(7).is_none());
    assert_eq!(t.counters().stalls, 1);
    t.check_invariants().unwrap();
}

#[test]
fn emit_and_retire_counts_the_verdict_and_frees_the_slot() {
    let mut t = small();
    t.record(&beat(7, 1), KA, None, Some(5), 0);
    t.expire_with(T, usize::MAX, &mut |_| {
        StallDecision::EmitAndRetire(Verdict::Vanished)
    });
    assert!(t.get(7).is_none());
    let c = t.counters();
    assert_eq!((c.stalls, c.retired, c.pid_recycle), (1, 1, 0));
    assert_eq!(c.stall_verdicts[Verdict::Vanished as usize], 1);
    t.check_invariants().unwrap();
}

#[test]
fn blind_time_extends_every_armed_deadline() {
    let mut t = small();
    t.record(&beat(1, 1), KA, None, Some(1), 0);
    t.record(&beat(2, 1), KA, None, Some(2), T / 2);
    t.extend_deadlines(3 * T);
    assert_eq!(t.next_deadline_ns(), Some(4 * T));
    assert!(stalls(&mut t, 4 * T - 1).is_empty());
    assert_eq!(stalls(&mut t, 4 * T).len(), 1);
    // A beat after the blind interval arms its own, later deadline.
    t.record(&beat(3, 1), KA, None, Some(3), 4 * T);
    assert_eq!(stalls(&mut t, 4 * T + T / 2).len(), 1);
    assert_eq!(t.next_deadline_ns(), Some(5 * T));
    t.check_invariants().unwrap();
}

/// The pids `take_removed` hands over (all of the Unix socket here).
fn removed_pids(t: &mut Tracker) -> Vec<u32> {
    let mut v = Vec::new();
    t.take_removed(&mut v);
    assert!(v.iter().all(|a| a.peer.is_none()));
    v.into_iter().map(|a| a.pid).collect()
}
