//! Observer events (`docs/observer.md#events`). Plain values; the binding turns them
//! into Python objects and the daemon exports them.

use super::tracker::{BeatOrigin, StallInfo};
use crate::frame::{DecodeError, Status};
use std::borrow::Cow;

/// One thing `Observer::poll` has to say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A frame passed every gate and the tracker accepted it (only when the
    /// observer was built with `emit_beats`).
    Beat {
        pid: u32,
        status: Status,
        payload: u32,
        nonce: u64,
        origin: BeatOrigin,
        pid_ns_inode: Option<u64>,
        observer_ns: u64,
    },
    /// A tracked pid fell silent for the threshold (once per silence run),
    /// or its process ended (reported at once); `StallInfo::verdict` says
    /// which (`docs/verdicts.md`).
    ///
    /// Boxed: a stall's identity strings make `StallInfo` ~270 bytes, and
    /// every event (a beat: ~50) would be that size in the event queue.
    Stall(Box<StallInfo>),
    /// The observer itself could not look for `duration_ns` from
    /// `started_ns` (its process stopped, the host stalled): every armed
    /// deadline was pushed back by that much.
    Blind {
        started_ns: u64,
        duration_ns: u64,
        observer_ns: u64,
    },
    /// A 32-byte datagram failed VLP decoding.
    Decode {
        error: DecodeError,
        observer_ns: u64,
    },
    /// The kernel-attested sender pid differs from the frame's pid.
    AuthFailure { claimed_pid: u32, observer_ns: u64 },
    /// The beat's origin is weaker than the one pinned on the pid's slot.
    OriginConflict {
        claimed_pid: u32,
        observed_origin: BeatOrigin,
        slot_origin: BeatOrigin,
        observer_ns: u64,
    },
    /// Pid-namespace refusal: at the ingress gate `observer_ns_inode` is our
    /// own namespace; from the tracker's first-namespace-wins rule it is the
    /// namespace pinned on the slot.
    NamespaceConflict {
        claimed_pid: u32,
        observed_ns_inode: Option<u64>,
        observer_ns_inode: Option<u64>,
        observer_ns: u64,
    },
    /// A receive error, a missing credential or a foreign uid.
    Io {
        error: Cow<'static, str>,
        errno: Option<i32>,
        observer_ns: u64,
    },
    /// A datagram's control data was truncated (`MSG_CTRUNC`).
    CtrlTruncated {
        error: Cow<'static, str>,
        observer_ns: u64,
    },
}

impl Event {
    /// Observer time at which the event was produced.
    pub fn observer_ns(&self) -> u64 {
        match self {
            Event::Beat { observer_ns, .. }
            | Event::Decode { observer_ns, .. }
            | Event::AuthFailure { observer_ns, .. }
            | Event::OriginConflict { observer_ns, .. }
            | Event::NamespaceConflict { observer_ns, .. }
            | Event::Io { observer_ns, .. }
            | Event::CtrlTruncated { observer_ns, .. }
            | Event::Blind { observer_ns, .. } => *observer_ns,
            Event::Stall(s) => s.observer_ns,
        }
    }

    /// Short kind name (`"Beat"`, `"Stall"`, …).
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Beat { .. } => "Beat",
            Event::Stall(_) => "Stall",
            Event::Decode { .. } => "Decode",
            Event::AuthFailure { .. } => "AuthFailure",
            Event::OriginConflict { .. } => "OriginConflict",
            Event::NamespaceConflict { .. } => "NamespaceConflict",
            Event::Io { .. } => "Io",
            Event::CtrlTruncated { .. } => "CtrlTruncated",
            Event::Blind { .. } => "Blind",
        }
    }
}

// The event queue holds up to 65,536 of these and every beat moves one:
// keep the enum at a beat's size (a stall is boxed).
const _: () = assert!(std::mem::size_of::<Event>() <= 48);
