//! Stall verdicts (`docs/verdicts.md`): *why* a tracked agent stopped
//! beating, decided from what the observer can prove — the kernel's word on
//! the process (pidfd readiness, `/proc` start time and state) and the cause
//! the agent announced in its last terminal frame.
//!
//! The causes a terminal frame announces are [`crate::cause`]'s (shared with
//! the agent side, which builds everywhere).

use super::procfs;
use super::tracker::BeatOrigin;

pub use crate::cause::{signal_name, signal_payload, TerminalCause, PAYLOAD_CLEAN_EXIT};

/// Why an agent went silent. The order is the Python `Verdict` order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Verdict {
    /// The kernel-attested process is alive and silent: the case varta is for.
    Hung = 0,
    /// The process is gone after announcing a clean exit (or the agent
    /// signed off and its process lives on without beating).
    Exited = 1,
    /// The process is gone (or dying) after a crash-hook terminal frame.
    Crashed = 2,
    /// The process is gone without a terminal frame (SIGKILL, OOM kill).
    Vanished = 3,
    /// No kernel attestation (network, socket-mode-only): silence only.
    Unknown = 4,
}

impl Verdict {
    pub const ALL: [Verdict; 5] = [
        Verdict::Hung,
        Verdict::Exited,
        Verdict::Crashed,
        Verdict::Vanished,
        Verdict::Unknown,
    ];

    /// Lower-case name (log lines, TSV, metric labels, `--recovery-on`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Verdict::Hung => "hung",
            Verdict::Exited => "exited",
            Verdict::Crashed => "crashed",
            Verdict::Vanished => "vanished",
            Verdict::Unknown => "unknown",
        }
    }

    pub const fn from_u8(v: u8) -> Option<Verdict> {
        match v {
            0 => Some(Verdict::Hung),
            1 => Some(Verdict::Exited),
            2 => Some(Verdict::Crashed),
            3 => Some(Verdict::Vanished),
            4 => Some(Verdict::Unknown),
            _ => None,
        }
    }

    pub fn from_name(name: &str) -> Option<Verdict> {
        Verdict::ALL.into_iter().find(|v| v.as_str() == name)
    }

    /// The process is known to be gone: its slot is retired after the verdict.
    pub const fn process_gone(self) -> bool {
        matches!(self, Verdict::Exited | Verdict::Crashed | Verdict::Vanished)
    }
}

/// The verdict for a process known to be gone, from its last frame.
pub const fn gone_verdict(cause: Option<TerminalCause>) -> Verdict {
    match cause {
        None => Verdict::Vanished,
        Some(c) if c.is_orderly() => Verdict::Exited,
        Some(_) => Verdict::Crashed,
    }
}

/// The verdict for a process still alive at the threshold, from its last frame.
pub const fn alive_verdict(cause: Option<TerminalCause>) -> Verdict {
    match cause {
        None => Verdict::Hung,
        // Signed off, and the process lives on without beating: not a hang.
        Some(c) if c.is_orderly() => Verdict::Exited,
        // Dying after its crash hook fired (a core dump, a wedged handler).
        Some(_) => Verdict::Crashed,
    }
}

/// What the kernel says of a pinned process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    Alive,
    /// Exited (zombie or reaped), or its pid now belongs to another process.
    Gone,
    /// Nothing to ask (no attested identity).
    Unknown,
}

/// `/proc` liveness of the process `pid` started at `generation`.
pub fn proc_liveness(pid: u32, generation: Option<u64>) -> Liveness {
    let Some(generation) = generation else {
        return Liveness::Unknown;
    };
    match procfs::stat_state(pid) {
        Some((state, start)) if start == generation && !matches!(state, b'Z' | b'X' | b'x') => {
            Liveness::Alive
        }
        _ => Liveness::Gone,
    }
}

/// The verdict at the threshold for a slot of `origin` whose last frame
/// announced `cause`, given what the kernel says (`liveness`).
pub fn judge(origin: BeatOrigin, cause: Option<TerminalCause>, liveness: Liveness) -> Verdict {
    match (origin, liveness) {
        (BeatOrigin::KernelAttested, Liveness::Gone) => gone_verdict(cause),
        (BeatOrigin::KernelAttested, Liveness::Alive) => alive_verdict(cause),
        // Not attested (or no identity to check): only an announcement can
        // say more than "silent".
        _ => match cause {
            None => Verdict::Unknown,
            Some(c) => gone_verdict(Some(c)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_round_trip_through_the_payload() {
        for c in [
            TerminalCause::Crash,
            TerminalCause::CleanExit,
            TerminalCause::Signal(15),
            TerminalCause::Signal(11),
        ] {
            assert_eq!(TerminalCause::from_payload(c.payload()), c);
        }
        assert_eq!(&PAYLOAD_CLEAN_EXIT.to_le_bytes(), b"EXIT");
        assert_eq!(&signal_payload(15).to_le_bytes()[..3], b"SIG");
        // Unknown payloads and a signal tag without a number are crashes.
        assert_eq!(TerminalCause::from_payload(7), TerminalCause::Crash);
        assert_eq!(
            TerminalCause::from_payload(u32::from_le_bytes(*b"SIG\0")),
            TerminalCause::Crash
        );
    }

    #[test]
    fn verdicts_follow_the_table() {
        use BeatOrigin::*;
        use Liveness::*;
        let term = Some(TerminalCause::Signal(libc::SIGTERM as u8));
        let segv = Some(TerminalCause::Signal(libc::SIGSEGV as u8));
        let clean = Some(TerminalCause::CleanExit);
        let crash = Some(TerminalCause::Crash);
        assert_eq!(judge(KernelAttested, None, Alive), Verdict::Hung);
        assert_eq!(judge(KernelAttested, None, Gone), Verdict::Vanished);
        assert_eq!(judge(KernelAttested, clean, Gone), Verdict::Exited);
        assert_eq!(judge(KernelAttested, clean, Alive), Verdict::Exited);
        assert_eq!(judge(KernelAttested, term, Gone), Verdict::Exited);
        assert_eq!(judge(KernelAttested, crash, Gone), Verdict::Crashed);
        assert_eq!(judge(KernelAttested, crash, Alive), Verdict::Crashed);
        assert_eq!(judge(KernelAttested, segv, Gone), Verdict::Crashed);
        assert_eq!(judge(NetworkUnverified, None, Unknown), Verdict::Unknown);
        assert_eq!(judge(SocketModeOnly, None, Unknown), Verdict::Unknown);
        assert_eq!(
            judge(OperatorAttestedTransport, clean, Unknown),
            Verdict::Exited
        );
        assert_eq!(
            judge(OperatorAttestedTransport, crash, Unknown),
            Verdict::Crashed
        );
        for v in Verdict::ALL {
            assert_eq!(Verdict::from_name(v.as_str()), Some(v));
            assert_eq!(Verdict::from_u8(v as u8), Some(v));
        }
    }

    #[test]
    fn own_process_is_alive_and_a_wrong_generation_is_gone() {
        let me = std::process::id();
        let gen = procfs::start_time(me);
        assert!(gen.is_some());
        assert_eq!(proc_liveness(me, gen), Liveness::Alive);
        assert_eq!(proc_liveness(me, gen.map(|g| g + 1)), Liveness::Gone);
        assert_eq!(proc_liveness(me, None), Liveness::Unknown);
    }
}
