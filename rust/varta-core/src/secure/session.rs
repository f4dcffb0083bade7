//! Sender-side secure session (`docs/protocol.md#session-salt-and-iv-prefix`, `docs/protocol.md#fork-rotation`): session salt, IV
//! prefix rotation and the AEAD counter, with commit-on-success.
//!
//! The agent's secure transport owns one [`SecureSession`] next to its UDP
//! socket. Per beat: [`SecureSession::next_wire`] seals the 32-byte frame
//! under the *candidate* position (computing a prefix rotation speculatively
//! when the counter is exhausted) without changing the session; after the
//! datagram was sent in full the transport calls [`SecureSession::commit`].
//! A failed send commits nothing, so the next attempt reuses the same
//! position (the kernel did not transmit the failed datagram).
//!
//! Reconnect / fork: [`SecureSession::reseeded`] builds a complete new session
//! (fresh salt from OS entropy, prefix index 0, counter 0, master `K_agent`
//! re-derived for the new pid) without touching `self`; the transport swaps
//! it in when its new socket is ready, which keeps reconnect transactional.
//!
//! Steady state allocates nothing and reads no entropy; master mode caches
//! `K_agent` (as a ready cipher) and never runs HKDF per beat.

use core::fmt;
use std::io;

use chacha20poly1305::ChaCha20Poly1305;
use zeroize::Zeroize;

use super::kdf::{derive_agent_key, derive_iv_prefix};
use super::keys::Key;
use super::seal::{
    cipher, seal_master_with, seal_shared_with, IV_RANDOM_LEN, MASTER_WIRE_LEN, MAX_WIRE_LEN,
    SALT_LEN, SHARED_WIRE_LEN,
};
use crate::frame::FRAME_LEN;

/// Which secure frame the session emits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionMode {
    /// 60-byte frames sealed with the shared key.
    Shared,
    /// 64-byte frames sealed with `K_agent = derive_agent_key(M, pid)`.
    Master,
}

enum Keying {
    Shared {
        key: Key,
        cipher: ChaCha20Poly1305,
    },
    Master {
        master: Key,
        pid: u32,
        agent: ChaCha20Poly1305,
    },
}

/// Why no frame could be sealed. Both mean "reconnect first".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionError {
    /// `prefix_index` would overflow (after ~2^64 frames): a new salt is needed.
    PrefixSpaceExhausted,
    /// Master mode: the frame's pid (plaintext bytes 4..8) is not the pid
    /// `K_agent` was derived for (e.g. a forked child that did not reconnect);
    /// the observer would drop the frame.
    PidMismatch { session_pid: u32, frame_pid: u32 },
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionError::PrefixSpaceExhausted => {
                f.write_str("secure session exhausted its IV prefixes; reconnect required")
            }
            SessionError::PidMismatch {
                session_pid,
                frame_pid,
            } => write!(
                f,
                "frame pid {frame_pid} differs from the session's agent pid {session_pid}; reconnect required"
            ),
        }
    }
}

impl std::error::Error for SessionError {}

impl From<SessionError> for io::Error {
    fn from(e: SessionError) -> io::Error {
        io::Error::other(e)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Position {
    prefix_index: u32,
    iv_random: [u8; IV_RANDOM_LEN],
    counter: u32,
}

/// Sender state of one secure connection. See the module docs.
pub struct SecureSession {
    keying: Keying,
    salt: [u8; SALT_LEN],
    /// Next position to use (committed state).
    pos: Position,
    /// Candidate sealed by the last `next_wire`, waiting for `commit`.
    pending: Option<Position>,
}

impl fmt::Debug for SecureSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecureSession")
            .field("mode", &self.mode())
            .field("pid", &self.pid())
            .field("prefix_index", &self.pos.prefix_index)
            .field("counter", &self.pos.counter)
            .finish_non_exhaustive()
    }
}

impl Drop for SecureSession {
    fn drop(&mut self) {
        // Keys and ciphers zeroize themselves; the salt is not secret (its
        // outputs are public IVs) but there is no reason to leave it around.
        self.salt.zeroize();
    }
}

fn fresh_salt() -> io::Result<[u8; SALT_LEN]> {
    let mut salt = [0u8; SALT_LEN];
    super::os_entropy(&mut salt)?;
    Ok(salt)
}

impl SecureSession {
    fn build(keying: Keying, salt: [u8; SALT_LEN]) -> SecureSession {
        SecureSession {
            keying,
            pos: Position {
                prefix_index: 0,
                iv_random: derive_iv_prefix(&salt, 0),
                counter: 0,
            },
            salt,
            pending: None,
        }
    }

    fn shared_keying(key: Key) -> Keying {
        let cipher = cipher(&key);
        Keying::Shared { key, cipher }
    }

    fn master_keying(master: Key, pid: u32) -> Keying {
        let agent = cipher(&derive_agent_key(&master, pid));
        Keying::Master { master, pid, agent }
    }

    /// Shared-key session with a fresh 16-byte salt from OS entropy.
    pub fn new_shared(key: Key) -> io::Result<SecureSession> {
        Ok(SecureSession::build(
            SecureSession::shared_keying(key),
            fresh_salt()?,
        ))
    }

    /// Master-key session for `pid` (normally `getpid()`), fresh salt.
    pub fn new_master(master: Key, pid: u32) -> io::Result<SecureSession> {
        Ok(SecureSession::build(
            SecureSession::master_keying(master, pid),
            fresh_salt()?,
        ))
    }

    /// Shared-key session with a caller-chosen salt (tests, vectors). A salt
    /// must never be used twice with the same key.
    pub fn with_salt_shared(key: Key, salt: [u8; SALT_LEN]) -> SecureSession {
        SecureSession::build(SecureSession::shared_keying(key), salt)
    }

    /// Master-key session with a caller-chosen salt (tests, vectors).
    pub fn with_salt_master(master: Key, pid: u32, salt: [u8; SALT_LEN]) -> SecureSession {
        SecureSession::build(SecureSession::master_keying(master, pid), salt)
    }

    /// A complete replacement session for a reconnect or fork: same key(s),
    /// fresh salt, prefix index 0, counter 0; master mode re-derives `K_agent`
    /// for `pid` (ignored in shared mode). `self` is untouched, so a failure
    /// (no entropy) leaves the old session usable.
    pub fn reseeded(&self, pid: u32) -> io::Result<SecureSession> {
        let salt = fresh_salt()?;
        let keying = match &self.keying {
            Keying::Shared { key, .. } => SecureSession::shared_keying(key.clone()),
            Keying::Master { master, .. } => SecureSession::master_keying(master.clone(), pid),
        };
        Ok(SecureSession::build(keying, salt))
    }

    /// [`SecureSession::reseeded`] and swap it in.
    pub fn reseed(&mut self, pid: u32) -> io::Result<()> {
        *self = self.reseeded(pid)?;
        Ok(())
    }

    pub fn mode(&self) -> SessionMode {
        match self.keying {
            Keying::Shared { .. } => SessionMode::Shared,
            Keying::Master { .. } => SessionMode::Master,
        }
    }

    /// Bytes per datagram: 60 (shared) or 64 (master).
    pub fn wire_len(&self) -> usize {
        match self.keying {
            Keying::Shared { .. } => SHARED_WIRE_LEN,
            Keying::Master { .. } => MASTER_WIRE_LEN,
        }
    }

    /// The pid `K_agent` was derived for (master mode).
    pub fn pid(&self) -> Option<u32> {
        match self.keying {
            Keying::Shared { .. } => None,
            Keying::Master { pid, .. } => Some(pid),
        }
    }

    pub fn salt(&self) -> &[u8; SALT_LEN] {
        &self.salt
    }

    /// Committed prefix index (the next send uses it unless it rotates).
    pub fn prefix_index(&self) -> u32 {
        self.pos.prefix_index
    }

    /// Committed IV prefix.
    pub fn iv_random(&self) -> &[u8; IV_RANDOM_LEN] {
        &self.pos.iv_random
    }

    /// Counter the next send will use (before a possible rotation).
    pub fn counter(&self) -> u32 {
        self.pos.counter
    }

    /// Candidate position for the next send: the committed one, or the next
    /// prefix with counter 0 once the counter reached `u32::MAX` (which is
    /// never sent).
    fn candidate(&self) -> Result<Position, SessionError> {
        if self.pos.counter < u32::MAX {
            return Ok(self.pos);
        }
        let next = self
            .pos
            .prefix_index
            .checked_add(1)
            .ok_or(SessionError::PrefixSpaceExhausted)?;
        Ok(Position {
            prefix_index: next,
            iv_random: derive_iv_prefix(&self.salt, next),
            counter: 0,
        })
    }

    /// Seal `plaintext` (an encoded 32-byte frame) for the next send into
    /// `out[..n]` and return `n` (60 or 64). Nothing is committed; calling it
    /// again before [`commit`](Self::commit) seals under the same position.
    pub fn next_wire(
        &mut self,
        plaintext: &[u8; FRAME_LEN],
        out: &mut [u8; MAX_WIRE_LEN],
    ) -> Result<usize, SessionError> {
        self.pending = None;
        let cand = self.candidate()?;
        match &self.keying {
            Keying::Shared { cipher, .. } => {
                let dst: &mut [u8; SHARED_WIRE_LEN] = (&mut out[..SHARED_WIRE_LEN])
                    .try_into()
                    .expect("60-byte prefix");
                seal_shared_with(cipher, &cand.iv_random, cand.counter, plaintext, dst);
            }
            Keying::Master { pid, agent, .. } => {
                let frame_pid =
                    u32::from_le_bytes([plaintext[4], plaintext[5], plaintext[6], plaintext[7]]);
                if frame_pid != *pid {
                    return Err(SessionError::PidMismatch {
                        session_pid: *pid,
                        frame_pid,
                    });
                }
                seal_master_with(agent, *pid, &cand.iv_random, cand.counter, plaintext, out);
            }
        }
        self.pending = Some(cand);
        Ok(self.wire_len())
    }

    /// The last [`next_wire`](Self::next_wire) datagram was sent in full:
    /// advance past its position (adopting a rotated prefix). Returns false
    /// (and does nothing) if there is nothing to commit.
    pub fn commit(&mut self) -> bool {
        let Some(p) = self.pending.take() else {
            return false;
        };
        // p.counter < u32::MAX by construction of `candidate`.
        self.pos = Position {
            counter: p.counter + 1,
            ..p
        };
        true
    }

    /// Forget an uncommitted candidate (optional; `next_wire` recomputes it).
    pub fn abandon(&mut self) {
        self.pending = None;
    }

    /// Test hook: jump to a position (e.g. right before the counter wraps).
    #[doc(hidden)]
    pub fn set_position_for_test(&mut self, prefix_index: u32, counter: u32) {
        self.pending = None;
        self.pos = Position {
            prefix_index,
            iv_random: derive_iv_prefix(&self.salt, prefix_index),
            counter,
        };
    }
}
