//! The tracker's vocabulary: limits, [`BeatOrigin`], [`EvictionPolicy`],
//! [`TrackerConfig`] and its errors, what a record / expiry / exit returns,
//! and [`AgentView`], the read-only view of one tracked pid.

use crate::frame::Status;
use crate::observer::procfs::Comm;
use std::sync::Arc;

pub use super::peers::{NetPeer, PeerKey, MAX_PEERS};
use crate::observer::verdict::{TerminalCause, Verdict};
use core::fmt;

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
#[derive(Clone, Debug, PartialEq, Eq)]
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
    /// The hang capture's file (`hung` stalls with forensics on,
    /// [`super::super::forensics`]), and its SHA-256 (lowercase hex).
    pub forensics: Option<Arc<str>>,
    pub forensics_sha256: Option<Arc<str>>,
    /// The network sender, `None` for the Unix socket (docs/observer.md#agent-identity).
    pub peer: Option<NetPeer>,
    /// What the OS said about the process, read once (kernel-attested
    /// agents, docs/observer.md#agent-identity): short command line, systemd
    /// unit, container id.
    pub cmdline: Option<Arc<str>>,
    pub unit: Option<Arc<str>>,
    pub container: Option<Arc<str>>,
}

/// An agent as the removed list names it: its pid and, for a network
/// agent, its sender.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AgentRef {
    pub pid: u32,
    pub peer: Option<NetPeer>,
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
#[derive(Clone, Debug, PartialEq, Eq)]
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
    /// The network sender, `None` for the Unix socket (docs/observer.md#agent-identity).
    pub peer: Option<NetPeer>,
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
