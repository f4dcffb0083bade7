//! Stall verdicts (`docs/verdicts.md`): *why* a tracked agent stopped
//! beating, decided from what the observer can prove — the kernel's word on
//! the process (pidfd readiness, `/proc` start time and state) and the cause
//! the agent announced in its last terminal frame.
//!
//! # Terminal causes on the wire
//! A terminal frame is `Critical` + `NONCE_TERMINAL`; upstream always sends
//! payload 0 and its observers never interpret the payload (it is opaque to
//! the protocol). Our SDK puts the cause there, so upstream observers still
//! see an ordinary terminal frame:
//!
//! | payload (LE bytes) | cause | verdict once the process is gone |
//! |---|---|---|
//! | `0` (upstream's crash hook, ours for exceptions) | crash | `crashed` |
//! | `"EXIT"` = `0x5449_5845` | clean exit (`close(final=True)`, `send_terminal()`) | `exited` |
//! | `"SIG"` + signal number in the top byte | the crash hook saw that signal | `exited` for SIGTERM / SIGINT / SIGHUP (asked to stop), else `crashed` |
//! | anything else | unknown cause | `crashed` |

use super::procfs;
use super::tracker::BeatOrigin;

/// Terminal payload of an announced clean exit: the bytes `EXIT` on the wire.
pub const PAYLOAD_CLEAN_EXIT: u32 = u32::from_le_bytes(*b"EXIT");
/// Low three bytes of a signal terminal payload (`SIG`); the top byte is the
/// signal number.
const SIGNAL_TAG: u32 = u32::from_le_bytes(*b"SIG\0");

/// The terminal payload announcing death by (a hook for) signal `signo`.
pub const fn signal_payload(signo: u8) -> u32 {
    SIGNAL_TAG | (signo as u32) << 24
}

/// What an agent's terminal frame says about its end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TerminalCause {
    /// Payload 0, or a payload we do not know: a crash hook fired.
    Crash,
    /// An announced clean exit.
    CleanExit,
    /// The crash hook ran for this signal.
    Signal(u8),
}

impl TerminalCause {
    pub const fn from_payload(payload: u32) -> TerminalCause {
        if payload == PAYLOAD_CLEAN_EXIT {
            TerminalCause::CleanExit
        } else if payload & 0x00FF_FFFF == SIGNAL_TAG && payload >> 24 != 0 {
            TerminalCause::Signal((payload >> 24) as u8)
        } else {
            TerminalCause::Crash
        }
    }

    pub const fn payload(self) -> u32 {
        match self {
            TerminalCause::Crash => 0,
            TerminalCause::CleanExit => PAYLOAD_CLEAN_EXIT,
            TerminalCause::Signal(s) => signal_payload(s),
        }
    }

    /// `"clean_exit"`, `"crash"`, or the signal's name (`"SIGTERM"`).
    pub fn name(self) -> String {
        match self {
            TerminalCause::CleanExit => "clean_exit".to_owned(),
            TerminalCause::Crash => "crash".to_owned(),
            TerminalCause::Signal(n) => signal_name(n),
        }
    }

    /// The agent meant to stop: a clean exit, or a polite stop signal
    /// (SIGTERM, SIGINT, SIGHUP: what a deploy or an operator sends).
    pub const fn is_orderly(self) -> bool {
        match self {
            TerminalCause::CleanExit => true,
            TerminalCause::Signal(s) => {
                s as i32 == libc::SIGTERM || s as i32 == libc::SIGINT || s as i32 == libc::SIGHUP
            }
            TerminalCause::Crash => false,
        }
    }
}

/// `SIGTERM`-style name of the signals a crash hook reports, else `signal N`.
pub fn signal_name(n: u8) -> String {
    let name = match i32::from(n) {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGTERM => "SIGTERM",
        _ => return format!("signal {n}"),
    };
    name.to_owned()
}

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
            TerminalCause::from_payload(SIGNAL_TAG),
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
