//! The secure receive path (`docs/protocol.md#secure-receiver`): length dispatch, constant-count
//! trial opens, master-key path, base-frame decode, replay check, counters.
//!
//! The observer's secure UDP listener does `recv_from` into a buffer of at
//! least [`RECV_BUF_LEN`] bytes and hands `&buf[..n]` to
//! [`SecureReceiver::open`] with its clock. `open` allocates nothing.

use core::fmt;

use chacha20poly1305::ChaCha20Poly1305;

use super::kdf::derive_agent_key;
use super::keys::{Key, MAX_SHARED_KEYS};
use super::replay::{ReplayTable, ReplayVerdict, SenderOrigin, MAX_SENDER_STATES};
use super::seal::{
    cipher, master_body, master_wire_pid, open_master, open_shared_with, IV_RANDOM_LEN,
    MASTER_WIRE_LEN, MAX_WIRE_LEN, PID_LEN, SHARED_WIRE_LEN,
};
use crate::frame::{DecodeError, Frame, FRAME_LEN};

/// Receive buffer size: longer than any secure frame, so an over-long
/// datagram shows up as such instead of being silently cut to 64 bytes.
pub const RECV_BUF_LEN: usize = MAX_WIRE_LEN + 1;

/// Receiver setup. `shared_keys[0]` is the primary key, the rest are
/// accepted (rotation) keys, tried in order.
pub struct ReceiverConfig {
    pub shared_keys: Vec<Key>,
    pub master_key: Option<Key>,
    /// `session_restart_gap` (docs/protocol.md#replay-protection) = the observer's threshold, in ns.
    pub session_restart_gap_ns: u64,
}

/// Invalid receiver setup (a startup error).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReceiverError {
    /// More than [`MAX_SHARED_KEYS`] shared keys.
    TooManySharedKeys { found: usize },
    /// Neither a shared key nor a master key.
    NoKeys,
}

impl fmt::Display for ReceiverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReceiverError::TooManySharedKeys { found } => write!(
                f,
                "too many shared keys: {found} given, at most {MAX_SHARED_KEYS} (primary + accepted)"
            ),
            ReceiverError::NoKeys => f.write_str("secure receiver needs a shared key or a master key"),
        }
    }
}

impl std::error::Error for ReceiverError {}

/// Why a datagram produced no frame (besides a decode error).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// Length neither 60 nor 64 (`truncated_datagrams`).
    Truncated,
    /// No key opened it (`frame_decrypt_failures`); includes a master frame
    /// whose inner pid differs from its wire pid.
    DecryptFailed,
    /// Known sender, stale counter / prefix / nonce (`secure_replay_refused`).
    Replay,
    /// Unknown sender and the table is full (`sender_state_full`).
    SenderTableFull,
}

impl RejectReason {
    /// Name of the counter this rejection increments (docs/observer.md#metric-families,
    /// without `varta_` and `_total`).
    pub const fn counter_name(self) -> &'static str {
        match self {
            RejectReason::Truncated => "truncated_datagrams",
            RejectReason::DecryptFailed => "frame_decrypt_failures",
            RejectReason::Replay => "secure_replay_refused",
            RejectReason::SenderTableFull => "sender_state_full",
        }
    }
}

/// Result of one datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opened {
    /// Authenticated, decoded and fresh. Trust level is `NetworkUnverified`
    /// (or operator-attested); the observer decides.
    Accepted(Frame),
    /// Opened but not a valid frame (docs/protocol.md#decoding-order): emit a Decode event and count
    /// `decode_errors{kind}`. No replay state was allocated.
    Decode(DecodeError),
    /// Dropped without an event; the matching counter was incremented.
    Rejected(RejectReason),
}

/// The receiver's counters (docs/observer.md#metric-families names without `varta_`/`_total`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SecureCounters {
    pub frame_decrypt_failures: u64,
    pub secure_replay_refused: u64,
    pub sender_state_full: u64,
    /// AEAD trials that actually ran.
    pub secure_aead_attempts: u64,
    pub truncated_datagrams: u64,
}

/// Keys, replay table and counters of one secure listener. See the module docs.
pub struct SecureReceiver {
    shared: Vec<ChaCha20Poly1305>,
    master: Option<Key>,
    replay: ReplayTable,
    counters: SecureCounters,
    /// Which key opened the last accepted frame ([`SecureReceiver::opened_with`]).
    opened_with: u8,
}

/// [`SecureReceiver::opened_with`] of a frame the master key's derived agent key opened.
pub const OPENED_WITH_MASTER: u8 = u8::MAX;

impl fmt::Debug for SecureReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecureReceiver")
            .field("shared_keys", &self.shared.len())
            .field("master_key", &self.master.is_some())
            .field("senders", &self.replay.len())
            .field("counters", &self.counters)
            .finish()
    }
}

impl SecureReceiver {
    pub fn new(cfg: ReceiverConfig) -> Result<SecureReceiver, ReceiverError> {
        let n = cfg.shared_keys.len();
        if n > MAX_SHARED_KEYS {
            return Err(ReceiverError::TooManySharedKeys { found: n });
        }
        if n == 0 && cfg.master_key.is_none() {
            return Err(ReceiverError::NoKeys);
        }
        Ok(SecureReceiver {
            shared: cfg.shared_keys.iter().map(cipher).collect(),
            master: cfg.master_key,
            replay: ReplayTable::new(MAX_SENDER_STATES, cfg.session_restart_gap_ns),
            counters: SecureCounters::default(),
            opened_with: 0,
        })
    }

    pub fn counters(&self) -> SecureCounters {
        self.counters
    }

    pub fn shared_key_count(&self) -> usize {
        self.shared.len()
    }

    pub fn has_master_key(&self) -> bool {
        self.master.is_some()
    }

    /// Sender states currently held.
    pub fn senders(&self) -> usize {
        self.replay.len()
    }

    pub fn replay_table(&self) -> &ReplayTable {
        &self.replay
    }

    /// Periodic eviction, for an idle listener (`open` also sweeps when due).
    pub fn maybe_sweep(&mut self, now_ns: u64) -> usize {
        self.replay.maybe_sweep(now_ns)
    }

    /// Every shared key over `body` (the 60-byte shared layout), always all
    /// of them; the first success in key order wins.
    fn trial_shared(&mut self, body: &[u8; SHARED_WIRE_LEN], pt: &mut [u8; FRAME_LEN]) -> bool {
        let mut found = false;
        let mut tmp = [0u8; FRAME_LEN];
        for (i, c) in self.shared.iter().enumerate() {
            // Evaluate the open first: no short-circuit past a success.
            if open_shared_with(c, body, &mut tmp) && !found {
                *pt = tmp;
                found = true;
                self.opened_with = i as u8;
            }
        }
        self.counters.secure_aead_attempts = self
            .counters
            .secure_aead_attempts
            .saturating_add(self.shared.len() as u64);
        found
    }

    fn reject(&mut self, why: RejectReason) -> Opened {
        let c = &mut self.counters;
        let slot = match why {
            RejectReason::Truncated => &mut c.truncated_datagrams,
            RejectReason::DecryptFailed => &mut c.frame_decrypt_failures,
            RejectReason::Replay => &mut c.secure_replay_refused,
            RejectReason::SenderTableFull => &mut c.sender_state_full,
        };
        *slot = slot.saturating_add(1);
        Opened::Rejected(why)
    }

    /// Which key opened the last accepted frame: the index of the shared
    /// key, or [`OPENED_WITH_MASTER`].
    pub fn opened_with(&self) -> u8 {
        self.opened_with
    }

    /// Process one datagram (`&buf[..n]` from `recv_from`) at observer time
    /// `now_ns`, its sender unknown (one sender per pid).
    pub fn open(&mut self, datagram: &[u8], now_ns: u64) -> Opened {
        self.open_from(datagram, [0; 16], now_ns)
    }

    /// [`SecureReceiver::open`] for a datagram from address `from` (IPv6,
    /// or IPv4 mapped into it): replay state is kept per (address, key,
    /// pid), docs/observer.md#agent-identity.
    pub fn open_from(&mut self, datagram: &[u8], from: [u8; 16], now_ns: u64) -> Opened {
        let mut pt = [0u8; FRAME_LEN];
        let (opened, nonce_at) = match datagram.len() {
            SHARED_WIRE_LEN => {
                let body: &[u8; SHARED_WIRE_LEN] = datagram.try_into().expect("len checked");
                (self.trial_shared(body, &mut pt), 0)
            }
            MASTER_WIRE_LEN => {
                let wire: &[u8; MASTER_WIRE_LEN] = datagram.try_into().expect("len checked");
                let mut ok = self.trial_shared(master_body(wire), &mut pt);
                if let Some(master) = &self.master {
                    let agent_key = derive_agent_key(master, master_wire_pid(wire));
                    let mut tmp = [0u8; FRAME_LEN];
                    if open_master(&agent_key, wire, &mut tmp) && !ok {
                        pt = tmp;
                        ok = true;
                        self.opened_with = OPENED_WITH_MASTER;
                    }
                    self.counters.secure_aead_attempts =
                        self.counters.secure_aead_attempts.saturating_add(1);
                }
                (ok, PID_LEN)
            }
            _ => return self.reject(RejectReason::Truncated),
        };
        if !opened {
            return self.reject(RejectReason::DecryptFailed);
        }
        let frame = match Frame::decode(&pt) {
            Ok(f) => f,
            Err(e) => return Opened::Decode(e),
        };
        let iv: &[u8; IV_RANDOM_LEN] = datagram[nonce_at..nonce_at + IV_RANDOM_LEN]
            .try_into()
            .expect("8 bytes");
        let c = nonce_at + IV_RANDOM_LEN;
        let counter = u32::from_le_bytes([
            datagram[c],
            datagram[c + 1],
            datagram[c + 2],
            datagram[c + 3],
        ]);
        let origin = SenderOrigin {
            addr: from,
            key: self.opened_with,
        };
        match self.replay.check_from(origin, iv, counter, &frame, now_ns) {
            ReplayVerdict::Replay => self.reject(RejectReason::Replay),
            ReplayVerdict::Full => self.reject(RejectReason::SenderTableFull),
            ReplayVerdict::Accepted | ReplayVerdict::NewSender | ReplayVerdict::SessionRestart => {
                Opened::Accepted(frame)
            }
        }
    }
}
