//! Per-pid liveness tracker (`observer.md` §4).
//!
//! # API
//! ```text
//! Tracker::new(TrackerConfig) -> Result<Tracker, TrackerConfigError>   // pre-allocates everything
//! t.record(&frame, origin, ns_inode, generation, now_ns) -> RecordOutcome   // §4.2, O(1) expected
//! t.expire(now_ns, &mut |stall: StallInfo| ..) -> usize               // §4.3, O(expired)
//! t.expire_with(now_ns, limit, &mut |s: &StallInfo| StallVerdict) -> usize   // + §4.5 retirement
//! t.next_deadline_ns() -> Option<u64>                                  // when the next stall is due
//! t.get(pid) -> Option<AgentView>;  t.iter() -> impl Iterator<Item = AgentView>
//! t.retire(pid) -> bool             // §4.5 KernelAttested generation-mismatch release
//! t.take_removed(&mut Vec<u32>)     // pids evicted / retired since the last call
//! t.len(); t.capacity(); t.config(); t.counters() -> &TrackerCounters
//! ```
//! Time is always passed in (`now_ns`, observer ns from a [`super::clock::Clock`]).
//! Internally `now_ns` is clamped to the largest value seen so far, so a
//! caller's clock hiccup can never move a deadline backwards.
//!
//! # Structure
//! * `slots`: `Vec<Slot>` of the configured capacity, allocated at
//!   construction; free slots on a free stack.
//! * pid index: open addressing, Murmur3 finalizer, `next_pow2(2 × cap)`
//!   entries of `(pid, slot)` (load ≤ 0.5), linear probing capped at
//!   [`MAX_PROBE`], tombstones on removal (exhaustion → miss /
//!   CapacityExceeded, counted).
//! * deadlines: [`DeadlineList`] — armed slots ordered by `last_ns +
//!   threshold`; a beat re-arms in O(1), expiry pops only due entries.
//!   A stalled (latched) slot is disarmed until its next accepted beat.

use crate::frame::{Frame, Status, NONCE_TERMINAL};
use core::fmt;

use super::counters::TrackerCounters;
use super::deadline::DeadlineList;

/// Default `--tracker-capacity`.
pub const DEFAULT_CAPACITY: usize = 256;
/// Largest allowed capacity.
pub const MAX_CAPACITY: usize = 1_000_000;
/// Default `--eviction-scan-window`.
pub const DEFAULT_SCAN_WINDOW: usize = 256;
/// Largest allowed `--eviction-scan-window`.
pub const MAX_SCAN_WINDOW: usize = 4096;
/// A slot is evictable only once silent for more than this × threshold.
pub const EVICTION_MULTIPLIER: u64 = 10;
/// Wrap rule (§4.2 step 6): last ≥ 2^64−1−2^20 and new ≤ 2^20.
pub const NONCE_WRAP_THRESHOLD: u64 = 1 << 20;
/// Pid-index probe budget.
pub const MAX_PROBE: usize = 64;
/// Minimum length of the removed-pid list (it is `max(capacity, this)`).
pub const MIN_REMOVED_LIST: usize = 64;

/// How a beat reached the observer; ordered by trust rank (§5.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum BeatOrigin {
    NetworkUnverified = 0,
    SocketModeOnly = 1,
    OperatorAttestedTransport = 2,
    KernelAttested = 3,
}

impl BeatOrigin {
    /// Trust rank (0..=3); also the Python `BeatOrigin` value.
    pub const fn rank(self) -> u8 {
        self as u8
    }

    pub const fn from_rank(rank: u8) -> Option<BeatOrigin> {
        match rank {
            0 => Some(BeatOrigin::NetworkUnverified),
            1 => Some(BeatOrigin::SocketModeOnly),
            2 => Some(BeatOrigin::OperatorAttestedTransport),
            3 => Some(BeatOrigin::KernelAttested),
            _ => None,
        }
    }

    /// Python enum member name.
    pub const fn name(self) -> &'static str {
        match self {
            BeatOrigin::NetworkUnverified => "NETWORK_UNVERIFIED",
            BeatOrigin::SocketModeOnly => "SOCKET_MODE_ONLY",
            BeatOrigin::OperatorAttestedTransport => "OPERATOR_ATTESTED_TRANSPORT",
            BeatOrigin::KernelAttested => "KERNEL_ATTESTED",
        }
    }

    /// Recovery may act on stalls of this origin (§5.2).
    pub const fn allows_recovery(self) -> bool {
        matches!(
            self,
            BeatOrigin::OperatorAttestedTransport | BeatOrigin::KernelAttested
        )
    }
}

/// Eviction policy when the table is full and a new pid arrives (§4.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum EvictionPolicy {
    /// Victim must be stall-latched and silent > 10 × threshold.
    #[default]
    Strict,
    /// Strict pass, then any slot silent > 10 × threshold.
    Balanced,
}

impl EvictionPolicy {
    /// `"strict"` / `"balanced"`.
    pub fn from_name(name: &str) -> Option<EvictionPolicy> {
        match name {
            "strict" => Some(EvictionPolicy::Strict),
            "balanced" => Some(EvictionPolicy::Balanced),
            _ => None,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            EvictionPolicy::Strict => "strict",
            EvictionPolicy::Balanced => "balanced",
        }
    }
}

/// Tracker configuration. `TrackerConfig::new(threshold_ns)` gives the defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrackerConfig {
    /// Max tracked pids, `1..=MAX_CAPACITY`.
    pub capacity: usize,
    /// Silence before a stall (ns), ≥ 1. Also the network-recycle gap.
    pub threshold_ns: u64,
    pub eviction: EvictionPolicy,
    /// Slots inspected per eviction pass, `1..=MAX_SCAN_WINDOW`.
    pub scan_window: usize,
}

impl TrackerConfig {
    pub fn new(threshold_ns: u64) -> TrackerConfig {
        TrackerConfig {
            capacity: DEFAULT_CAPACITY,
            threshold_ns,
            eviction: EvictionPolicy::Strict,
            scan_window: DEFAULT_SCAN_WINDOW,
        }
    }
}

/// A [`TrackerConfig`] field out of range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrackerConfigError {
    Capacity(usize),
    Threshold(u64),
    ScanWindow(usize),
}

impl fmt::Display for TrackerConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrackerConfigError::Capacity(c) => {
                write!(f, "tracker capacity {c} out of range 1..={MAX_CAPACITY}")
            }
            TrackerConfigError::Threshold(t) => write!(f, "threshold_ns {t} must be >= 1"),
            TrackerConfigError::ScanWindow(w) => {
                write!(f, "eviction scan window {w} out of range 1..={MAX_SCAN_WINDOW}")
            }
        }
    }
}

impl std::error::Error for TrackerConfigError {}

/// Result of [`Tracker::record`]. Inserted / Refreshed are "accepted" (emit
/// `Beat`); the rest leave the slot untouched (apart from counters).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordOutcome {
    /// New pid, or a slot reset by pid recycle (generation or network).
    Inserted,
    /// Existing slot advanced (including a stronger-origin replacement).
    Refreshed,
    /// Duplicate / old nonce, or a terminal whose timestamp did not increase.
    OutOfOrder,
    /// New pid, table full and no victim (or pid-index probe exhausted).
    CapacityExceeded,
    /// Origin weaker than the slot's pinned origin (emit `OriginConflict`).
    OriginConflict { slot_origin: BeatOrigin },
    /// First-namespace-wins refusal (emit `NamespaceConflict`).
    NamespaceConflict { slot_ns: Option<u64> },
}

impl RecordOutcome {
    /// Inserted or Refreshed.
    pub const fn is_accepted(self) -> bool {
        matches!(self, RecordOutcome::Inserted | RecordOutcome::Refreshed)
    }
}

/// One stall, handed to the [`Tracker::expire`] sink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StallInfo {
    pub pid: u32,
    /// Last observed nonce (may be `NONCE_TERMINAL`).
    pub last_nonce: u64,
    /// Observer time of the last accepted beat.
    pub last_ns: u64,
    pub origin: BeatOrigin,
    pub pid_ns_inode: Option<u64>,
    pub generation: Option<u64>,
    /// Observer time of the expiry pass (`now_ns` given to `expire`).
    pub observer_ns: u64,
}

/// What [`Tracker::expire_with`]'s callback decides for a due slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StallVerdict {
    /// Latch the slot and count the stall (the caller emits `Stall`).
    Emit,
    /// §4.5: KernelAttested slot whose pinned generation no longer matches
    /// the live process — remove it, no stall, `pid_recycle++`.
    Retire,
}

/// Read-only snapshot of one tracked pid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AgentView {
    pub pid: u32,
    /// Status of the last accepted beat.
    pub status: Status,
    pub origin: BeatOrigin,
    /// Accepted beats for this pid (kept across in-place recycle resets).
    pub beats: u64,
    /// Stalls emitted for this pid (kept across in-place recycle resets).
    pub stalls: u64,
    /// Last observed nonce (regular or `NONCE_TERMINAL`).
    pub last_nonce: u64,
    /// Last accepted regular nonce, if any.
    pub last_regular_nonce: Option<u64>,
    /// Timestamp of the last accepted terminal frame, if any.
    pub last_terminal_ts: Option<u64>,
    /// Observer time of the last accepted beat.
    pub last_ns: u64,
    /// Stall latch set (a stall was emitted for the current silence run).
    pub stalled: bool,
    pub pid_ns_inode: Option<u64>,
    pub generation: Option<u64>,
}

/// The tracker. See the module docs.
pub struct Tracker {
    cfg: TrackerConfig,
    counters: TrackerCounters,
}

impl Tracker {
    /// Validate `cfg` and allocate every table for `cfg.capacity`.
    pub fn new(cfg: TrackerConfig) -> Result<Tracker, TrackerConfigError> {
        let _ = cfg;
        todo!()
    }

    pub fn config(&self) -> &TrackerConfig {
        &self.cfg
    }

    pub fn capacity(&self) -> usize {
        self.cfg.capacity
    }

    /// Tracked pids.
    pub fn len(&self) -> usize {
        todo!()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn counters(&self) -> &TrackerCounters {
        &self.counters
    }

    /// Record one decoded frame (§4.2 in order). `origin`, `ns_inode`
    /// (`/proc/<pid>/ns/pid` inode) and `generation` (start time) come from
    /// the ingress gates; `None` = unknown.
    pub fn record(
        &mut self,
        frame: &Frame,
        origin: BeatOrigin,
        ns_inode: Option<u64>,
        generation: Option<u64>,
        now_ns: u64,
    ) -> RecordOutcome {
        let _ = (frame, origin, ns_inode, generation, now_ns, NONCE_TERMINAL);
        todo!()
    }

    /// Emit one stall per due, unlatched slot (§4.3); returns how many.
    pub fn expire(&mut self, now_ns: u64, sink: &mut impl FnMut(StallInfo)) -> usize {
        self.expire_with(now_ns, usize::MAX, &mut |s: &StallInfo| {
            sink(*s);
            StallVerdict::Emit
        })
    }

    /// Like [`Tracker::expire`], at most `limit` due slots (the rest stay
    /// due), each judged by `decide`. Returns the number of slots handled.
    pub fn expire_with(
        &mut self,
        now_ns: u64,
        limit: usize,
        decide: &mut impl FnMut(&StallInfo) -> StallVerdict,
    ) -> usize {
        let _ = (now_ns, limit, decide);
        todo!()
    }

    /// Earliest pending stall deadline (observer ns), if any slot is armed.
    pub fn next_deadline_ns(&self) -> Option<u64> {
        todo!()
    }

    pub fn get(&self, pid: u32) -> Option<AgentView> {
        let _ = pid;
        todo!()
    }

    /// All tracked pids (slot order). O(capacity).
    pub fn iter(&self) -> impl Iterator<Item = AgentView> + '_ {
        core::iter::empty()
    }

    /// Remove `pid` (§4.5 KernelAttested generation mismatch): no stall,
    /// `pid_recycle++`, pid goes to the removed list. False if not tracked.
    pub fn retire(&mut self, pid: u32) -> bool {
        let _ = pid;
        todo!()
    }

    /// Append and clear the pids removed (evicted / retired) since the last call.
    pub fn take_removed(&mut self, out: &mut Vec<u32>) {
        let _ = out;
        todo!()
    }

    /// Bytes allocated per configured slot: slot + pid index + deadline +
    /// free stack + removed list, divided by capacity.
    pub fn bytes_per_agent(&self) -> usize {
        todo!()
    }
}

/// Drive a tracker with `agents` simulated pids round-robin for `beats`
/// accepted beats; returns (ns per beat, bytes per agent). For benchmarks.
#[doc(hidden)]
pub fn bench_tracker(agents: u32, beats: u64) -> (f64, usize) {
    let _ = (agents, beats);
    todo!()
}
