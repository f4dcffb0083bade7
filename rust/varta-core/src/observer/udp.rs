//! UDP listeners (`docs/configuration.md#listeners-and-transports`, `docs/observer.md#origins`; `docs/protocol.md#secure-receiver`): plaintext VLP
//! frames and ChaCha20-Poly1305 sealed frames, batched with `recvmmsg(2)`
//! like the Unix listener and judged in the same round-robin `poll()`.
//!
//! Network peers carry no kernel credentials: every frame they deliver has
//! `kernel_pid: None` (so the `pid_max` gate applies) and the listener's
//! trust as origin — `NetworkUnverified`, or `OperatorAttestedTransport`
//! when the operator opted in. The tracker pins origins and reports
//! `OriginConflict` for a weaker one.
//!
//! Plaintext: a 33-byte buffer, anything but exactly 32 bytes is a truncated
//! datagram. Secure: a [`RECV_BUF_LEN`]-byte buffer handed to
//! [`SecureReceiver::open`]; its refusals are added to the observer's
//! ingress counters (`frame_decrypt_failures`, `secure_replay_refused`,
//! `sender_state_full`, `secure_aead_attempts`, `truncated_datagrams`), an
//! authenticated frame that fails decoding becomes a `Decode` event, and an
//! accepted frame is re-encoded into a per-datagram plaintext slot for the
//! shared gates.

use super::gates::{IngressCounters, Peer, Received};
use super::listener::RECV_BATCH;
use super::tracker::{BeatOrigin, NetPeer, PeerKey};
use crate::frame::FRAME_LEN;
use crate::secure::{Opened, SecureReceiver, OPENED_WITH_MASTER, RECV_BUF_LEN};
use crate::sys::{self, get_int_opt, set_int_opt};
use std::fmt;
use std::io;
use std::mem::zeroed;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;

/// Plaintext receive length: one byte more than a frame, so an over-long
/// datagram is seen as such.
pub const PLAIN_RECV_LEN: usize = FRAME_LEN + 1;

/// How far the operator trusts a UDP listener's transport (docs/observer.md#origins).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TransportTrust {
    /// Beats are `NetworkUnverified` (recovery refused).
    #[default]
    Untrusted,
    /// Beats are `OperatorAttestedTransport` (operator accepted recovery).
    Operator,
}

impl TransportTrust {
    /// `"untrusted"` / `"operator"` (the `udp_trust` option).
    pub fn from_name(name: &str) -> Option<TransportTrust> {
        match name {
            "untrusted" => Some(TransportTrust::Untrusted),
            "operator" => Some(TransportTrust::Operator),
            _ => None,
        }
    }

    pub fn origin(self) -> BeatOrigin {
        match self {
            TransportTrust::Untrusted => BeatOrigin::NetworkUnverified,
            TransportTrust::Operator => BeatOrigin::OperatorAttestedTransport,
        }
    }
}

/// What the listener does with a datagram.
pub enum UdpMode {
    /// Unauthenticated 32-byte frames.
    Plain,
    /// Sealed frames opened by a [`SecureReceiver`].
    Secure(Box<SecureReceiver>),
}

impl fmt::Debug for UdpMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UdpMode::Plain => f.write_str("Plain"),
            UdpMode::Secure(r) => f.debug_tuple("Secure").field(r).finish(),
        }
    }
}

/// A bound UDP listener with its receive batch.
pub struct UdpListener {
    fd: Arc<OwnedFd>,
    local: SocketAddr,
    mode: UdpMode,
    origin: BeatOrigin,
    bufs: Box<[[u8; RECV_BUF_LEN]; RECV_BATCH]>,
    lens: [usize; RECV_BATCH],
    /// Each datagram's sender (`msg_name`); its address names the agent's
    /// host (docs/observer.md#agent-identity).
    names: Box<[libc::sockaddr_storage; RECV_BATCH]>,
    /// Re-encoded plaintext of accepted secure frames.
    plain: Box<[[u8; FRAME_LEN]; RECV_BATCH]>,
    count: usize,
    closed: bool,
    /// Effective `SO_RCVBUF` as the kernel reports it.
    rcvbuf_bytes: u64,
}

impl fmt::Debug for UdpListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UdpListener")
            .field("fd", &self.fd.as_raw_fd())
            .field("local", &self.local)
            .field("mode", &self.mode)
            .field("origin", &self.origin)
            .field("rcvbuf_bytes", &self.rcvbuf_bytes)
            .finish_non_exhaustive()
    }
}

impl UdpListener {
    /// Bind `addr` (port 0 = ephemeral), non-blocking and close-on-exec,
    /// requesting `rcvbuf` bytes of receive buffer (0 = kernel default,
    /// ≤ `i32::MAX`), as the Unix listener does.
    pub fn bind(
        addr: SocketAddr,
        mode: UdpMode,
        trust: TransportTrust,
        rcvbuf: u32,
    ) -> io::Result<UdpListener> {
        let Ok(rcvbuf) = i32::try_from(rcvbuf) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("udp_rcvbuf_bytes {rcvbuf} exceeds {}", i32::MAX),
            ));
        };
        let sock = UdpSocket::bind(addr)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot bind UDP {addr}: {e}")))?;
        sock.set_nonblocking(true)?;
        let local = sock.local_addr()?;
        let raw = sock.as_raw_fd();
        if rcvbuf > 0 {
            set_int_opt(raw, libc::SOL_SOCKET, libc::SO_RCVBUF, rcvbuf)
                .map_err(|e| io::Error::new(e.kind(), format!("SO_RCVBUF on UDP {local}: {e}")))?;
        }
        let rcvbuf_bytes = get_int_opt(raw, libc::SOL_SOCKET, libc::SO_RCVBUF)
            .map(|v| v.max(0) as u64)
            .unwrap_or(0);
        Ok(UdpListener {
            fd: Arc::new(OwnedFd::from(sock)),
            local,
            mode,
            origin: trust.origin(),
            bufs: Box::new([[0u8; RECV_BUF_LEN]; RECV_BATCH]),
            lens: [0; RECV_BATCH],
            // SAFETY: sockaddr_storage is plain old data; zero is valid.
            names: Box::new(unsafe { zeroed() }),
            plain: Box::new([[0u8; FRAME_LEN]; RECV_BATCH]),
            count: 0,
            closed: false,
            rcvbuf_bytes,
        })
    }

    /// The bound address (with the kernel's port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Effective `SO_RCVBUF` as the kernel reported it after the request
    /// (Linux doubles the request and caps it at `net.core.rmem_max`).
    pub fn rcvbuf_bytes(&self) -> u64 {
        self.rcvbuf_bytes
    }

    pub fn is_secure(&self) -> bool {
        matches!(self.mode, UdpMode::Secure(_))
    }

    pub fn origin(&self) -> BeatOrigin {
        self.origin
    }

    pub fn wait_fd(&self) -> Arc<OwnedFd> {
        Arc::clone(&self.fd)
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    fn recv_len(&self) -> usize {
        match self.mode {
            UdpMode::Plain => PLAIN_RECV_LEN,
            UdpMode::Secure(_) => RECV_BUF_LEN,
        }
    }

    /// Receive up to [`RECV_BATCH`] datagrams without blocking.
    pub fn recv_batch(&mut self) -> io::Result<usize> {
        self.count = 0;
        if self.closed {
            return Ok(0);
        }
        let len = self.recv_len();
        // SAFETY: iovec/mmsghdr are plain old data; zero is valid.
        let mut iov: [libc::iovec; RECV_BATCH] = unsafe { zeroed() };
        let mut hdrs: [libc::mmsghdr; RECV_BATCH] = unsafe { zeroed() };
        for i in 0..RECV_BATCH {
            iov[i].iov_base = self.bufs[i].as_mut_ptr().cast();
            iov[i].iov_len = len;
            let h = &mut hdrs[i].msg_hdr;
            h.msg_iov = &mut iov[i];
            h.msg_iovlen = 1;
            h.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = core::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        }
        // SAFETY: every header points into buffers owned by `self` that
        // outlive the call; lengths match the allocations.
        let n = match unsafe { sys::recvmmsg(self.fd.as_raw_fd(), &mut hdrs, libc::MSG_DONTWAIT) } {
            Ok(n) => n,
            // A previous send's ICMP error surfacing on this socket:
            // not ours to report, the next read proceeds.
            Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => return Ok(0),
            Err(e) => return Err(e),
        };
        for (i, hdr) in hdrs.iter().enumerate().take(n) {
            if hdr.msg_hdr.msg_namelen == 0 {
                self.names[i].ss_family = libc::AF_UNSPEC as libc::sa_family_t;
            }
            let truncated = hdr.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            // A cut datagram keeps the full buffer length, which is never a
            // valid frame length: it is reported as truncated.
            self.lens[i] = if truncated {
                len
            } else {
                (hdr.msg_len as usize).min(len)
            };
        }
        self.count = n;
        Ok(n)
    }

    /// The raw bytes of the `i`-th datagram of the last batch.
    pub fn data(&self, i: usize) -> &[u8] {
        assert!(i < self.count, "datagram index out of range");
        &self.bufs[i][..self.lens[i]]
    }

    /// The sender address of the `i`-th datagram of the last batch (the
    /// unspecified address if the kernel gave none).
    pub fn sender(&self, i: usize) -> IpAddr {
        assert!(i < self.count, "datagram index out of range");
        sockaddr_ip(&self.names[i])
    }

    /// The `i`-th datagram through this listener's checks.
    pub fn received(
        &mut self,
        i: usize,
        now_ns: u64,
        counters: &mut IngressCounters,
    ) -> Received<'_> {
        assert!(i < self.count, "datagram index out of range");
        let addr = sockaddr_ip(&self.names[i]);
        let mut peer = Peer {
            kernel_pid: None,
            origin: self.origin,
            local: false,
            net: Some(NetPeer {
                addr,
                key: PeerKey::Plain,
            }),
        };
        let data = &self.bufs[i][..self.lens[i]];
        match &mut self.mode {
            UdpMode::Plain => match <&[u8; FRAME_LEN]>::try_from(data) {
                Ok(bytes) => Received::Frame { bytes, peer },
                Err(_) => Received::Truncated,
            },
            UdpMode::Secure(rx) => {
                let before = rx.counters();
                let mapped = match addr {
                    IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                    IpAddr::V6(v6) => v6,
                };
                let opened = rx.open_from(data, mapped.octets(), now_ns);
                peer.net = Some(NetPeer {
                    addr,
                    key: match rx.opened_with() {
                        OPENED_WITH_MASTER => PeerKey::Master,
                        k => PeerKey::Shared(k),
                    },
                });
                let after = rx.counters();
                add_delta(
                    &mut counters.secure_aead_attempts,
                    before.secure_aead_attempts,
                    after.secure_aead_attempts,
                );
                add_delta(
                    &mut counters.frame_decrypt_failures,
                    before.frame_decrypt_failures,
                    after.frame_decrypt_failures,
                );
                add_delta(
                    &mut counters.secure_replay_refused,
                    before.secure_replay_refused,
                    after.secure_replay_refused,
                );
                add_delta(
                    &mut counters.sender_state_full,
                    before.sender_state_full,
                    after.sender_state_full,
                );
                match opened {
                    Opened::Accepted(frame) => {
                        let slot = &mut self.plain[i];
                        frame.encode_into(slot);
                        Received::Frame { bytes: slot, peer }
                    }
                    Opened::Decode(error) => Received::Decode(error),
                    // Counted by the gates (`truncated_datagrams`).
                    Opened::Rejected(crate::secure::RejectReason::Truncated) => Received::Truncated,
                    Opened::Rejected(_) => Received::Dropped,
                }
            }
        }
    }

    /// The pid a datagram claims, unverified (cache prefetch only): the
    /// frame's pid field for plaintext, the wire pid of a 64-byte secure
    /// frame, nothing for a 60-byte one (encrypted).
    pub fn pid_hint(&self, i: usize) -> Option<u32> {
        let d = self.data(i);
        match self.mode {
            UdpMode::Plain if d.len() == FRAME_LEN => {
                Some(u32::from_le_bytes([d[4], d[5], d[6], d[7]]))
            }
            UdpMode::Secure(_) if d.len() == crate::secure::MASTER_WIRE_LEN => {
                Some(u32::from_le_bytes([d[0], d[1], d[2], d[3]]))
            }
            _ => None,
        }
    }

    /// Upkeep that must not wait for traffic: a secure listener's periodic
    /// replay-table sweep (`docs/protocol.md#sender-table`), so senders silent for
    /// `EVICTION_TTL` are forgotten on a quiet listener too. O(1) unless the
    /// sweep is due (every `EVICTION_INTERVAL`), then O(`MAX_SENDER_STATES`).
    pub fn maintain(&mut self, now_ns: u64) {
        if let UdpMode::Secure(rx) = &mut self.mode {
            rx.maybe_sweep(now_ns);
        }
    }

    /// Sender states a secure listener holds (`None` for plaintext).
    pub fn secure_senders(&self) -> Option<usize> {
        match &self.mode {
            UdpMode::Secure(rx) => Some(rx.senders()),
            UdpMode::Plain => None,
        }
    }

    /// Stop receiving (the socket closes when the last waiter drops it).
    pub fn close(&mut self) {
        self.closed = true;
        self.count = 0;
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }
}

/// The IP address of a `recvmmsg` sender (unspecified if none), IPv4
/// whether it came as IPv4 or IPv4-mapped IPv6.
fn sockaddr_ip(ss: &libc::sockaddr_storage) -> IpAddr {
    match i32::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: the kernel wrote a sockaddr_in for AF_INET; the
            // storage is large and aligned enough for it.
            let sin =
                unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, a sockaddr_in6 for AF_INET6.
            let sin6 =
                unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            // A dual-stack socket's IPv4 senders are written as IPv4.
            let v6 = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
        }
        _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    }
}

fn add_delta(c: &mut u64, before: u64, after: u64) {
    *c = c.saturating_add(after.saturating_sub(before));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{Frame, Status};
    use crate::secure::{seal_shared, Key, ReceiverConfig, SHARED_WIRE_LEN};

    fn frame(pid: u32, nonce: u64) -> [u8; FRAME_LEN] {
        let f = Frame {
            status: Status::Ok,
            pid,
            timestamp: 1,
            nonce,
            payload: 7,
        };
        let mut b = [0u8; FRAME_LEN];
        f.encode_into(&mut b);
        b
    }

    fn recv_all(l: &mut UdpListener) -> usize {
        // The datagrams were sent to loopback before: they are queued.
        for _ in 0..100 {
            let n = l.recv_batch().unwrap();
            if n > 0 {
                return n;
            }
            std::thread::yield_now();
        }
        0
    }

    #[test]
    fn plain_lengths_and_origin() {
        let mut l = UdpListener::bind(
            "127.0.0.1:0".parse().unwrap(),
            UdpMode::Plain,
            TransportTrust::Operator,
            0,
        )
        .unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = l.local_addr();
        tx.send_to(&frame(42, 1), to).unwrap();
        tx.send_to(&[0u8; 31], to).unwrap();
        tx.send_to(&[0u8; 40], to).unwrap();
        let mut got = 0;
        let mut c = IngressCounters::default();
        let mut seen = Vec::new();
        while got < 3 {
            let n = recv_all(&mut l);
            assert!(n > 0);
            for i in 0..n {
                seen.push(match l.received(i, 0, &mut c) {
                    Received::Frame { bytes, peer } => {
                        assert_eq!(peer.kernel_pid, None);
                        assert_eq!(peer.origin, BeatOrigin::OperatorAttestedTransport);
                        assert_eq!(
                            peer.net,
                            Some(NetPeer {
                                addr: "127.0.0.1".parse().unwrap(),
                                key: PeerKey::Plain
                            })
                        );
                        assert!(!peer.local);
                        assert_eq!(Frame::decode(bytes).unwrap().pid, 42);
                        "frame"
                    }
                    Received::Truncated => "truncated",
                    other => panic!("unexpected {other:?}"),
                });
            }
            got += n;
        }
        assert_eq!(seen, ["frame", "truncated", "truncated"]);
    }

    #[test]
    fn secure_accepts_then_refuses_replay_and_counts() {
        let key = Key::from_slice(&[9u8; 32]).unwrap();
        let rx = SecureReceiver::new(ReceiverConfig {
            shared_keys: vec![key.clone()],
            master_key: None,
            session_restart_gap_ns: 1_000_000_000,
        })
        .unwrap();
        let mut l = UdpListener::bind(
            "127.0.0.1:0".parse().unwrap(),
            UdpMode::Secure(Box::new(rx)),
            TransportTrust::Untrusted,
            0,
        )
        .unwrap();
        let mut wire = [0u8; SHARED_WIRE_LEN];
        seal_shared(&key, &[1u8; 8], 1, &frame(77, 1), &mut wire);
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.send_to(&wire, l.local_addr()).unwrap();
        tx.send_to(&wire, l.local_addr()).unwrap();
        let mut c = IngressCounters::default();
        let mut seen = Vec::new();
        while seen.len() < 2 {
            let n = recv_all(&mut l);
            assert!(n > 0);
            for i in 0..n {
                seen.push(match l.received(i, 10, &mut c) {
                    Received::Frame { bytes, peer } => {
                        assert_eq!(peer.origin, BeatOrigin::NetworkUnverified);
                        assert_eq!(Frame::decode(bytes).unwrap().pid, 77);
                        "frame"
                    }
                    Received::Dropped => "dropped",
                    other => panic!("unexpected {other:?}"),
                });
            }
        }
        assert_eq!(seen, ["frame", "dropped"]);
        assert_eq!(c.secure_replay_refused, 1);
        assert_eq!(c.secure_aead_attempts, 2);
    }

    /// `SO_RCVBUF` the kernel reports for a fresh UDP socket after
    /// requesting `req` bytes (0 = no request): the value a listener given
    /// the same request must end up with.
    fn reference_rcvbuf(req: u32) -> u64 {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        if req > 0 {
            set_int_opt(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, req as i32).unwrap();
        }
        get_int_opt(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF).unwrap() as u64
    }

    #[test]
    fn rcvbuf_request_is_applied_to_the_socket() {
        let bind = |req| {
            UdpListener::bind(
                "127.0.0.1:0".parse().unwrap(),
                UdpMode::Plain,
                TransportTrust::Untrusted,
                req,
            )
            .unwrap()
        };
        let mut seen = Vec::new();
        for req in [0, 4096, 65_536] {
            let l = bind(req);
            // Read back from the descriptor, not from the cached value.
            let on_fd = get_int_opt(l.raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF).unwrap() as u64;
            assert_eq!(on_fd, reference_rcvbuf(req), "request {req}");
            assert_eq!(l.rcvbuf_bytes(), on_fd);
            seen.push(on_fd);
        }
        // The request really changes the buffer.
        assert!(seen[1] < seen[2], "{seen:?}");
        let err = UdpListener::bind(
            "127.0.0.1:0".parse().unwrap(),
            UdpMode::Plain,
            TransportTrust::Untrusted,
            i32::MAX as u32 + 1,
        )
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
