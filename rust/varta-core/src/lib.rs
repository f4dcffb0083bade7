//! varta-core: the pure-Rust heart of varta (no Python in here).
//!
//! | module | job |
//! |---|---|
//! | [`crc`], [`frame`] | the 32-byte VLP v0.2 codec |
//! | [`secure`] | ChaCha20-Poly1305 seal/open, HKDF derivations, key files, replay window |
//! | [`agent`], [`transport`] | the sending side: nonce/timestamp/fork rules over UDS, UDP, secure UDP |
//! | [`heartbeat`] | progress-gated heartbeats: a beater thread that beats only while a hot loop makes progress |
//! | [`fork`], [`sync`] | fork detection (epoch, wipe-on-fork incarnation token); the fork-safe mutex around a shared agent |
//! | [`panic`], [`cause`] | crash-terminal frames from hooks and fatal-signal handlers; what a terminal frame's payload announces |
//! | [`observer`] | listeners, tracker, deadline structure, counters (Linux only) |
//! | [`sys`] | the libc socket, `sockaddr_un`, errno and `cvt` helpers transports and listeners share |

pub mod agent;
pub mod cause;
pub mod crc;
pub mod fork;
pub mod frame;
pub mod heartbeat;
// The observer is built on Linux interfaces (SO_PASSCRED/SO_PASSPIDFD,
// recvmmsg, pidfds, /proc); other platforms get the agent side only.
#[cfg(target_os = "linux")]
pub mod observer;
pub mod panic;
pub mod panic_secure;
pub mod secure;
pub mod sync;
pub mod sys;
pub mod terminal;
pub mod transport;
pub mod transport_secure;

pub use crc::crc32c;
pub use frame::{DecodeError, Frame, Status, FRAME_LEN, NONCE_TERMINAL};
