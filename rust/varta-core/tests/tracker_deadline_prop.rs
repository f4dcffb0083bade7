//! The deadline structure against brute force: over random beat / advance /
//! expire sequences, the pids that stall at each expiry pass are exactly
//! those a full scan would find (`docs/observer.md#stall-detection`).

use proptest::prelude::*;
use std::collections::BTreeMap;
use varta_core::frame::{Frame, Status, NONCE_TERMINAL};
use varta_core::observer::tracker::{
    BeatOrigin, EvictionPolicy, RecordOutcome, StallInfo, Tracker, TrackerConfig,
};

const T: u64 = 1_000;

#[derive(Clone, Debug)]
enum Op {
    Beat { pid: u32, nonce: u64 },
    Terminal { pid: u32, ts: u64 },
    Advance(u64),
    Expire,
    Retire(u32),
}

fn op(pids: u32) -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..pids, 0u64..24).prop_map(|(pid, nonce)| Op::Beat { pid, nonce }),
        1 => (0..pids, 0u64..8).prop_map(|(pid, ts)| Op::Terminal { pid, ts }),
        4 => prop_oneof![Just(0u64), 0..3 * T].prop_map(Op::Advance),
        3 => Just(Op::Expire),
        1 => (0..pids).prop_map(Op::Retire),
    ]
}

fn frame(pid: u32, nonce: u64, ts: u64) -> Frame {
    Frame {
        status: if nonce == NONCE_TERMINAL {
            Status::Critical
        } else {
            Status::Ok
        },
        pid,
        timestamp: ts,
        nonce,
        payload: 0,
    }
}

/// Independent model of one pid (single origin, no identity pins).
#[derive(Clone, Copy, Debug, Default)]
struct M {
    last_regular: Option<u64>,
    last_term: Option<u64>,
    last_ns: u64,
    latched: bool,
    beats: u64,
    stalls: u64,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn expiries_match_a_brute_force_model(ops in proptest::collection::vec(op(12), 0..300)) {
        let mut t = Tracker::new(TrackerConfig { capacity: 64, ..TrackerConfig::new(T) }).unwrap();
        let mut model: BTreeMap<u32, M> = BTreeMap::new();
        let mut now = 0u64;
        for op in ops {
            match op {
                Op::Beat { pid, nonce } | Op::Terminal { pid, ts: nonce } => {
                    let terminal = matches!(op, Op::Terminal { .. });
                    let f = if terminal {
                        frame(pid, NONCE_TERMINAL, nonce)
                    } else {
                        frame(pid, nonce, 0)
                    };
                    let got = t.record(&f, BeatOrigin::KernelAttested, None, None, now);
                    let want = match model.get_mut(&pid) {
                        None => {
                            let mut m = M { last_ns: now, beats: 1, ..M::default() };
                            if terminal { m.last_term = Some(nonce) } else { m.last_regular = Some(nonce) }
                            model.insert(pid, m);
                            RecordOutcome::Inserted
                        }
                        Some(m) => {
                            let ok = if terminal {
                                !matches!(m.last_term, Some(l) if nonce <= l)
                            } else {
                                !matches!(m.last_regular, Some(l) if nonce <= l)
                            };
                            if ok {
                                if terminal { m.last_term = Some(nonce) } else { m.last_regular = Some(nonce) }
                                m.last_ns = now;
                                m.latched = false;
                                m.beats += 1;
                                RecordOutcome::Refreshed
                            } else {
                                RecordOutcome::OutOfOrder
                            }
                        }
                    };
                    prop_assert_eq!(got, want);
                }
                Op::Advance(dt) => now += dt,
                Op::Retire(pid) => {
                    prop_assert_eq!(t.retire(pid), model.remove(&pid).is_some());
                }
                Op::Expire => {
                    // Brute force: every tracked, unlatched pid silent ≥ T.
                    let mut want: Vec<(u32, u64)> = model
                        .iter()
                        .filter(|(_, m)| !m.latched && now - m.last_ns >= T)
                        .map(|(p, m)| (*p, m.last_ns))
                        .collect();
                    for (p, _) in &want {
                        let m = model.get_mut(p).unwrap();
                        m.latched = true;
                        m.stalls += 1;
                    }
                    let mut got: Vec<StallInfo> = Vec::new();
                    t.expire(now, &mut |s| got.push(s));
                    // Emitted in deadline order.
                    prop_assert!(got.windows(2).all(|w| w[0].last_ns <= w[1].last_ns));
                    prop_assert!(got.iter().all(|s| s.observer_ns == now));
                    let mut got: Vec<(u32, u64)> = got.iter().map(|s| (s.pid, s.last_ns)).collect();
                    got.sort_unstable();
                    want.sort_unstable();
                    prop_assert_eq!(got, want);
                }
            }
            let next = model
                .values()
                .filter(|m| !m.latched)
                .map(|m| m.last_ns + T)
                .min();
            prop_assert_eq!(t.next_deadline_ns(), next);
            prop_assert_eq!(t.len(), model.len());
            for (pid, m) in &model {
                let a = t.get(*pid).unwrap();
                prop_assert_eq!((a.last_ns, a.stalled, a.beats, a.stalls), (m.last_ns, m.latched, m.beats, m.stalls));
            }
            if let Err(e) = t.check_invariants() {
                return Err(TestCaseError::fail(e));
            }
        }
    }
}

#[derive(Clone, Debug)]
enum Op2 {
    Record {
        pid: u32,
        nonce: u64,
        origin: u8,
        ns: Option<u64>,
        gen: Option<u64>,
    },
    Advance(u64),
    Expire,
}

fn op2() -> impl Strategy<Value = Op2> {
    prop_oneof![
        6 => (0u32..10, prop_oneof![0u64..16, Just(NONCE_TERMINAL)], 0u8..4,
              proptest::option::of(0u64..2), proptest::option::of(0u64..2))
            .prop_map(|(pid, nonce, origin, ns, gen)| Op2::Record { pid, nonce, origin, ns, gen }),
        3 => (0..25 * T).prop_map(Op2::Advance),
        3 => Just(Op2::Expire),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Every code path (recycles, origin replacement, namespace conflicts,
    /// eviction under both policies with a tiny table and scan window):
    /// an expiry pass yields exactly the slots a full scan of the tracker's
    /// own state finds due, and the internal invariants hold throughout.
    #[test]
    fn expiry_matches_a_full_scan_on_every_path(
        ops in proptest::collection::vec(op2(), 0..300),
        balanced in any::<bool>(),
        window in 1usize..5,
    ) {
        let mut t = Tracker::new(TrackerConfig {
            capacity: 4,
            threshold_ns: T,
            eviction: if balanced { EvictionPolicy::Balanced } else { EvictionPolicy::Strict },
            scan_window: window,
        }).unwrap();
        let mut now = 0u64;
        for op in ops {
            match op {
                Op2::Record { pid, nonce, origin, ns, gen } => {
                    let origin = BeatOrigin::from_rank(origin).unwrap();
                    let before = t.counters().beats;
                    let out = t.record(&frame(pid, nonce, now), origin, ns, gen, now);
                    prop_assert_eq!(t.counters().beats - before, u64::from(out.is_accepted()));
                    if out.is_accepted() {
                        let a = t.get(pid).unwrap();
                        prop_assert_eq!(a.last_ns, now);
                        prop_assert!(!a.stalled);
                        prop_assert_eq!(a.origin, origin);
                    }
                }
                Op2::Advance(dt) => now += dt,
                Op2::Expire => {
                    let mut want: Vec<u32> = t
                        .iter()
                        .filter(|a| !a.stalled && now - a.last_ns >= T)
                        .map(|a| a.pid)
                        .collect();
                    let mut got = Vec::new();
                    t.expire(now, &mut |s| got.push(s.pid));
                    got.sort_unstable();
                    want.sort_unstable();
                    prop_assert_eq!(got, want);
                }
            }
            if let Err(e) = t.check_invariants() {
                return Err(TestCaseError::fail(e));
            }
            prop_assert_eq!(t.counters().invariant_violations, 0);
        }
    }
}
