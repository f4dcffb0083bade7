//! One tracked pid's slot: 64 bytes, one cache line, optional fields as a
//! value plus a flag bit.

use super::{AgentView, BeatOrigin, StallInfo};
use crate::frame::{Frame, Status, NONCE_TERMINAL};
use crate::observer::pid_index::SlotPid;
use crate::observer::verdict::{TerminalCause, Verdict};

pub(super) const F_USED: u8 = 1 << 0;
pub(super) const F_HAS_REGULAR: u8 = 1 << 1;
pub(super) const F_HAS_TERMINAL: u8 = 1 << 2;
/// The last accepted frame was a terminal (last observed nonce = sentinel).
pub(super) const F_LAST_TERMINAL: u8 = 1 << 3;
pub(super) const F_STALLED: u8 = 1 << 4;
pub(super) const F_HAS_NS: u8 = 1 << 5;
pub(super) const F_HAS_GEN: u8 = 1 << 6;

/// One tracked pid: 64 bytes, aligned so it is exactly one cache line
/// (unaligned, most slots straddled two). Optional fields are a value plus a
/// flag bit.
#[derive(Clone, Copy, Debug)]
#[repr(align(64))]
pub(super) struct Slot {
    pub(super) last_regular: u64,
    pub(super) last_terminal_ts: u64,
    pub(super) last_ns: u64,
    pub(super) ns_inode: u64,
    pub(super) generation: u64,
    /// Accepted beats (low [`BEAT_BITS`] bits, saturating) and the origin
    /// id of the agent key (high 16 bits; 0 = the Unix socket,
    /// docs/observer.md#agent-identity). Packed so the slot stays one line.
    pub(super) beats_oid: u64,
    pub(super) pid: u32,
    pub(super) stalls: u32,
    /// Payload of the last accepted terminal frame (its [`TerminalCause`]).
    pub(super) terminal_payload: u32,
    pub(super) status: Status,
    pub(super) origin: BeatOrigin,
    pub(super) flags: u8,
    /// [`Verdict`] of the current stall (meaningful while `F_STALLED`).
    pub(super) verdict: u8,
}

pub(super) const EMPTY_SLOT: Slot = Slot {
    last_regular: 0,
    last_terminal_ts: 0,
    last_ns: 0,
    ns_inode: 0,
    generation: 0,
    beats_oid: 0,
    pid: 0,
    stalls: 0,
    terminal_payload: 0,
    status: Status::Ok,
    origin: BeatOrigin::NetworkUnverified,
    flags: 0,
    verdict: 0,
};

/// Bits of [`Slot::beats_oid`] that count beats (2.8 × 10^14: centuries
/// at any beat rate the limiter allows).
pub(super) const BEAT_BITS: u32 = 48;
const BEATS_MAX: u64 = (1 << BEAT_BITS) - 1;

impl Slot {
    /// Accepted beats of this agent.
    #[inline]
    pub(super) fn beats(&self) -> u64 {
        self.beats_oid & BEATS_MAX
    }

    /// The origin id of this agent's key (0 = the Unix socket).
    #[inline]
    pub(super) fn oid(&self) -> u16 {
        (self.beats_oid >> BEAT_BITS) as u16
    }

    /// One more accepted beat (saturating).
    #[inline]
    pub(super) fn add_beat(&mut self) {
        if self.beats() < BEATS_MAX {
            self.beats_oid += 1;
        }
    }

    #[inline]
    pub(super) fn has(&self, f: u8) -> bool {
        self.flags & f != 0
    }

    #[inline]
    pub(super) fn ns(&self) -> Option<u64> {
        self.has(F_HAS_NS).then_some(self.ns_inode)
    }

    #[inline]
    pub(super) fn gen(&self) -> Option<u64> {
        self.has(F_HAS_GEN).then_some(self.generation)
    }

    #[inline]
    pub(super) fn last_observed_nonce(&self) -> u64 {
        if self.has(F_LAST_TERMINAL) {
            NONCE_TERMINAL
        } else {
            self.last_regular
        }
    }

    /// The cause announced by the last frame, if it was a terminal frame.
    #[inline]
    pub(super) fn terminal_cause(&self) -> Option<TerminalCause> {
        self.has(F_LAST_TERMINAL)
            .then(|| TerminalCause::from_payload(self.terminal_payload))
    }

    pub(super) fn stall_info(&self, now: u64) -> StallInfo {
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
            forensics: None,
            forensics_sha256: None,
            peer: None,
            cmdline: None,
            unit: None,
            container: None,
        }
    }

    #[inline]
    pub(super) fn set_ns(&mut self, ns: Option<u64>) {
        if let Some(v) = ns {
            self.ns_inode = v;
            self.flags |= F_HAS_NS;
        }
    }

    #[inline]
    pub(super) fn set_gen(&mut self, gen: Option<u64>) {
        if let Some(v) = gen {
            self.generation = v;
            self.flags |= F_HAS_GEN;
        }
    }

    /// A fresh slot for `frame` under origin id `oid`, carrying over the
    /// per-agent `beats` / `stalls` counts (0 for a new agent). The accepted
    /// beat itself is not counted here.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn fresh(
        oid: u16,
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
            beats_oid: (u64::from(oid) << BEAT_BITS) | beats.min(BEATS_MAX),
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

    pub(super) fn view(&self) -> AgentView {
        AgentView {
            pid: self.pid,
            status: self.status,
            origin: self.origin,
            peer: None,
            beats: self.beats(),
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

impl SlotPid for Slot {
    #[inline]
    fn key(&self) -> u64 {
        (u64::from(self.oid()) << 32) | u64::from(self.pid)
    }
}
