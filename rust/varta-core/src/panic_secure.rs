//! Secure crash frames (`docs/protocol.md#secure-crash-frames`, `docs/agent.md#crash-hooks`, `docs/agent.md#beyond-the-upstream-client` item 12).
//!
//! [`SharedPanicSealer`] and [`MasterPanicSealer`] implement
//! [`TerminalSealer`] for [`crate::panic::Wire::Sealed`]:
//!
//! - at construction (hook install) a 16-byte **fork salt** is read from OS
//!   entropy (failure → error, nothing installed) and the cipher(s) are built;
//! - each firing claims a distinct counter from an atomic starting at 0
//!   (beyond `u32::MAX` → the frame is dropped), derives the prefix
//!   `derive_panic_iv_prefix(fork_salt, pid, timestamp, counter)` — every
//!   firing, no pid fast path — and seals the plaintext with wire
//!   `iv_counter = counter`;
//! - shared: 60-byte frame, AAD empty; master: 64-byte frame, wire[0..4] =
//!   pid = AAD, key `K_agent = derive_agent_key(M, pid)`. `K_agent` is
//!   derived at install for the installing pid and cached; a forked child
//!   (other pid) derives its own on the stack when it fires (pure HKDF, no
//!   allocation).
//!
//! Firing reads no entropy, takes no lock and never allocates: HKDF-SHA256
//! and ChaCha20-Poly1305 run on stack buffers. A forked child inherits the
//! salt and the counter, but its pid is part of the prefix derivation (and,
//! in master mode, of the key), so its (key, nonce) pairs stay distinct from
//! the parent's.

use crate::fork;
use crate::frame::{Frame, Status, FRAME_LEN, NONCE_TERMINAL};
use crate::panic::{udp_connected_resolve, Emitter, TerminalSealer, Wire, MAX_WIRE_LEN};
use crate::secure::seal::{cipher, seal_master_with, seal_shared_with};
use crate::secure::{
    derive_agent_key, derive_panic_iv_prefix, os_entropy, Key, MASTER_WIRE_LEN, SALT_LEN,
    SHARED_WIRE_LEN,
};
use chacha20poly1305::ChaCha20Poly1305;
use std::io;
use std::net::ToSocketAddrs;
use std::sync::atomic::{AtomicU64, Ordering};

/// The per-install firing counter: claims `0, 1, …`; `None` past `u32::MAX`.
struct FiringCounter(AtomicU64);

impl FiringCounter {
    const fn new() -> Self {
        FiringCounter(AtomicU64::new(0))
    }

    #[inline]
    fn claim(&self) -> Option<u32> {
        // A u64 cannot realistically wrap by increments; values past u32::MAX
        // stay there and every later firing is dropped.
        u32::try_from(self.0.fetch_add(1, Ordering::Relaxed)).ok()
    }
}

fn fork_salt() -> io::Result<[u8; SALT_LEN]> {
    let mut salt = [0u8; SALT_LEN];
    os_entropy(&mut salt)?;
    Ok(salt)
}

/// Sample terminal frame used to warm the crypto code paths at install.
const WARM_FRAME: Frame = Frame {
    status: Status::Critical,
    pid: 2,
    timestamp: 1,
    nonce: NONCE_TERMINAL,
    payload: 0,
};

/// Shared-key crash frames (60 bytes).
pub struct SharedPanicSealer {
    cipher: ChaCha20Poly1305,
    salt: [u8; SALT_LEN],
    counter: FiringCounter,
}

impl SharedPanicSealer {
    /// Read the fork salt from OS entropy and build the cipher.
    pub fn new(key: &Key) -> io::Result<SharedPanicSealer> {
        Ok(SharedPanicSealer::with_salt(key, fork_salt()?))
    }

    /// Caller-chosen salt (tests). Never reuse a salt with the same key.
    pub fn with_salt(key: &Key, salt: [u8; SALT_LEN]) -> SharedPanicSealer {
        let s = SharedPanicSealer {
            cipher: cipher(key),
            salt,
            counter: FiringCounter::new(),
        };
        // Warm CPU-feature detection of the cipher and hash (first use
        // must not happen in a signal handler); the output is discarded and
        // no counter is claimed.
        let mut scratch = [0u8; MAX_WIRE_LEN];
        s.seal_at(&WARM_FRAME, 0, &mut scratch);
        s
    }

    #[inline]
    fn seal_at(&self, frame: &Frame, counter: u32, out: &mut [u8; MAX_WIRE_LEN]) -> usize {
        let mut plain = [0u8; FRAME_LEN];
        frame.encode_into(&mut plain);
        let prefix = derive_panic_iv_prefix(&self.salt, frame.pid, frame.timestamp, counter);
        let dst: &mut [u8; SHARED_WIRE_LEN] = (&mut out[..SHARED_WIRE_LEN])
            .try_into()
            .expect("60-byte prefix of a 64-byte buffer");
        seal_shared_with(&self.cipher, &prefix, counter, &plain, dst);
        SHARED_WIRE_LEN
    }
}

impl TerminalSealer for SharedPanicSealer {
    fn seal(&self, frame: &Frame, out: &mut [u8; MAX_WIRE_LEN]) -> Option<usize> {
        let c = self.counter.claim()?;
        Some(self.seal_at(frame, c, out))
    }
}

/// Master-key crash frames (64 bytes, `K_agent` per pid).
pub struct MasterPanicSealer {
    master: Key,
    install_pid: u32,
    /// `K_agent` for `install_pid`, ready as a cipher.
    cached: ChaCha20Poly1305,
    salt: [u8; SALT_LEN],
    counter: FiringCounter,
}

impl MasterPanicSealer {
    /// Read the fork salt from OS entropy; derive and cache `K_agent` for
    /// the current pid.
    pub fn new(master: &Key) -> io::Result<MasterPanicSealer> {
        Ok(MasterPanicSealer::with_salt(
            master,
            fork::getpid(),
            fork_salt()?,
        ))
    }

    /// Caller-chosen pid to cache and salt (tests).
    pub fn with_salt(master: &Key, pid: u32, salt: [u8; SALT_LEN]) -> MasterPanicSealer {
        let s = MasterPanicSealer {
            master: master.clone(),
            install_pid: pid,
            cached: cipher(&derive_agent_key(master, pid)),
            salt,
            counter: FiringCounter::new(),
        };
        let mut scratch = [0u8; MAX_WIRE_LEN];
        s.seal_at(&WARM_FRAME, 0, &mut scratch);
        s
    }

    #[inline]
    fn seal_at(&self, frame: &Frame, counter: u32, out: &mut [u8; MAX_WIRE_LEN]) -> usize {
        let mut plain = [0u8; FRAME_LEN];
        frame.encode_into(&mut plain);
        let prefix = derive_panic_iv_prefix(&self.salt, frame.pid, frame.timestamp, counter);
        if frame.pid == self.install_pid {
            seal_master_with(&self.cached, frame.pid, &prefix, counter, &plain, out);
        } else {
            // Forked child: derive its own K_agent on the stack.
            let k = cipher(&derive_agent_key(&self.master, frame.pid));
            seal_master_with(&k, frame.pid, &prefix, counter, &plain, out);
        }
        MASTER_WIRE_LEN
    }
}

impl TerminalSealer for MasterPanicSealer {
    fn seal(&self, frame: &Frame, out: &mut [u8; MAX_WIRE_LEN]) -> Option<usize> {
        let c = self.counter.claim()?;
        Some(self.seal_at(frame, c, out))
    }
}

impl Emitter {
    /// A shared-key secure UDP crash emitter: fork salt from OS entropy
    /// (error → nothing built), then the socket resolved and connected now.
    pub fn connect_secure_udp_resolve<A: ToSocketAddrs>(addr: A, key: &Key) -> io::Result<Emitter> {
        let sealer = SharedPanicSealer::new(key)?;
        let sock = udp_connected_resolve(addr)?;
        Emitter::new(sock.into(), Wire::Sealed(Box::new(sealer)))
    }

    /// The master-key variant (64-byte frames).
    pub fn connect_secure_udp_master_resolve<A: ToSocketAddrs>(
        addr: A,
        master: &Key,
    ) -> io::Result<Emitter> {
        let sealer = MasterPanicSealer::new(master)?;
        let sock = udp_connected_resolve(addr)?;
        Emitter::new(sock.into(), Wire::Sealed(Box::new(sealer)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::panic::Fire;
    use crate::secure::{open_master, open_shared};
    use std::net::UdpSocket;
    use std::time::Duration;

    fn frame(pid: u32, ts: u64) -> Frame {
        Frame {
            status: Status::Critical,
            pid,
            timestamp: ts,
            nonce: NONCE_TERMINAL,
            payload: 0,
        }
    }

    #[test]
    fn shared_panic_frame_layout_and_counter() {
        let key = Key::from_bytes([3; 32]);
        let salt = [0xa5; SALT_LEN];
        let s = SharedPanicSealer::with_salt(&key, salt);
        for c in 0..3u32 {
            let mut out = [0u8; MAX_WIRE_LEN];
            assert_eq!(s.seal(&frame(42, 1000), &mut out), Some(60));
            assert_eq!(&out[0..8], &derive_panic_iv_prefix(&salt, 42, 1000, c));
            assert_eq!(&out[8..12], &c.to_le_bytes());
            let mut plain = [0u8; FRAME_LEN];
            assert!(open_shared(&key, out[..60].try_into().unwrap(), &mut plain));
            assert_eq!(Frame::decode(&plain).unwrap(), frame(42, 1000));
        }
        // Exhausted counter → dropped.
        s.counter
            .0
            .store(u64::from(u32::MAX) + 1, Ordering::Relaxed);
        assert_eq!(s.seal(&frame(42, 1), &mut [0u8; MAX_WIRE_LEN]), None);
        s.counter.0.store(u64::from(u32::MAX), Ordering::Relaxed);
        assert_eq!(s.seal(&frame(42, 1), &mut [0u8; MAX_WIRE_LEN]), Some(60));
    }

    #[test]
    fn master_panic_frame_cached_and_child_pids() {
        let m = Key::from_bytes([4; 32]);
        let s = MasterPanicSealer::with_salt(&m, 42, [1; SALT_LEN]);
        for pid in [42u32, 43] {
            let mut out = [0u8; MAX_WIRE_LEN];
            assert_eq!(s.seal(&frame(pid, 5), &mut out), Some(64));
            assert_eq!(&out[0..4], &pid.to_le_bytes());
            let mut plain = [0u8; FRAME_LEN];
            let k = derive_agent_key(&m, pid);
            assert!(open_master(&k, &out, &mut plain));
            assert_eq!(Frame::decode(&plain).unwrap(), frame(pid, 5));
        }
    }

    #[test]
    fn secure_emitter_sends_one_sealed_frame() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let key = Key::from_bytes([5; 32]);
        let e = Emitter::connect_secure_udp_resolve(rx.local_addr().unwrap(), &key).unwrap();
        assert_eq!(e.fire(), Fire::Sent);
        let mut buf = [0u8; 128];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(n, 60);
        let mut plain = [0u8; FRAME_LEN];
        assert!(open_shared(&key, buf[..60].try_into().unwrap(), &mut plain));
        let f = Frame::decode(&plain).unwrap();
        assert_eq!(f.pid, std::process::id());
        assert_eq!(f.nonce, NONCE_TERMINAL);
        assert_eq!(f.status, Status::Critical);
    }
}
