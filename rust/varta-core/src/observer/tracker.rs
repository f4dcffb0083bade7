//! Per-pid liveness tracker (`docs/observer.md#tracker`).
//!
//! # API
//! ```text
//! Tracker::new(TrackerConfig) -> Result<Tracker, TrackerConfigError>   // pre-allocates everything
//! t.record(&frame, origin, ns_inode, generation, now_ns) -> RecordOutcome   // docs/observer.md#tracker, O(1) expected
//! t.expire(now_ns, &mut |stall: StallInfo| ..) -> usize               // docs/observer.md#stall-detection, O(expired)
//! t.expire_with(now_ns, limit, &mut |s: &StallInfo| StallDecision) -> usize  // verdicts, retirement
//! t.take_exit(pid, generation, now_ns) -> ExitOutcome                 // the process ended (docs/verdicts.md)
//! t.extend_deadlines(by_ns)         // the observer was blind: push every armed deadline back
//! t.next_deadline_ns() -> Option<u64>                                  // when the next stall is due
//! t.get(pid) -> Option<AgentView>;  t.iter() -> impl Iterator<Item = AgentView>
//! t.retire(pid) -> bool             // docs/observer.md#release KernelAttested generation-mismatch release
//! t.take_removed(&mut Vec<u32>)     // pids evicted / retired since the last call
//! t.len(); t.capacity(); t.config(); t.counters() -> &TrackerCounters
//! t.prefetch(pid)                   // cache hint: call per frame of a recvmmsg batch, then record
//! t.bytes_per_agent()               // allocated bytes / capacity
//! ```
//! Time is always passed in (`now_ns`, observer ns from a [`super::clock::Clock`]).
//! Internally `now_ns` is clamped to the largest value seen so far, so a
//! caller's clock hiccup can never move a deadline backwards.
//!
//! # Structure
//! * `slots`: `Vec<Slot>` of the configured capacity, one cache line each,
//!   allocated at construction; free slots on a free stack.
//! * pid index: `⌈4 × cap / 15⌉` cache lines of 15 four-byte entries (slot
//!   number + hash tag, the pid confirmed in the slot; entry load ≤ 0.27).
//!   A pid's home line is the Murmur3 hash of `pid >> 3`, so 8 consecutive
//!   pids share one line. A pid takes its place in its block as its entry
//!   when free, so a lookup usually compares one entry (else the line's 15
//!   tags at once). A full line passes new pids to the next, up to
//!   [`MAX_PROBE_LINES`] lines, and counts them (F14-style overflow counts,
//!   no tombstones). Exhaustion → CapacityExceeded, counted.
//!   Upstream uses per-pid linear probing (`docs/observer.md#tracker`);
//!   the observable contract is the same, but at 100,000 agents its
//!   one cache miss per beat cost 1.2–1.5× the per-beat time at 100.
//! * deadlines: [`DeadlineList`] — armed slots ordered by `last_ns +
//!   threshold`; a beat re-arms in O(1), expiry pops only due entries.
//!   A stalled (latched) slot is disarmed until its next accepted beat.
//!
//! Memory per agent: slot 64 B (with its last terminal payload and verdict) + index ≈ 17 B (64 B per 3.75 slots)
//! + deadline link 16 B + free stack 4 B + removed list 4 B ≈ 106 B.
//!
//! # Choices where the spec leaves room
//! * Per-pid `beats` / `stalls` survive in-place resets (generation or
//!   network recycle, stronger-origin replacement): they back the per-pid
//!   Prometheus counters, which must not go backwards while the pid's row
//!   lives. They restart at 0 only for a pid inserted into a free slot.
//! * Wrap rule exactly as docs/observer.md#tracker: `last ≥ 2^64−1−2^20 && new ≤ 2^20`.
//! * `eviction_scan_truncated` counts once per attempt that ran at least one
//!   pass and found no victim (a skipped strict pass alone does not count).
//! * A new pid is refused as exhausted only when all 64 lines from its home
//!   on are full, and then before any eviction, so nothing else changes.

use crate::frame::{Frame, Status, NONCE_TERMINAL};
use core::fmt;

use super::counters::{bump, TrackerCounters};
use super::deadline::DeadlineList;
use super::procfs::Comm;
use super::verdict::{gone_verdict, TerminalCause, Verdict};

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
/// Wrap rule (docs/observer.md#tracker step 6): last ≥ 2^64−1−2^20 and new ≤ 2^20.
pub const NONCE_WRAP_THRESHOLD: u64 = 1 << 20;
/// Pid-index probe budget, in 64-byte lines of 15 entries.
pub const MAX_PROBE_LINES: usize = 64;
/// Minimum length of the removed-pid list (it is `max(capacity, this)`).
pub const MIN_REMOVED_LIST: usize = 64;

/// How a beat reached the observer; ordered by trust rank (docs/observer.md#origins).
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

    /// Recovery may act on stalls of this origin (docs/observer.md#origins).
    pub const fn allows_recovery(self) -> bool {
        matches!(
            self,
            BeatOrigin::OperatorAttestedTransport | BeatOrigin::KernelAttested
        )
    }
}

/// Eviction policy when the table is full and a new pid arrives (docs/observer.md#eviction).
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
                write!(
                    f,
                    "eviction scan window {w} out of range 1..={MAX_SCAN_WINDOW}"
                )
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
    /// Observer time of the expiry pass (`now_ns` given to `expire`), or of
    /// the exit notice.
    pub observer_ns: u64,
    /// Why the agent went silent. The tracker hands the callback of
    /// [`Tracker::expire_with`] [`Verdict::Unknown`]; the caller decides.
    pub verdict: Verdict,
    /// The cause the last frame announced, if it was a terminal frame.
    pub cause: Option<TerminalCause>,
    /// The process's command name, when the observer read it.
    pub comm: Option<Comm>,
}

/// What [`Tracker::expire_with`]'s callback decides for a due slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StallDecision {
    /// Latch the slot and count a stall with this verdict (the caller emits
    /// `Stall`); the slot stays until it beats again or is evicted.
    Emit(Verdict),
    /// Count a stall with this verdict and retire the slot: the agent ended
    /// (`docs/verdicts.md#retirement`).
    EmitAndRetire(Verdict),
    /// docs/observer.md#release without a stall: remove the slot, `pid_recycle++`.
    Retire,
}

/// What [`Tracker::take_exit`] did with a process's exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitOutcome {
    /// No slot holds that process (already retired, evicted or replaced).
    NotTracked,
    /// The slot had already stalled (its verdict was reported): retired
    /// without a second report.
    RetiredAfterStall,
    /// A stall with the exit's verdict; the slot is retired.
    Reported(StallInfo),
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
    /// The cause announced by the last frame, if it was a terminal frame.
    pub terminal_cause: Option<TerminalCause>,
    /// The verdict of the current stall, while `stalled`.
    pub verdict: Option<Verdict>,
}

// ---------------------------------------------------------------------------
// Slot

const F_USED: u8 = 1 << 0;
const F_HAS_REGULAR: u8 = 1 << 1;
const F_HAS_TERMINAL: u8 = 1 << 2;
/// The last accepted frame was a terminal (last observed nonce = sentinel).
const F_LAST_TERMINAL: u8 = 1 << 3;
const F_STALLED: u8 = 1 << 4;
const F_HAS_NS: u8 = 1 << 5;
const F_HAS_GEN: u8 = 1 << 6;

/// One tracked pid: 64 bytes, aligned so it is exactly one cache line
/// (unaligned, most slots straddled two). Optional fields are a value plus a
/// flag bit.
#[derive(Clone, Copy, Debug)]
#[repr(align(64))]
struct Slot {
    last_regular: u64,
    last_terminal_ts: u64,
    last_ns: u64,
    ns_inode: u64,
    generation: u64,
    beats: u64,
    pid: u32,
    stalls: u32,
    /// Payload of the last accepted terminal frame (its [`TerminalCause`]).
    terminal_payload: u32,
    status: Status,
    origin: BeatOrigin,
    flags: u8,
    /// [`Verdict`] of the current stall (meaningful while `F_STALLED`).
    verdict: u8,
}

const EMPTY_SLOT: Slot = Slot {
    last_regular: 0,
    last_terminal_ts: 0,
    last_ns: 0,
    ns_inode: 0,
    generation: 0,
    beats: 0,
    pid: 0,
    stalls: 0,
    terminal_payload: 0,
    status: Status::Ok,
    origin: BeatOrigin::NetworkUnverified,
    flags: 0,
    verdict: 0,
};

impl Slot {
    #[inline]
    fn has(&self, f: u8) -> bool {
        self.flags & f != 0
    }

    #[inline]
    fn ns(&self) -> Option<u64> {
        self.has(F_HAS_NS).then_some(self.ns_inode)
    }

    #[inline]
    fn gen(&self) -> Option<u64> {
        self.has(F_HAS_GEN).then_some(self.generation)
    }

    #[inline]
    fn last_observed_nonce(&self) -> u64 {
        if self.has(F_LAST_TERMINAL) {
            NONCE_TERMINAL
        } else {
            self.last_regular
        }
    }

    /// The cause announced by the last frame, if it was a terminal frame.
    #[inline]
    fn terminal_cause(&self) -> Option<TerminalCause> {
        self.has(F_LAST_TERMINAL)
            .then(|| TerminalCause::from_payload(self.terminal_payload))
    }

    fn stall_info(&self, now: u64) -> StallInfo {
        StallInfo {
            pid: self.pid,
            last_nonce: self.last_observed_nonce(),
            last_ns: self.last_ns,
            origin: self.origin,
            pid_ns_inode: self.ns(),
            generation: self.gen(),
            observer_ns: now,
            verdict: Verdict::Unknown,
            cause: self.terminal_cause(),
            comm: None,
        }
    }

    #[inline]
    fn set_ns(&mut self, ns: Option<u64>) {
        if let Some(v) = ns {
            self.ns_inode = v;
            self.flags |= F_HAS_NS;
        }
    }

    #[inline]
    fn set_gen(&mut self, gen: Option<u64>) {
        if let Some(v) = gen {
            self.generation = v;
            self.flags |= F_HAS_GEN;
        }
    }

    /// A fresh slot for `frame`, carrying over the per-pid `beats` / `stalls`
    /// counts (0 for a new pid). The accepted beat itself is not counted here.
    fn fresh(
        frame: &Frame,
        origin: BeatOrigin,
        ns: Option<u64>,
        gen: Option<u64>,
        now: u64,
        beats: u64,
        stalls: u32,
    ) -> Slot {
        let mut s = Slot {
            pid: frame.pid,
            status: frame.status,
            origin,
            last_ns: now,
            beats,
            stalls,
            flags: F_USED,
            ..EMPTY_SLOT
        };
        if frame.nonce == NONCE_TERMINAL {
            s.last_terminal_ts = frame.timestamp;
            s.terminal_payload = frame.payload;
            s.flags |= F_HAS_TERMINAL | F_LAST_TERMINAL;
        } else {
            s.last_regular = frame.nonce;
            s.flags |= F_HAS_REGULAR;
        }
        s.set_ns(ns);
        s.set_gen(gen);
        s
    }

    fn view(&self) -> AgentView {
        AgentView {
            pid: self.pid,
            status: self.status,
            origin: self.origin,
            beats: self.beats,
            stalls: u64::from(self.stalls),
            last_nonce: self.last_observed_nonce(),
            last_regular_nonce: self.has(F_HAS_REGULAR).then_some(self.last_regular),
            last_terminal_ts: self.has(F_HAS_TERMINAL).then_some(self.last_terminal_ts),
            last_ns: self.last_ns,
            stalled: self.has(F_STALLED),
            pid_ns_inode: self.ns(),
            generation: self.gen(),
            terminal_cause: self.terminal_cause(),
            verdict: if self.has(F_STALLED) {
                Verdict::from_u8(self.verdict)
            } else {
                None
            },
        }
    }
}

// ---------------------------------------------------------------------------
// Pid index

/// Index entries are 4 bytes: the slot number in the low [`SLOT_BITS`] and
/// a tag (the pid hash's top bits) above. A tag match is confirmed against
/// the slot's pid; a false match (1 in 4,096 per occupied entry compared)
/// only costs one extra slot read.
const SLOT_BITS: u32 = 20;
const SLOT_MASK: u32 = (1 << SLOT_BITS) - 1;
/// `slot` sentinel of a free entry.
const IDX_EMPTY: u32 = SLOT_MASK;
const _: () = assert!(
    MAX_CAPACITY < IDX_EMPTY as usize,
    "slot numbers must fit below the sentinel"
);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct IndexEntry(u32);

impl IndexEntry {
    const EMPTY: IndexEntry = IndexEntry(u32::MAX);

    #[inline]
    fn new(hash: u32, slot: u32) -> IndexEntry {
        IndexEntry((hash & !SLOT_MASK) | slot)
    }

    #[inline]
    fn slot(self) -> u32 {
        self.0 & SLOT_MASK
    }

    /// The entry holds a slot whose pid hashes to `hash`'s tag. (The
    /// one-entry form of [`IndexLine::tag_matches`].)
    #[inline]
    fn tag_matches(self, hash: u32) -> bool {
        (self.0 ^ hash) & !SLOT_MASK == 0
    }
}

/// Entries per index line.
const LINE_ENTRIES: usize = 15;
/// Consecutive pids share a home line (`pid >> BLOCK_BITS` is hashed). The
/// kernel hands out pids in increasing order, so agents started together
/// share few lines and a round of their beats misses the index once per 8
/// beats instead of once per beat; scattered pids cost what a per-pid hash
/// does. (At 100,000 agents that miss was the whole difference from 100.)
const BLOCK_BITS: u32 = 3;
const PIDS_PER_BLOCK: usize = 1 << BLOCK_BITS;

/// Where in a line a pid goes when that entry is free: its place in its
/// block (or the same place in the line's second half). Lookups try it
/// first, so a found pid usually costs one entry compare, not a line's.
#[inline]
fn preferred(pid: u32) -> usize {
    pid as usize & (PIDS_PER_BLOCK - 1)
}

/// One cache line of the index: 15 entries and the count of pids that
/// overflowed past this line from earlier homes (F14's scheme: a lookup
/// stops at the first line with no overflow, so there are no tombstones).
#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
struct IndexLine {
    entries: [IndexEntry; LINE_ENTRIES],
    overflow: u32,
}

impl IndexLine {
    const EMPTY: IndexLine = IndexLine {
        entries: [IndexEntry::EMPTY; LINE_ENTRIES],
        overflow: 0,
    };

    /// Bit `i` set if entry `i`'s tag matches `hash` (free entries too, when
    /// the tag is all ones): the 15 tags compared at once.
    #[inline]
    fn tag_matches(&self, hash: u32) -> u32 {
        #[cfg(target_arch = "x86_64")]
        {
            use core::arch::x86_64::*;
            // SAFETY: SSE2 is part of the x86_64 baseline; the line is 64
            // bytes, 64-aligned, so the four 16-byte loads are in bounds and
            // aligned. Lane 15 is `overflow`, masked off below.
            unsafe {
                let p = (self as *const IndexLine).cast::<__m128i>();
                let keep = _mm_set1_epi32(!SLOT_MASK as i32);
                let want = _mm_set1_epi32((hash & !SLOT_MASK) as i32);
                let eq =
                    |i: usize| _mm_cmpeq_epi32(_mm_and_si128(_mm_load_si128(p.add(i)), keep), want);
                let lo = _mm_packs_epi32(eq(0), eq(1));
                let hi = _mm_packs_epi32(eq(2), eq(3));
                (_mm_movemask_epi8(_mm_packs_epi16(lo, hi)) as u32) & ((1 << LINE_ENTRIES) - 1)
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let mut bits = 0u32;
            for (i, e) in self.entries.iter().enumerate() {
                bits |= u32::from(e.tag_matches(hash)) << i;
            }
            bits
        }
    }
}

enum Probe {
    Found { line: usize, pos: usize, slot: u32 },
    Absent,
}

/// A free index entry for a new pid, `passed` full lines after its home.
#[derive(Clone, Copy)]
struct Vacancy {
    line: usize,
    pos: usize,
    passed: usize,
}

/// Murmur3 32-bit finalizer.
#[inline]
fn mix(x: u32) -> u32 {
    let mut x = x;
    x = (x ^ (x >> 16)).wrapping_mul(0x85eb_ca6b);
    x = (x ^ (x >> 13)).wrapping_mul(0xc2b2_ae35);
    x ^ (x >> 16)
}

/// `pid → slot` map: `⌈4 × capacity / 15⌉` lines (entry load ≤ 0.27),
/// each pid in the first line with room from its home on, at most
/// [`MAX_PROBE_LINES`] lines along.
#[derive(Debug)]
struct PidIndex {
    lines: Vec<IndexLine>,
}

impl PidIndex {
    fn new(capacity: usize) -> PidIndex {
        let n = capacity.saturating_mul(4).div_ceil(LINE_ENTRIES).max(1);
        PidIndex {
            lines: vec![IndexLine::EMPTY; n],
        }
    }

    /// Home line of `pid`: its block's hash scaled onto the table.
    #[inline]
    fn home(&self, pid: u32) -> usize {
        ((u64::from(mix(pid >> BLOCK_BITS)) * self.lines.len() as u64) >> 32) as usize
    }

    #[inline]
    fn next(&self, line: usize) -> usize {
        if line + 1 == self.lines.len() {
            0
        } else {
            line + 1
        }
    }

    /// Lines a chain may span.
    fn max_chain(&self) -> usize {
        MAX_PROBE_LINES.min(self.lines.len())
    }

    /// Find `pid` (confirmed against `slots`).
    #[inline]
    fn probe(&self, pid: u32, slots: &[Slot]) -> Probe {
        let hash = mix(pid);
        let mut line = self.home(pid);
        // Fast path: the pid sits at its preferred entry of its home line.
        let pos = preferred(pid);
        let e = self.lines[line].entries[pos];
        let slot = e.slot();
        if e.tag_matches(hash)
            && slot != IDX_EMPTY
            && slots.get(slot as usize).is_some_and(|s| s.pid == pid)
        {
            return Probe::Found { line, pos, slot };
        }
        for _ in 0..self.max_chain() {
            let l = &self.lines[line];
            let mut candidates = l.tag_matches(hash);
            while candidates != 0 {
                let pos = candidates.trailing_zeros() as usize;
                candidates &= candidates - 1;
                let slot = l.entries[pos].slot();
                if slot != IDX_EMPTY && slots.get(slot as usize).is_some_and(|s| s.pid == pid) {
                    return Probe::Found { line, pos, slot };
                }
            }
            if l.overflow == 0 {
                break;
            }
            line = self.next(line);
        }
        Probe::Absent
    }

    /// Where an absent `pid` goes: the first free entry from its home
    /// line on, or `None` if the next [`MAX_PROBE_LINES`] lines are full.
    fn vacancy(&self, pid: u32) -> Option<Vacancy> {
        let mut line = self.home(pid);
        for passed in 0..self.max_chain() {
            let entries = &self.lines[line].entries;
            let free = |pos: &usize| entries[*pos].slot() == IDX_EMPTY;
            let pos = [preferred(pid), preferred(pid) + PIDS_PER_BLOCK]
                .into_iter()
                .filter(|&p| p < LINE_ENTRIES)
                .find(free)
                .or_else(|| (0..LINE_ENTRIES).find(free));
            if let Some(pos) = pos {
                return Some(Vacancy { line, pos, passed });
            }
            line = self.next(line);
        }
        None
    }

    /// Index `pid` to `slot` at `v` (from [`PidIndex::vacancy`], no
    /// change to the index since).
    fn insert_at(&mut self, pid: u32, slot: u32, v: Vacancy) {
        self.lines[v.line].entries[v.pos] = IndexEntry::new(mix(pid), slot);
        let mut l = self.home(pid);
        for _ in 0..v.passed {
            self.lines[l].overflow += 1;
            l = self.next(l);
        }
    }

    /// Unindex `pid`, found at `line`/`pos` by [`PidIndex::probe`].
    fn remove_at(&mut self, pid: u32, line: usize, pos: usize) {
        self.lines[line].entries[pos] = IndexEntry::EMPTY;
        let mut l = self.home(pid);
        while l != line {
            self.lines[l].overflow -= 1;
            l = self.next(l);
        }
    }

    /// Entries that hold a slot.
    fn occupied(&self) -> usize {
        self.lines
            .iter()
            .flat_map(|l| l.entries.iter())
            .filter(|e| e.slot() != IDX_EMPTY)
            .count()
    }

    /// Overflow counts as recomputed from where each pid sits (tests).
    fn expected_overflow(&self, slots: &[Slot]) -> Result<Vec<u32>, String> {
        let mut want = vec![0u32; self.lines.len()];
        for (line, l) in self.lines.iter().enumerate() {
            for e in l.entries.iter().filter(|e| e.slot() != IDX_EMPTY) {
                let pid = slots
                    .get(e.slot() as usize)
                    .map(|s| s.pid)
                    .ok_or_else(|| format!("entry slot {} out of range", e.slot()))?;
                let mut h = self.home(pid);
                let mut steps = 0;
                while h != line {
                    want[h] += 1;
                    h = self.next(h);
                    steps += 1;
                    if steps >= self.max_chain() {
                        return Err(format!("pid {pid} sits past its chain budget"));
                    }
                }
            }
        }
        Ok(want)
    }
}

// ---------------------------------------------------------------------------
// Tracker

/// The tracker. See the module docs.
pub struct Tracker {
    cfg: TrackerConfig,
    slots: Vec<Slot>,
    index: PidIndex,
    deadlines: DeadlineList,
    /// Free slot indices (stack); initially all, lowest on top.
    free: Vec<u32>,
    len: usize,
    /// Slots with the stall latch set.
    latched: usize,
    /// Rotating eviction cursor (slot index).
    cursor: usize,
    removed: Vec<u32>,
    removed_cap: usize,
    /// Largest `now_ns` seen (time is clamped forward).
    now_floor: u64,
    counters: TrackerCounters,
}

impl fmt::Debug for Tracker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tracker")
            .field("cfg", &self.cfg)
            .field("len", &self.len)
            .field("latched", &self.latched)
            .field("armed", &self.deadlines.len())
            .field("counters", &self.counters)
            .finish()
    }
}

impl Tracker {
    /// Validate `cfg` and allocate every table for `cfg.capacity`.
    pub fn new(cfg: TrackerConfig) -> Result<Tracker, TrackerConfigError> {
        if cfg.capacity == 0 || cfg.capacity > MAX_CAPACITY {
            return Err(TrackerConfigError::Capacity(cfg.capacity));
        }
        if cfg.threshold_ns == 0 {
            return Err(TrackerConfigError::Threshold(cfg.threshold_ns));
        }
        if cfg.scan_window == 0 || cfg.scan_window > MAX_SCAN_WINDOW {
            return Err(TrackerConfigError::ScanWindow(cfg.scan_window));
        }
        let cap = cfg.capacity;
        let removed_cap = cap.max(MIN_REMOVED_LIST);
        Ok(Tracker {
            cfg,
            slots: vec![EMPTY_SLOT; cap],
            index: PidIndex::new(cap),
            deadlines: DeadlineList::new(cap),
            free: (0..cap as u32).rev().collect(),
            len: 0,
            latched: 0,
            cursor: 0,
            removed: Vec::with_capacity(removed_cap),
            removed_cap,
            now_floor: 0,
            counters: TrackerCounters::default(),
        })
    }

    pub fn config(&self) -> &TrackerConfig {
        &self.cfg
    }

    pub fn capacity(&self) -> usize {
        self.cfg.capacity
    }

    /// Tracked pids.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn counters(&self) -> &TrackerCounters {
        &self.counters
    }

    #[inline]
    fn clamp_now(&mut self, now_ns: u64) -> u64 {
        if now_ns > self.now_floor {
            self.now_floor = now_ns;
        }
        self.now_floor
    }

    #[inline]
    fn due_of(&self, last_ns: u64) -> u64 {
        last_ns.saturating_add(self.cfg.threshold_ns)
    }

    /// Record one decoded frame (docs/observer.md#tracker in order). `origin`, `ns_inode`
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
        let now = self.clamp_now(now_ns);
        match self.index.probe(frame.pid, &self.slots) {
            Probe::Found { slot, .. } => {
                self.record_existing(slot, frame, origin, ns_inode, generation, now)
            }
            Probe::Absent => self.record_new(frame, origin, ns_inode, generation, now),
        }
    }

    /// Reset slot `idx` in place for a new incarnation (recycle / stronger
    /// origin), keeping the per-pid counts; counts one accepted beat.
    fn reset_slot(
        &mut self,
        idx: u32,
        frame: &Frame,
        origin: BeatOrigin,
        ns_inode: Option<u64>,
        generation: Option<u64>,
        now: u64,
    ) {
        let old = self.slots[idx as usize];
        if old.has(F_STALLED) {
            self.latched -= 1;
        }
        self.slots[idx as usize] = Slot::fresh(
            frame,
            origin,
            ns_inode,
            generation,
            now,
            old.beats.saturating_add(1),
            old.stalls,
        );
        bump(&mut self.counters.beats);
        self.deadlines.arm(idx, self.due_of(now));
    }

    fn record_existing(
        &mut self,
        idx: u32,
        frame: &Frame,
        origin: BeatOrigin,
        ns_inode: Option<u64>,
        generation: Option<u64>,
        now: u64,
    ) -> RecordOutcome {
        let terminal = frame.nonce == NONCE_TERMINAL;
        let s = self.slots[idx as usize];

        // 1. Known generations differ: the pid was recycled.
        if let (Some(a), Some(b)) = (s.gen(), generation) {
            if a != b {
                self.reset_slot(idx, frame, origin, ns_inode, generation, now);
                bump(&mut self.counters.pid_recycle);
                return RecordOutcome::Inserted;
            }
        }

        // 2. Network recycle: no generations, same network origin, a regular
        //    nonce that did not advance, after a silence of ≥ threshold.
        if generation.is_none()
            && s.gen().is_none()
            && s.origin == origin
            && matches!(
                origin,
                BeatOrigin::OperatorAttestedTransport | BeatOrigin::NetworkUnverified
            )
            && !terminal
            && s.has(F_HAS_REGULAR)
            && frame.nonce <= s.last_regular
            && now.saturating_sub(s.last_ns) >= self.cfg.threshold_ns
        {
            self.reset_slot(idx, frame, origin, ns_inode, generation, now);
            bump(&mut self.counters.pid_recycle);
            return RecordOutcome::Inserted;
        }

        // 3. Origin: stronger replaces the slot, weaker is refused.
        if origin != s.origin {
            if origin > s.origin {
                self.reset_slot(idx, frame, origin, ns_inode, generation, now);
                return RecordOutcome::Refreshed;
            }
            bump(&mut self.counters.origin_conflict);
            return RecordOutcome::OriginConflict {
                slot_origin: s.origin,
            };
        }

        // 4. First namespace wins; a terminal may arrive without an inode
        //    (the dying process's /proc entry is already gone).
        match (s.ns(), ns_inode) {
            (Some(a), Some(b)) if a != b => {
                bump(&mut self.counters.namespace_conflict);
                return RecordOutcome::NamespaceConflict { slot_ns: Some(a) };
            }
            (Some(a), None) if !terminal => {
                bump(&mut self.counters.namespace_conflict);
                return RecordOutcome::NamespaceConflict { slot_ns: Some(a) };
            }
            _ => {}
        }

        let slot = &mut self.slots[idx as usize];
        if terminal {
            // 5. Terminal: accept iff its timestamp increases.
            if slot.has(F_HAS_TERMINAL) && frame.timestamp <= slot.last_terminal_ts {
                bump(&mut self.counters.out_of_order);
                return RecordOutcome::OutOfOrder;
            }
            slot.last_terminal_ts = frame.timestamp;
            slot.terminal_payload = frame.payload;
            slot.flags |= F_HAS_TERMINAL | F_LAST_TERMINAL;
        } else {
            // 6. Regular: strictly increasing nonce, or the wrap rule.
            if slot.has(F_HAS_REGULAR) && frame.nonce <= slot.last_regular {
                if slot.last_regular >= u64::MAX - NONCE_WRAP_THRESHOLD
                    && frame.nonce <= NONCE_WRAP_THRESHOLD
                {
                    bump(&mut self.counters.nonce_wrap);
                } else {
                    bump(&mut self.counters.out_of_order);
                    return RecordOutcome::OutOfOrder;
                }
            }
            slot.last_regular = frame.nonce;
            slot.flags = (slot.flags | F_HAS_REGULAR) & !F_LAST_TERMINAL;
        }
        // Accepted: pin a first-seen namespace / generation, refresh.
        if !slot.has(F_HAS_NS) {
            slot.set_ns(ns_inode);
        }
        if !slot.has(F_HAS_GEN) {
            slot.set_gen(generation);
        }
        slot.status = frame.status;
        slot.last_ns = now;
        slot.beats = slot.beats.saturating_add(1);
        if slot.has(F_STALLED) {
            slot.flags &= !F_STALLED;
            self.latched -= 1;
        }
        bump(&mut self.counters.beats);
        self.deadlines.arm(idx, self.due_of(now));
        RecordOutcome::Refreshed
    }

    fn record_new(
        &mut self,
        frame: &Frame,
        origin: BeatOrigin,
        ns_inode: Option<u64>,
        generation: Option<u64>,
        now: u64,
    ) -> RecordOutcome {
        let Some(mut vacancy) = self.index.vacancy(frame.pid) else {
            // Every line of the pid's chain is full: only hostile or
            // freakishly clustered pids get here. Refused before any eviction.
            bump(&mut self.counters.probe_exhausted);
            bump(&mut self.counters.capacity_exceeded);
            return RecordOutcome::CapacityExceeded;
        };
        if self.free.is_empty() {
            // 7. Full: evict (docs/observer.md#eviction) or drop.
            let Some(victim) = self.find_victim(now) else {
                bump(&mut self.counters.capacity_exceeded);
                return RecordOutcome::CapacityExceeded;
            };
            self.release(victim);
            bump(&mut self.counters.tracker_evicted);
            // The victim's entry may be nearer this pid's home.
            vacancy = self.index.vacancy(frame.pid).unwrap_or(vacancy);
        }
        let Some(idx) = self.free.pop() else {
            bump(&mut self.counters.invariant_violations);
            bump(&mut self.counters.capacity_exceeded);
            return RecordOutcome::CapacityExceeded;
        };
        self.index.insert_at(frame.pid, idx, vacancy);
        self.slots[idx as usize] = Slot::fresh(frame, origin, ns_inode, generation, now, 1, 0);
        self.len += 1;
        bump(&mut self.counters.beats);
        self.deadlines.arm(idx, self.due_of(now));
        RecordOutcome::Inserted
    }

    /// docs/observer.md#eviction: strict pass (only if some slot is latched), then for balanced a
    /// pass over any slot; each pass ≤ `scan_window` slots from the cursor.
    fn find_victim(&mut self, now: u64) -> Option<u32> {
        let age = self.cfg.threshold_ns.saturating_mul(EVICTION_MULTIPLIER);
        let mut ran = false;
        if self.latched > 0 {
            ran = true;
            if let Some(v) = self.scan_pass(now, age, true) {
                return Some(v);
            }
        }
        if self.cfg.eviction == EvictionPolicy::Balanced {
            ran = true;
            if let Some(v) = self.scan_pass(now, age, false) {
                return Some(v);
            }
        }
        if ran {
            bump(&mut self.counters.eviction_scan_truncated);
        }
        None
    }

    fn scan_pass(&mut self, now: u64, age: u64, require_latched: bool) -> Option<u32> {
        let n = self.slots.len();
        let window = self.cfg.scan_window.min(n);
        let start = self.cursor % n;
        for i in 0..window {
            let idx = (start + i) % n;
            let s = &self.slots[idx];
            if s.has(F_USED)
                && now.saturating_sub(s.last_ns) > age
                && (!require_latched || s.has(F_STALLED))
            {
                self.cursor = (idx + 1) % n;
                return Some(idx as u32);
            }
        }
        self.cursor = (start + window) % n;
        None
    }

    /// Remove slot `idx` (eviction / retirement): index, deadline, latch,
    /// free stack, removed list.
    fn release(&mut self, idx: u32) {
        let s = self.slots[idx as usize];
        match self.index.probe(s.pid, &self.slots) {
            Probe::Found { line, pos, slot } if slot == idx => {
                self.index.remove_at(s.pid, line, pos)
            }
            _ => bump(&mut self.counters.invariant_violations),
        }
        self.deadlines.disarm(idx);
        if s.has(F_STALLED) {
            self.latched -= 1;
        }
        self.slots[idx as usize] = EMPTY_SLOT;
        self.free.push(idx);
        self.len -= 1;
        if self.removed.len() < self.removed_cap {
            self.removed.push(s.pid);
        } else {
            bump(&mut self.counters.removed_pid_drops);
        }
    }

    /// Emit one stall per due, unlatched slot (docs/observer.md#stall-detection);
    /// returns how many. Verdicts are left [`Verdict::Unknown`] (no kernel is asked).
    pub fn expire(&mut self, now_ns: u64, sink: &mut impl FnMut(StallInfo)) -> usize {
        self.expire_with(now_ns, usize::MAX, &mut |s: &StallInfo| {
            sink(*s);
            StallDecision::Emit(Verdict::Unknown)
        })
    }

    /// Count one stall with `verdict` on slot `idx`.
    fn count_stall(&mut self, idx: u32, verdict: Verdict) {
        let slot = &mut self.slots[idx as usize];
        slot.stalls = slot.stalls.saturating_add(1);
        bump(&mut self.counters.stalls);
        bump(&mut self.counters.stall_verdicts[verdict as usize]);
    }

    /// The process pinned on `pid`'s slot as `generation` ended (the
    /// kernel said so): report it with the verdict its last frame supports
    /// and retire the slot, unless its stall was already reported.
    pub fn take_exit(&mut self, pid: u32, generation: u64, now_ns: u64) -> ExitOutcome {
        let now = self.clamp_now(now_ns);
        let Probe::Found { slot: idx, .. } = self.index.probe(pid, &self.slots) else {
            return ExitOutcome::NotTracked;
        };
        let s = self.slots[idx as usize];
        if !s.has(F_USED)
            || s.pid != pid
            || s.gen() != Some(generation)
            || s.origin != BeatOrigin::KernelAttested
        {
            return ExitOutcome::NotTracked;
        }
        bump(&mut self.counters.retired);
        if s.has(F_STALLED) {
            self.release(idx);
            return ExitOutcome::RetiredAfterStall;
        }
        let mut info = s.stall_info(now);
        info.verdict = gone_verdict(info.cause);
        self.count_stall(idx, info.verdict);
        self.release(idx);
        ExitOutcome::Reported(info)
    }

    /// The observer could not see beats for `by_ns` (it was stopped, or the
    /// host stalled): push every armed deadline back by that much, so only
    /// silence it actually watched counts toward the threshold.
    pub fn extend_deadlines(&mut self, by_ns: u64) {
        self.deadlines.shift_all(by_ns);
    }

    /// Like [`Tracker::expire`], at most `limit` due slots (the rest stay
    /// due), each judged by `decide`. Returns the number of slots handled.
    pub fn expire_with(
        &mut self,
        now_ns: u64,
        limit: usize,
        decide: &mut impl FnMut(&StallInfo) -> StallDecision,
    ) -> usize {
        let now = self.clamp_now(now_ns);
        let mut handled = 0;
        while handled < limit {
            let Some((idx, _)) = self.deadlines.pop_due(now) else {
                break;
            };
            let s = self.slots[idx as usize];
            if !s.has(F_USED) || s.has(F_STALLED) {
                bump(&mut self.counters.invariant_violations);
                continue;
            }
            let info = s.stall_info(now);
            match decide(&info) {
                StallDecision::Emit(verdict) => {
                    self.count_stall(idx, verdict);
                    let slot = &mut self.slots[idx as usize];
                    slot.flags |= F_STALLED;
                    slot.verdict = verdict as u8;
                    self.latched += 1;
                }
                StallDecision::EmitAndRetire(verdict) => {
                    self.count_stall(idx, verdict);
                    self.release(idx);
                    bump(&mut self.counters.retired);
                }
                StallDecision::Retire => {
                    self.release(idx);
                    bump(&mut self.counters.pid_recycle);
                }
            }
            handled += 1;
        }
        handled
    }

    /// Earliest pending stall deadline (observer ns), if any slot is armed.
    pub fn next_deadline_ns(&self) -> Option<u64> {
        self.deadlines.peek().map(|(_, due)| due)
    }

    pub fn get(&self, pid: u32) -> Option<AgentView> {
        match self.index.probe(pid, &self.slots) {
            Probe::Found { slot, .. } => self
                .slots
                .get(slot as usize)
                .filter(|s| s.has(F_USED) && s.pid == pid)
                .map(Slot::view),
            _ => None,
        }
    }

    /// All tracked pids (slot order). O(capacity).
    pub fn iter(&self) -> impl Iterator<Item = AgentView> + '_ {
        self.slots.iter().filter(|s| s.has(F_USED)).map(Slot::view)
    }

    /// Remove `pid` (docs/observer.md#release KernelAttested generation mismatch): no stall,
    /// `pid_recycle++`, pid goes to the removed list. False if not tracked.
    pub fn retire(&mut self, pid: u32) -> bool {
        match self.index.probe(pid, &self.slots) {
            Probe::Found { slot, .. }
                if self
                    .slots
                    .get(slot as usize)
                    .is_some_and(|s| s.has(F_USED) && s.pid == pid) =>
            {
                self.release(slot);
                bump(&mut self.counters.pid_recycle);
                true
            }
            _ => false,
        }
    }

    /// Append and clear the pids removed (evicted / retired) since the last call.
    pub fn take_removed(&mut self, out: &mut Vec<u32>) {
        out.append(&mut self.removed);
    }

    /// Bytes allocated per configured slot: slot + pid index + deadline +
    /// free stack + removed list, divided by capacity (rounded up).
    pub fn bytes_per_agent(&self) -> usize {
        let cap = self.cfg.capacity;
        let total = core::mem::size_of::<Slot>() * self.slots.capacity()
            + core::mem::size_of::<IndexLine>() * self.index.lines.capacity()
            + DeadlineList::BYTES_PER_SLOT * cap
            + core::mem::size_of::<u32>() * (self.free.capacity() + self.removed.capacity());
        total.div_ceil(cap)
    }

    /// Breakdown for reports: (slot, pid-index entry, deadline link) bytes.
    #[doc(hidden)]
    pub fn layout_sizes() -> (usize, usize, usize) {
        (
            core::mem::size_of::<Slot>(),
            core::mem::size_of::<IndexEntry>(),
            DeadlineList::BYTES_PER_SLOT,
        )
    }

    /// Hint the CPU to load the pid-index line for `pid`; no effect on
    /// state. When a batch of frames is drained (`recvmmsg`), calling this for
    /// every frame before recording them overlaps the index cache misses
    /// instead of serialising them (matters from ~10^4 tracked agents).
    #[inline]
    pub fn prefetch(&self, pid: u32) {
        let i = self.index.home(pid);
        #[cfg(target_arch = "x86_64")]
        {
            let p = self.index.lines[i..].as_ptr().cast::<i8>();
            // SAFETY: a prefetch hint on an in-bounds pointer; SSE is part
            // of the x86_64 baseline. Never faults, reads no data.
            #[allow(unused_unsafe)]
            unsafe {
                core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(p)
            };
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = i;
        }
    }

    /// Check every internal invariant (tests): O(capacity).
    #[doc(hidden)]
    pub fn check_invariants(&self) -> Result<(), String> {
        let used = self.slots.iter().filter(|s| s.has(F_USED)).count();
        if used != self.len || self.len + self.free.len() != self.slots.len() {
            return Err(format!(
                "len {} used {} free {}",
                self.len,
                used,
                self.free.len()
            ));
        }
        let latched = self.slots.iter().filter(|s| s.has(F_STALLED)).count();
        if latched != self.latched {
            return Err(format!("latched {} counted {}", latched, self.latched));
        }
        for (i, s) in self.slots.iter().enumerate() {
            let armed = self.deadlines.due(i as u32);
            if !s.has(F_USED) {
                if armed.is_some() {
                    return Err(format!("free slot {i} armed"));
                }
                continue;
            }
            match (s.has(F_STALLED), armed) {
                (true, Some(_)) => return Err(format!("latched slot {i} armed")),
                (false, None) => return Err(format!("live slot {i} unarmed")),
                // Blind time only ever pushes a deadline later.
                (false, Some(d)) if d < self.due_of(s.last_ns) => {
                    return Err(format!("slot {i} due {d} < last_ns + T"))
                }
                _ => {}
            }
            match self.index.probe(s.pid, &self.slots) {
                Probe::Found { slot, .. } if slot as usize == i => {}
                _ => return Err(format!("pid {} not indexed to slot {i}", s.pid)),
            }
        }
        let indexed = self.index.occupied();
        if indexed != self.len {
            return Err(format!("index holds {indexed}, len {}", self.len));
        }
        let want = self.index.expected_overflow(&self.slots)?;
        for (i, (l, w)) in self.index.lines.iter().zip(want).enumerate() {
            if l.overflow != w {
                return Err(format!("index line {i} overflow {} != {w}", l.overflow));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn index_lines_and_slots_are_one_cache_line_each() {
        assert_eq!(core::mem::size_of::<IndexLine>(), 64);
        assert_eq!(core::mem::align_of::<IndexLine>(), 64);
        assert_eq!(core::mem::size_of::<Slot>(), 64);
        assert_eq!(core::mem::align_of::<Slot>(), 64);
        let e = IndexEntry::new(0xABCD_E123, 77);
        assert_eq!(e.slot(), 77);
        assert!(e.tag_matches(0xABC0_0000 | 0x5_5555));
        assert!(!e.tag_matches(0xABB0_0000));
        assert_eq!(IndexEntry::EMPTY.slot(), IDX_EMPTY);
    }

    /// The vector compare agrees with entry-by-entry compares, and never
    /// reports the overflow word as an entry.
    #[test]
    fn tag_matches_marks_exactly_the_matching_entries() {
        let hash = 0x1230_0000;
        let mut line = IndexLine::EMPTY;
        for pos in [0, 3, 7, 14] {
            line.entries[pos] = IndexEntry::new(hash, pos as u32);
        }
        line.entries[5] = IndexEntry::new(0x1240_0000, 5);
        line.overflow = hash; // same bits as a matching entry
        assert_eq!(line.tag_matches(hash), 1 | 1 << 3 | 1 << 7 | 1 << 14);
        for probe in [0u32, hash, 0x1240_0000, u32::MAX, 0xFFF0_0000] {
            let want = line
                .entries
                .iter()
                .enumerate()
                .filter(|(_, e)| e.tag_matches(probe))
                .fold(0u32, |m, (i, _)| m | 1 << i);
            assert_eq!(line.tag_matches(probe), want, "hash {probe:#x}");
        }
    }

    #[test]
    fn consecutive_pids_share_a_home_line() {
        let t = tracker(100_000);
        for block in [0u32, 12, 500_000, (u32::MAX >> 3)] {
            let first = block << 3;
            let home = t.index.home(first);
            assert!((0..8).all(|i| t.index.home(first + i) == home));
        }
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
}
