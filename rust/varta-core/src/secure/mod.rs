//! The secure transport's crypto layer (`docs/protocol.md#secure-transport`): keys and key files,
//! HKDF derivations, ChaCha20-Poly1305 seal/open of the 60- and 64-byte
//! frames, the sender-side session state machine and the receiver with its
//! replay protection. No sockets in here: the agent's transport and the
//! observer's UDP listener wrap a socket around these pieces.
//!
//! | module | job |
//! |---|---|
//! | [`keys`] | [`Key`] (32 bytes, zeroized, redacted), hex parsing, secret-file rules, observer key-file variants |
//! | [`kdf`] | HKDF-SHA256 derivations: agent key, IV prefix, panic IV prefix, epoch key |
//! | [`seal`] | wire layouts and the allocation-free seal/open primitives |
//! | [`session`] | [`SecureSession`]: salt, prefix rotation, counter, commit-on-success (sender) |
//! | [`replay`] | [`ReplayTable`]: per-pid replay state in a fixed, preallocated table |
//! | [`receiver`] | [`SecureReceiver`]: the docs/protocol.md#secure-receiver receive path with counters |
//!
//! The cryptography is the RustCrypto crates (`chacha20poly1305`, `hkdf`,
//! `sha2`); nothing here implements a primitive.
//!
//! # Plugging it in
//!
//! Agent (`transport::Transport` over a connected UDP socket):
//! `send(frame)` = `session.next_wire(frame, &mut buf)` then
//! `sock.send(&buf[..n])`; `expected_send_len()` = `session.wire_len()`;
//! `commit_sent()` = `session.commit()`; `prepare_reconnect()` = a new socket
//! plus `session.reseeded(getpid())`, swapped in by `commit_reconnect`.
//! [`SessionError::PrefixSpaceExhausted`] asks for that reconnect.
//!
//! Observer (secure UDP listener): `recv_from` into a
//! [`RECV_BUF_LEN`]-byte buffer, then `receiver.open(&buf[..n], now_ns)`:
//! `Accepted(frame)` → the tracker (origin `NetworkUnverified` or
//! operator-attested), `Decode(e)` → Decode event + `decode_errors{kind}`,
//! `Rejected(_)` → nothing (already counted in [`SecureReceiver::counters`]).
//! Keys come from [`keys::load_shared_keys`] and [`keys::load_master_key_file`].
//!
//! Crash hook: [`seal_panic_frame`] with a fork salt from [`os_entropy`] read
//! at install time (allocation- and entropy-free when it fires).

pub mod kdf;
pub mod keys;
pub mod receiver;
pub mod replay;
pub mod seal;
pub mod session;

pub use kdf::{derive_agent_key, derive_epoch_key, derive_iv_prefix, derive_panic_iv_prefix};
pub use keys::{Key, KeyError, KeyFileError, KEY_LEN, MAX_SHARED_KEYS};
pub use receiver::{
    Opened, ReceiverConfig, ReceiverError, RejectReason, SecureCounters, SecureReceiver,
    OPENED_WITH_MASTER, RECV_BUF_LEN,
};
pub use replay::{
    ReplayTable, ReplayVerdict, RetiredFilter, SenderOrigin, EVICTION_INTERVAL_NS, EVICTION_TTL_NS,
    MAX_SENDER_STATES, RETIRED_FILTER_BITS_PER_STATE, RETIRED_FILTER_HASHES,
};
pub use seal::{
    open_master, open_shared, seal_master, seal_panic_frame, seal_shared, IV_RANDOM_LEN,
    MASTER_WIRE_LEN, MAX_WIRE_LEN, SALT_LEN, SHARED_WIRE_LEN, TAG_LEN,
};
pub use session::{SecureSession, SessionError, SessionMode};
/// Re-exported so bindings can wipe temporary copies of key material.
pub use zeroize;

/// Fill `buf` from OS entropy (`getrandom(2)` with flags 0 on Linux,
/// `getentropy(3)` on macOS/BSD, `/dev/urandom` fallback — the `getrandom`
/// crate's choice). Used for session salts, fork salts and `keygen`; never on
/// a beat path.
pub fn os_entropy(buf: &mut [u8]) -> std::io::Result<()> {
    getrandom::getrandom(buf).map_err(|e| match e.raw_os_error() {
        Some(errno) => std::io::Error::from_raw_os_error(errno),
        None => std::io::Error::other(format!("OS entropy unavailable: {e}")),
    })
}
