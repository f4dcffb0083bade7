//! The tracker's pid index against a plain set: random inserts, beats and
//! retirements of pids crowded onto few index lines: 64 slots (18 lines)
//! and most pids from 10 random blocks of 8 consecutive pids, so two blocks
//! often share a home line and its chain overflows, then shrinks again. Lookups must agree with the set, and `check_invariants`
//! recomputes every line's overflow count after each step.

use proptest::prelude::*;
use std::collections::BTreeSet;
use varta_core::frame::{Frame, Status};
use varta_core::observer::tracker::{BeatOrigin, RecordOutcome, Tracker, TrackerConfig};

const CAPACITY: usize = 64;

#[derive(Clone, Debug)]
enum Op {
    Record(Pid),
    Retire(Pid),
}

/// A pid of one of the case's blocks, or any pid.
#[derive(Clone, Copy, Debug)]
enum Pid {
    InBlock { block: usize, offset: u32 },
    Any(u32),
}

fn pid() -> impl Strategy<Value = Pid> {
    prop_oneof![
        10 => (0usize..10, 0u32..8).prop_map(|(block, offset)| Pid::InBlock { block, offset }),
        1 => any::<u32>().prop_map(Pid::Any),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => pid().prop_map(Op::Record),
        1 => pid().prop_map(Op::Retire),
    ]
}

fn beat(pid: u32, nonce: u64) -> Frame {
    Frame {
        status: Status::Ok,
        pid,
        timestamp: nonce,
        nonce,
        payload: 0,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn lookups_match_a_set_under_crowded_churn(
        blocks in proptest::collection::vec(0u32..(u32::MAX >> 3), 10),
        ops in proptest::collection::vec(op(), 0..400),
    ) {
        let resolve = |p: Pid| match p {
            Pid::InBlock { block, offset } => (blocks[block] << 3) + offset,
            Pid::Any(pid) => pid,
        };
        // Threshold far away: nothing stalls, so nothing is evictable and a
        // full table refuses new pids.
        let mut t = Tracker::new(TrackerConfig {
            capacity: CAPACITY,
            ..TrackerConfig::new(u64::MAX / 4)
        })
        .unwrap();
        let mut model = BTreeSet::new();
        for (step, op) in ops.iter().enumerate() {
            let now = step as u64 + 1;
            match *op {
                Op::Record(pid) => {
                    let pid = resolve(pid);
                    let out = t.record(&beat(pid, now), BeatOrigin::KernelAttested, None, None, now);
                    let want = if model.contains(&pid) {
                        RecordOutcome::Refreshed
                    } else if model.len() < CAPACITY {
                        model.insert(pid);
                        RecordOutcome::Inserted
                    } else {
                        RecordOutcome::CapacityExceeded
                    };
                    prop_assert_eq!(out, want, "record {}", pid);
                }
                Op::Retire(pid) => {
                    let pid = resolve(pid);
                    prop_assert_eq!(t.retire(pid), model.remove(&pid));
                }
            }
            if let Err(e) = t.check_invariants() {
                return Err(TestCaseError::fail(e));
            }
            prop_assert_eq!(t.len(), model.len());
        }
        for pid in ops.iter().map(|op| match *op { Op::Record(p) | Op::Retire(p) => resolve(p) }) {
            prop_assert_eq!(t.get(pid).is_some(), model.contains(&pid), "get {}", pid);
        }
        prop_assert_eq!(t.counters().probe_exhausted, 0);
        prop_assert_eq!(t.counters().invariant_violations, 0);
    }
}
