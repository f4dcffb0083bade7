//! Agent transports (`docs/agent.md#connecting`, `docs/agent.md#commit-on-success`, `docs/agent.md#reconnecting`).
//!
//! [`Transport`] is what [`crate::agent::Agent`] sends through. The agent owns
//! every session rule (nonce, timestamp, fork, commit-on-success); a transport
//! only moves one 32-byte plaintext frame and knows how to rebuild itself.
//!
//! | transport | wire | where |
//! |---|---|---|
//! | [`DgramTransport`] over [`Endpoint::Unix`] | 32 B on an unbound, connected `AF_UNIX/SOCK_DGRAM` socket | here |
//! | [`DgramTransport`] over [`Endpoint::Udp`] | 32 B on a wildcard-bound, connected UDP socket | here |
//! | [`crate::transport_secure::SecureUdpTransport`] (shared / master key) | 60 / 64 B AEAD-sealed on the same UDP socket | [`crate::transport_secure`] |
//!
//! Every socket is non-blocking and close-on-exec. Sending never allocates.

use crate::frame::FRAME_LEN;
use crate::sys::{self, SunPathError};
use std::fmt;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// What the agent needs from a transport.
///
/// Contract:
/// - [`send`](Transport::send) gets the 32-byte **plaintext** frame and sends
///   one datagram (a secure transport seals it first, under its *candidate*
///   AEAD state). It returns the number of bytes the kernel accepted; the
///   agent calls the beat `Sent` only when that equals
///   [`expected_send_len`](Transport::expected_send_len). It must not block
///   and must not allocate.
/// - [`commit_sent`](Transport::commit_sent) is called right after a send the
///   agent counted as `Sent`, and only then (commit-on-success, `docs/agent.md#commit-on-success`):
///   a secure transport advances its counter / prefix here, so a dropped send
///   never burns AEAD state.
/// - Reconnect is transactional: [`prepare_reconnect`](Transport::prepare_reconnect)
///   builds every piece of new state (socket, salt, derived keys) without
///   touching `self`; [`commit_reconnect`](Transport::commit_reconnect) swaps it
///   in and cannot fail. On a prepare error the old transport stays usable.
///   Reconnecting may allocate; it is the only transport path that may.
pub trait Transport: Send {
    /// Fully built replacement state, produced by `prepare_reconnect`.
    type Pending: Send;

    /// Send one frame; `Ok(n)` = bytes the kernel accepted.
    fn send(&mut self, frame: &[u8; FRAME_LEN]) -> io::Result<usize>;

    /// Datagram length of one successful send (32 plain, 60/64 secure).
    fn expected_send_len(&self) -> usize {
        FRAME_LEN
    }

    /// Build a fresh session from the remembered address/keys.
    fn prepare_reconnect(&self) -> io::Result<Self::Pending>;

    /// Swap in the state from `prepare_reconnect` (the old socket is closed).
    fn commit_reconnect(&mut self, pending: Self::Pending);

    /// The last `send` was counted as `Sent`: commit transport-side state.
    #[inline]
    fn commit_sent(&mut self) {}

    /// `prepare_reconnect` + `commit_reconnect`.
    fn reconnect(&mut self) -> io::Result<()> {
        let pending = self.prepare_reconnect()?;
        self.commit_reconnect(pending);
        Ok(())
    }
}

/// Where a datagram transport sends.
#[derive(Clone)]
pub enum Endpoint {
    /// A Unix-domain datagram socket: a path, or (Linux) an abstract name
    /// given as a path starting with a NUL byte.
    Unix(UnixAddr),
    /// A UDP address (IPv4 or IPv6).
    Udp(SocketAddr),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(u) => write!(f, "{}", u.path.display()),
            Endpoint::Udp(a) => write!(f, "{a}"),
        }
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(u) => f.debug_tuple("Unix").field(&u.path).finish(),
            Endpoint::Udp(a) => f.debug_tuple("Udp").field(a).finish(),
        }
    }
}

/// A pre-built `sockaddr_un` plus the path it came from.
#[derive(Clone)]
pub struct UnixAddr {
    path: PathBuf,
    addr: libc::sockaddr_un,
    len: libc::socklen_t,
}

impl UnixAddr {
    /// Build the socket address for `path`. Errors: `ENAMETOOLONG` when it does
    /// not fit `sun_path`, `EINVAL` for an embedded NUL in a pathname address.
    pub fn new(path: &Path) -> io::Result<UnixAddr> {
        let (addr, len) =
            sys::sockaddr_un(path.as_os_str().as_bytes(), true).map_err(|e| match e {
                SunPathError::Nul => io::Error::from_raw_os_error(libc::EINVAL),
                SunPathError::TooLong { .. } => io::Error::from_raw_os_error(libc::ENAMETOOLONG),
            })?;
        Ok(UnixAddr {
            path: path.to_path_buf(),
            addr,
            len,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Endpoint {
    /// A Unix-domain endpoint for `path`.
    pub fn unix(path: impl AsRef<Path>) -> io::Result<Endpoint> {
        UnixAddr::new(path.as_ref()).map(Endpoint::Unix)
    }

    /// Resolve `host:port` for UDP. As upstream: IPv6 iff `host` contains
    /// `:`; names resolve to the first address of that family.
    pub fn udp(host: &str, port: u16) -> io::Result<Endpoint> {
        let want_v6 = host.contains(':');
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        (host, port)
            .to_socket_addrs()?
            .find(|a| a.is_ipv6() == want_v6)
            .map(Endpoint::Udp)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::AddrNotAvailable,
                    format!(
                        "no {} address for {host:?}",
                        if want_v6 { "IPv6" } else { "IPv4" }
                    ),
                )
            })
    }

    /// Open a fresh non-blocking socket connected to this endpoint.
    pub fn open(&self) -> io::Result<OwnedFd> {
        match self {
            Endpoint::Unix(u) => open_unix(u),
            Endpoint::Udp(a) => open_udp(*a),
        }
    }
}

fn open_unix(u: &UnixAddr) -> io::Result<OwnedFd> {
    let fd = sys::dgram_socket(libc::AF_UNIX, true)?;
    sys::connect(fd.as_raw_fd(), &u.addr, u.len)?;
    Ok(fd)
}

fn open_udp(addr: SocketAddr) -> io::Result<OwnedFd> {
    let wildcard: SocketAddr = if addr.is_ipv6() {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(wildcard)?;
    sock.connect(addr)?;
    sock.set_nonblocking(true)?;
    Ok(sock.into())
}

#[cfg(any(target_os = "linux", target_os = "android"))]
const SEND_FLAGS: libc::c_int = libc::MSG_NOSIGNAL;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const SEND_FLAGS: libc::c_int = 0;

/// One `send(2)` of `buf` on a connected socket, retried on `EINTR` only.
/// No allocation: errors are raw-errno `io::Error`s.
#[inline]
pub fn send_datagram(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    sys::send(fd, buf, SEND_FLAGS)
}

/// The plain 32-byte transport over UDS or UDP.
pub struct DgramTransport {
    fd: OwnedFd,
    endpoint: Endpoint,
}

impl DgramTransport {
    /// Open and connect. UDS: fails with the kernel's error (`ENOENT`,
    /// `ECONNREFUSED`, …) when nothing listens. UDP: never checks liveness.
    pub fn connect(endpoint: Endpoint) -> io::Result<DgramTransport> {
        let fd = endpoint.open()?;
        Ok(DgramTransport { fd, endpoint })
    }

    pub fn connect_unix(path: impl AsRef<Path>) -> io::Result<DgramTransport> {
        DgramTransport::connect(Endpoint::unix(path)?)
    }

    pub fn connect_udp(addr: SocketAddr) -> io::Result<DgramTransport> {
        DgramTransport::connect(Endpoint::Udp(addr))
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The connected socket (for a secure transport built on top, or tests).
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Send an arbitrary datagram (a secure transport sends its sealed bytes).
    #[inline]
    pub fn send_bytes(&self, buf: &[u8]) -> io::Result<usize> {
        send_datagram(self.fd.as_raw_fd(), buf)
    }
}

impl fmt::Debug for DgramTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DgramTransport")
            .field("fd", &self.fd.as_raw_fd())
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

impl Transport for DgramTransport {
    type Pending = OwnedFd;

    #[inline]
    fn send(&mut self, frame: &[u8; FRAME_LEN]) -> io::Result<usize> {
        send_datagram(self.fd.as_raw_fd(), frame)
    }

    fn prepare_reconnect(&self) -> io::Result<OwnedFd> {
        self.endpoint.open()
    }

    fn commit_reconnect(&mut self, pending: OwnedFd) {
        // The old descriptor is closed when the replaced value drops.
        self.fd = pending;
    }
}
