//! Secure UDP agent transport (`docs/protocol.md#secure-transport`, `docs/agent.md#connecting`, `docs/agent.md#commit-on-success`, `docs/agent.md#reconnecting`).
//!
//! [`SecureUdpTransport`] = a plain UDP [`DgramTransport`] (wildcard-bound,
//! connected, non-blocking) + a [`SecureSession`]. The agent hands it the
//! 32-byte plaintext; it seals under the session's *candidate* position into
//! a fixed scratch buffer and sends 60 (shared key) or 64 (master key) bytes.
//!
//! | agent call | here |
//! |---|---|
//! | `send` | `session.next_wire` + one `send(2)`; a failed send abandons the candidate |
//! | `commit_sent` | `session.commit()` (counter +1, or adopt a rotated prefix) |
//! | `prepare_reconnect` | new socket + `session.reseeded(getpid())` (fresh salt, index 0, counter 0, master `K_agent` for the current pid) |
//! | `commit_reconnect` | swap both in at once (old socket closed) |
//!
//! [`SessionError::PrefixSpaceExhausted`] (after ~2^64 frames of one salt)
//! makes `send` reconnect by itself (new socket + salt) and seal again; this
//! is the only allocating path and it is unreachable in practice.
//! A master-key [`SessionError::PidMismatch`] (a forked child driving the raw
//! transport without the agent wrapper) is handled the same way: the
//! reseeded session derives `K_agent` for the current pid.
//!
//! Fork handling lives in [`crate::agent::Agent`]: its fork check calls
//! `reconnect()`, which reseeds. A caller driving this transport without the
//! agent must reconnect in a forked child itself (`docs/protocol.md#fork-rotation`).

use crate::agent::Agent;
use crate::fork;
use crate::frame::FRAME_LEN;
use crate::secure::{Key, SecureSession, SessionError, SessionMode, MAX_WIRE_LEN};
use crate::transport::{DgramTransport, Endpoint, Transport};
use core::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;

/// Secure UDP transport: 60-byte shared-key or 64-byte master-key frames.
pub struct SecureUdpTransport {
    inner: DgramTransport,
    session: SecureSession,
    scratch: [u8; MAX_WIRE_LEN],
}

/// Replacement state built by [`Transport::prepare_reconnect`].
pub struct SecurePending {
    fd: OwnedFd,
    session: SecureSession,
}

impl fmt::Debug for SecurePending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecurePending").finish_non_exhaustive()
    }
}

impl fmt::Debug for SecureUdpTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecureUdpTransport")
            .field("inner", &self.inner)
            .field("session", &self.session)
            .finish()
    }
}

impl SecureUdpTransport {
    /// Wrap an open UDP transport with a ready session.
    pub fn new(inner: DgramTransport, session: SecureSession) -> SecureUdpTransport {
        SecureUdpTransport {
            inner,
            session,
            scratch: [0; MAX_WIRE_LEN],
        }
    }

    /// Shared-key transport to `addr`: fresh 16-byte salt from OS entropy
    /// (failure → error), prefix index 0, counter 0.
    pub fn connect_shared(addr: SocketAddr, key: Key) -> io::Result<SecureUdpTransport> {
        let session = SecureSession::new_shared(key)?;
        let inner = DgramTransport::connect(Endpoint::Udp(addr))?;
        Ok(SecureUdpTransport::new(inner, session))
    }

    /// Master-key transport to `addr`: as shared, plus
    /// `K_agent = derive_agent_key(master, getpid())`, cached.
    pub fn connect_master(addr: SocketAddr, master: Key) -> io::Result<SecureUdpTransport> {
        let session = SecureSession::new_master(master, fork::getpid())?;
        let inner = DgramTransport::connect(Endpoint::Udp(addr))?;
        Ok(SecureUdpTransport::new(inner, session))
    }

    pub fn endpoint(&self) -> &Endpoint {
        self.inner.endpoint()
    }

    pub fn session(&self) -> &SecureSession {
        &self.session
    }

    /// Test hook (prefix rotation / exhaustion without 2^32 sends).
    #[doc(hidden)]
    pub fn session_mut(&mut self) -> &mut SecureSession {
        &mut self.session
    }

    pub fn mode(&self) -> SessionMode {
        self.session.mode()
    }

    #[inline]
    fn seal(&mut self, frame: &[u8; FRAME_LEN]) -> io::Result<usize> {
        match self.session.next_wire(frame, &mut self.scratch) {
            Ok(n) => Ok(n),
            Err(SessionError::PrefixSpaceExhausted) | Err(SessionError::PidMismatch { .. }) => {
                self.reconnect_cold()?;
                Ok(self.session.next_wire(frame, &mut self.scratch)?)
            }
        }
    }

    #[cold]
    fn reconnect_cold(&mut self) -> io::Result<()> {
        self.reconnect()
    }
}

impl Transport for SecureUdpTransport {
    type Pending = SecurePending;

    #[inline]
    fn send(&mut self, frame: &[u8; FRAME_LEN]) -> io::Result<usize> {
        let n = self.seal(frame)?;
        match self.inner.send_bytes(&self.scratch[..n]) {
            Ok(sent) => Ok(sent),
            Err(e) => {
                self.session.abandon();
                Err(e)
            }
        }
    }

    #[inline]
    fn expected_send_len(&self) -> usize {
        self.session.wire_len()
    }

    fn prepare_reconnect(&self) -> io::Result<SecurePending> {
        let session = self.session.reseeded(fork::getpid())?;
        let fd = self.inner.prepare_reconnect()?;
        Ok(SecurePending { fd, session })
    }

    fn commit_reconnect(&mut self, pending: SecurePending) {
        self.inner.commit_reconnect(pending.fd);
        self.session = pending.session;
    }

    #[inline]
    fn commit_sent(&mut self) {
        self.session.commit();
    }
}

impl Agent<SecureUdpTransport> {
    /// Secure UDP agent, shared key: 60-byte frames (`docs/agent.md#connecting`).
    pub fn connect_secure_udp(addr: SocketAddr, key: Key) -> io::Result<Self> {
        fork::register()?;
        Agent::new(SecureUdpTransport::connect_shared(addr, key)?)
    }

    /// Secure UDP agent, master key: 64-byte frames, `K_agent` per pid.
    pub fn connect_secure_udp_with_master(addr: SocketAddr, master: Key) -> io::Result<Self> {
        fork::register()?;
        Agent::new(SecureUdpTransport::connect_master(addr, master)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{Frame, Status};
    use crate::secure::{derive_agent_key, open_master, open_shared};
    use crate::secure::{MASTER_WIRE_LEN, SHARED_WIRE_LEN};
    use std::net::UdpSocket;
    use std::time::Duration;

    fn rx() -> UdpSocket {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    }

    fn recv(s: &UdpSocket) -> Vec<u8> {
        let mut buf = [0u8; 128];
        let n = s.recv(&mut buf).unwrap();
        buf[..n].to_vec()
    }

    fn open60(key: &Key, w: &[u8]) -> Frame {
        assert_eq!(w.len(), SHARED_WIRE_LEN);
        let mut out = [0u8; FRAME_LEN];
        assert!(open_shared(key, w.try_into().unwrap(), &mut out));
        Frame::decode(&out).unwrap()
    }

    #[test]
    fn shared_agent_sends_sealed_frames_and_counts_on_success() {
        let r = rx();
        let key = Key::from_bytes([7; 32]);
        let t = SecureUdpTransport::connect_shared(r.local_addr().unwrap(), key.clone()).unwrap();
        let mut a = Agent::new(t).unwrap();
        for i in 0..3u32 {
            assert!(a.beat(Status::Ok, i).is_sent());
        }
        let mut ivs = Vec::new();
        for i in 0..3u32 {
            let w = recv(&r);
            let f = open60(&key, &w);
            assert_eq!(f.nonce, u64::from(i) + 1);
            assert_eq!(f.payload, i);
            assert_eq!(f.pid, std::process::id());
            assert_eq!(u32::from_le_bytes(w[8..12].try_into().unwrap()), i);
            ivs.push(w[0..8].to_vec());
        }
        assert!(ivs.iter().all(|v| *v == ivs[0]));
        // Reconnect: new salt → new prefix, counter back to 0; nonce continues.
        a.reconnect().unwrap();
        assert!(a.beat(Status::Ok, 0).is_sent());
        let w = recv(&r);
        assert_ne!(w[0..8], ivs[0][..]);
        assert_eq!(u32::from_le_bytes(w[8..12].try_into().unwrap()), 0);
        assert_eq!(open60(&key, &w).nonce, 4);
    }

    #[test]
    fn uncommitted_send_reuses_its_position() {
        // Only a committed send advances the counter (commit-on-success).
        let r = rx();
        let key = Key::from_bytes([1; 32]);
        let mut t =
            SecureUdpTransport::connect_shared(r.local_addr().unwrap(), key.clone()).unwrap();
        let plain = Frame {
            status: Status::Ok,
            pid: 42,
            timestamp: 1,
            nonce: 1,
            payload: 0,
        }
        .encode();
        assert_eq!(t.send(&plain).unwrap(), 60);
        // Not committed: the same position is used again.
        assert_eq!(t.send(&plain).unwrap(), 60);
        let a = recv(&r);
        let b = recv(&r);
        assert_eq!(a, b);
        t.commit_sent();
        assert_eq!(t.session().counter(), 1);
    }

    #[test]
    fn prefix_rotation_and_exhaustion() {
        let r = rx();
        let key = Key::from_bytes([2; 32]);
        let mut t =
            SecureUdpTransport::connect_shared(r.local_addr().unwrap(), key.clone()).unwrap();
        let plain = Frame {
            status: Status::Ok,
            pid: 42,
            timestamp: 1,
            nonce: 1,
            payload: 0,
        }
        .encode();
        t.session_mut().set_position_for_test(3, u32::MAX);
        assert_eq!(t.send(&plain).unwrap(), 60);
        t.commit_sent();
        assert_eq!(t.session().prefix_index(), 4);
        let w = recv(&r);
        assert_eq!(&w[8..12], &[0, 0, 0, 0]);
        // Exhausted prefix space → self-reconnect with a fresh salt.
        let old_salt = *t.session().salt();
        t.session_mut().set_position_for_test(u32::MAX, u32::MAX);
        assert_eq!(t.send(&plain).unwrap(), 60);
        t.commit_sent();
        assert_ne!(*t.session().salt(), old_salt);
        assert_eq!(t.session().prefix_index(), 0);
        assert_eq!(t.session().counter(), 1);
        open60(&key, &recv(&r));
    }

    #[test]
    fn master_agent_sends_64_byte_frames() {
        let r = rx();
        let master = Key::from_bytes([9; 32]);
        let t =
            SecureUdpTransport::connect_master(r.local_addr().unwrap(), master.clone()).unwrap();
        assert_eq!(t.expected_send_len(), MASTER_WIRE_LEN);
        let mut a = Agent::new(t).unwrap();
        assert!(a.beat(Status::Degraded, 5).is_sent());
        let w = recv(&r);
        assert_eq!(w.len(), MASTER_WIRE_LEN);
        let pid = std::process::id();
        assert_eq!(u32::from_le_bytes(w[0..4].try_into().unwrap()), pid);
        let mut out = [0u8; FRAME_LEN];
        let k = derive_agent_key(&master, pid);
        assert!(open_master(&k, w.as_slice().try_into().unwrap(), &mut out));
        let f = Frame::decode(&out).unwrap();
        assert_eq!((f.status, f.payload, f.nonce), (Status::Degraded, 5, 1));
    }
}
