//! Terminal causes (`docs/verdicts.md#terminal-causes-on-the-wire`): what a
//! terminal frame's payload says about the agent's end. Shared by the agent
//! side (which sends them, on every platform) and the observer (which turns
//! them into verdicts).
//!
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
