//! The libc calls the agent transports and the observer listeners share:
//! datagram sockets, `sockaddr_un`, socket options, errno helpers and the
//! `cvt` check. Most of the crate's socket `unsafe` lives here, each block
//! with its reason, so callers work with `io::Result`s and owned
//! descriptors.
//!
//! | item | job |
//! |---|---|
//! | [`ErrnoMessage`], [`errno_error`], [`error_errno`] | an `io::Error` that keeps an errno next to a readable message (the binding raises `OSError(errno, message)`) |
//! | `cvt`, `last_error`, `errno`, `with_path_context` | errno plumbing |
//! | `sockaddr_un` | a Unix socket address from a path (pathname or abstract) |
//! | `dgram_socket`, `connect`, `bind`, `set_int_opt`, `get_int_opt` | sockets, non-blocking and close-on-exec |
//! | `lstat`, `unlink`, `chmod`, `umask` | the socket file |
//! | `send` | one datagram, retried on `EINTR` |
//! | `recvmmsg`, `close_run`, [`wait_readable`] | receiving side (Linux) |

use std::fmt;
use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// An `io::Error` payload that keeps an errno next to a readable message, so
/// the binding can raise `OSError(errno, message)` (e.g. `EADDRINUSE`,
/// "already running").
#[derive(Debug, Clone)]
pub struct ErrnoMessage {
    pub errno: i32,
    pub message: String,
}

impl fmt::Display for ErrnoMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ErrnoMessage {}

/// Build an `io::Error` carrying `errno` and `message`.
pub fn errno_error(errno: i32, message: String) -> io::Error {
    let kind = io::Error::from_raw_os_error(errno).kind();
    io::Error::new(kind, ErrnoMessage { errno, message })
}

/// The errno of an error made by [`errno_error`] or by the OS, if any.
pub fn error_errno(e: &io::Error) -> Option<i32> {
    e.raw_os_error().or_else(|| {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<ErrnoMessage>())
            .map(|m| m.errno)
    })
}

/// An OS error `e` while doing `what` to `path`, as "`what` `path`: `e`"
/// with its errno kept; any other error unchanged.
#[cfg(target_os = "linux")] // observer side only
pub(crate) fn with_path_context(e: io::Error, what: &str, path: &std::path::Path) -> io::Error {
    match e.raw_os_error() {
        Some(errno) => errno_error(errno, format!("{what} {}: {e}", path.display())),
        None => e,
    }
}

pub(crate) fn last_error() -> io::Error {
    io::Error::last_os_error()
}

#[cfg(target_os = "linux")] // observer side only
pub(crate) fn errno() -> i32 {
    last_error().raw_os_error().unwrap_or(0)
}

/// A libc return value: negative = the thread's errno as an error.
pub(crate) fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(last_error())
    } else {
        Ok(rc)
    }
}

/// Why a path does not make a `sockaddr_un`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SunPathError {
    /// An embedded NUL in a pathname address (`EINVAL`).
    Nul,
    /// Longer than `sun_path` holds (`ENAMETOOLONG`); `limit` is the most
    /// bytes the path may have.
    TooLong { limit: usize },
}

/// The socket address of `path`. With `abstract_ok` a path starting with a
/// NUL byte is a Linux abstract name (no terminating NUL, may hold NULs);
/// otherwise it is a pathname and needs room for its terminating NUL.
pub(crate) fn sockaddr_un(
    bytes: &[u8],
    abstract_ok: bool,
) -> Result<(libc::sockaddr_un, libc::socklen_t), SunPathError> {
    // SAFETY: sockaddr_un is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let abstract_name = abstract_ok && bytes.first() == Some(&0);
    if !abstract_name && bytes.contains(&0) {
        return Err(SunPathError::Nul);
    }
    let room = addr.sun_path.len() - usize::from(!abstract_name);
    if bytes.len() > room {
        return Err(SunPathError::TooLong { limit: room });
    }
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    let base = std::mem::offset_of!(libc::sockaddr_un, sun_path);
    let len = base + bytes.len() + usize::from(!abstract_name);
    #[cfg(any(
        target_os = "macos",
        target_os = "ios",
        target_os = "freebsd",
        target_os = "netbsd",
        target_os = "openbsd",
        target_os = "dragonfly"
    ))]
    {
        addr.sun_len = len as u8;
    }
    Ok((addr, len as libc::socklen_t))
}

/// A close-on-exec `SOCK_DGRAM` socket of `family`, non-blocking if asked.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) fn dgram_socket(family: libc::c_int, nonblocking: bool) -> io::Result<OwnedFd> {
    let mut ty = libc::SOCK_DGRAM | libc::SOCK_CLOEXEC;
    if nonblocking {
        ty |= libc::SOCK_NONBLOCK;
    }
    // SAFETY: plain syscall; the fd is owned from here on.
    let fd = cvt(unsafe { libc::socket(family, ty, 0) })?;
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A close-on-exec `SOCK_DGRAM` socket of `family`, non-blocking if asked
/// (flags set after `socket(2)`, which has no `SOCK_*` flags here; sends
/// never raise `SIGPIPE`).
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub(crate) fn dgram_socket(family: libc::c_int, nonblocking: bool) -> io::Result<OwnedFd> {
    use std::os::fd::AsRawFd;
    // SAFETY: plain syscalls on a descriptor we own.
    let fd = cvt(unsafe { libc::socket(family, libc::SOCK_DGRAM, 0) })?;
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let raw = fd.as_raw_fd();
    unsafe {
        cvt(libc::fcntl(raw, libc::F_SETFD, libc::FD_CLOEXEC))?;
        if nonblocking {
            let fl = cvt(libc::fcntl(raw, libc::F_GETFL))?;
            cvt(libc::fcntl(raw, libc::F_SETFL, fl | libc::O_NONBLOCK))?;
        }
    }
    #[cfg(any(target_os = "macos", target_os = "ios", target_os = "freebsd"))]
    set_int_opt(raw, libc::SOL_SOCKET, libc::SO_NOSIGPIPE, 1)?;
    Ok(fd)
}

/// `connect(2)` to a Unix socket address from [`sockaddr_un`].
pub(crate) fn connect(fd: RawFd, addr: &libc::sockaddr_un, len: libc::socklen_t) -> io::Result<()> {
    // SAFETY: `addr` is a valid sockaddr_un of `len` bytes.
    cvt(unsafe { libc::connect(fd, (addr as *const libc::sockaddr_un).cast(), len) }).map(drop)
}

/// `bind(2)` to a Unix socket address from [`sockaddr_un`].
#[cfg(target_os = "linux")] // observer side only
pub(crate) fn bind(fd: RawFd, addr: &libc::sockaddr_un, len: libc::socklen_t) -> io::Result<()> {
    // SAFETY: `addr` is a valid sockaddr_un of `len` bytes.
    cvt(unsafe { libc::bind(fd, (addr as *const libc::sockaddr_un).cast(), len) }).map(drop)
}

/// `setsockopt(2)` of a plain value (an `int`, a `timeval`, …).
pub(crate) fn set_opt<T: Copy>(fd: RawFd, level: i32, name: i32, value: T) -> io::Result<()> {
    // SAFETY: `value` outlives the call and its size is passed.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// `setsockopt(2)` of an `int` option.
pub(crate) fn set_int_opt(fd: RawFd, level: i32, name: i32, value: i32) -> io::Result<()> {
    set_opt(fd, level, name, value)
}

/// `getsockopt(2)` of an `int` option.
#[cfg(target_os = "linux")] // observer side only
pub(crate) fn get_int_opt(fd: RawFd, level: i32, name: i32) -> io::Result<i32> {
    let mut value: i32 = 0;
    let mut len = size_of::<i32>() as libc::socklen_t;
    // SAFETY: `value`/`len` are valid for writes of the advertised size.
    cvt(unsafe { libc::getsockopt(fd, level, name, (&mut value as *mut i32).cast(), &mut len) })?;
    Ok(value)
}

#[cfg(target_os = "linux")] // observer side only
pub(crate) fn lstat(path: &std::ffi::CStr) -> io::Result<libc::stat> {
    // SAFETY: `st` is written by the kernel; the path is NUL-terminated.
    let mut st: libc::stat = unsafe { zeroed() };
    cvt(unsafe { libc::lstat(path.as_ptr(), &mut st) })?;
    Ok(st)
}

#[cfg(target_os = "linux")] // observer side only
pub(crate) fn unlink(path: &std::ffi::CStr) -> io::Result<()> {
    // SAFETY: NUL-terminated path.
    cvt(unsafe { libc::unlink(path.as_ptr()) }).map(drop)
}

#[cfg(target_os = "linux")] // observer side only
pub(crate) fn chmod(path: &std::ffi::CStr, mode: libc::mode_t) -> io::Result<()> {
    // SAFETY: NUL-terminated path.
    cvt(unsafe { libc::chmod(path.as_ptr(), mode) }).map(drop)
}

/// Set the process umask; returns the previous one (`umask(2)` cannot fail).
#[cfg(target_os = "linux")] // observer side only
pub(crate) fn umask(mask: libc::mode_t) -> libc::mode_t {
    // SAFETY: plain syscall without pointers.
    unsafe { libc::umask(mask) }
}

/// One `send(2)` of `buf` on a connected socket, retried on `EINTR` only.
/// No allocation: errors are raw-errno `io::Error`s.
#[inline]
pub(crate) fn send(fd: RawFd, buf: &[u8], flags: libc::c_int) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is valid for `buf.len()` bytes for the whole call.
        let n = unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), flags) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = last_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(err);
        }
    }
}

/// `recvmmsg(2)`'s flags argument: `c_int` in glibc, `c_uint` in musl.
#[cfg(all(target_os = "linux", not(target_env = "musl")))]
type RecvMmsgFlags = libc::c_int;
#[cfg(all(target_os = "linux", target_env = "musl"))]
type RecvMmsgFlags = libc::c_uint;

/// One non-blocking `recvmmsg(2)` into `hdrs` (each header pointing at
/// buffers that outlive the call): the count of messages received, 0 when
/// nothing is queued (`EAGAIN`, `ETIMEDOUT`); retried on `EINTR`.
///
/// # Safety
/// Every header in `hdrs` must point at valid `iovec`s and control buffers
/// of the lengths it advertises.
#[cfg(target_os = "linux")]
pub(crate) unsafe fn recvmmsg(
    fd: RawFd,
    hdrs: &mut [libc::mmsghdr],
    flags: libc::c_int,
) -> io::Result<usize> {
    loop {
        // SAFETY: the caller vouches for the headers; `hdrs.len()` of them.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                hdrs.as_mut_ptr(),
                hdrs.len() as u32,
                flags as RecvMmsgFlags,
                std::ptr::null_mut(),
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        match errno() {
            libc::EINTR => continue,
            libc::EAGAIN | libc::ETIMEDOUT => return Ok(0),
            e => return Err(io::Error::from_raw_os_error(e)),
        }
    }
}

/// Close the descriptors `lo..=hi`, all owned by the caller; returns how
/// many. One `close_range(2)` (Linux ≥ 5.9, older than any kernel with
/// `SO_PASSPIDFD`) for a run; plain `close(2)` each if it is refused (e.g. a
/// seccomp filter that does not know it).
#[cfg(target_os = "linux")]
pub(crate) fn close_run(lo: RawFd, hi: RawFd) -> u64 {
    debug_assert!(0 <= lo && lo <= hi);
    if lo < hi {
        // SAFETY: the caller owns every descriptor in the range; the raw
        // syscall avoids needing glibc ≥ 2.34 for the wrapper.
        let rc = unsafe { libc::syscall(libc::SYS_close_range, lo as u32, hi as u32, 0u32) };
        if rc == 0 {
            return (hi - lo + 1) as u64;
        }
    }
    for fd in lo..=hi {
        // SAFETY: as above; each closed once.
        unsafe { libc::close(fd) };
    }
    (hi - lo + 1) as u64
}

/// Wait until any of `fds` is readable or `timeout_ns` elapses (`None` =
/// forever). Returns whether something became readable. `EINTR` counts as
/// a wake-up with nothing ready (the caller re-checks signals and time).
#[cfg(target_os = "linux")]
pub fn wait_readable(fds: &[RawFd], timeout_ns: Option<u64>) -> io::Result<bool> {
    const MAX: usize = 16;
    let mut pfds = [libc::pollfd {
        fd: -1,
        events: 0,
        revents: 0,
    }; MAX];
    let n = fds.len().min(MAX);
    for (p, &fd) in pfds.iter_mut().zip(fds) {
        p.fd = fd;
        p.events = libc::POLLIN;
    }
    let ts;
    let tsp = match timeout_ns {
        Some(ns) => {
            ts = libc::timespec {
                tv_sec: (ns / 1_000_000_000) as libc::time_t,
                tv_nsec: (ns % 1_000_000_000) as libc::c_long,
            };
            &ts as *const libc::timespec
        }
        None => std::ptr::null(),
    };
    // SAFETY: `pfds` holds `n` initialised entries; `tsp` is null or valid.
    let rc = unsafe { libc::ppoll(pfds.as_mut_ptr(), n as libc::nfds_t, tsp, std::ptr::null()) };
    if rc < 0 {
        let e = last_error();
        if e.raw_os_error() == Some(libc::EINTR) {
            return Ok(false);
        }
        return Err(e);
    }
    Ok(rc > 0)
}

/// Serve heap allocations of `bytes` or more from mappings of their own,
/// unmapped when freed (glibc's `M_MMAP_THRESHOLD`). Fixing the threshold
/// also stops glibc from raising it after each large free, which otherwise
/// leaves a long-lived thread's heap at the high-water mark of its largest
/// transient buffers (a daemon's `/metrics` bodies:
/// docs/operations.md#resources). Process-wide, so only the daemon calls
/// it. Returns false where the C library has no such knob (musl, not Linux).
pub fn set_mmap_threshold(bytes: usize) -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let Ok(value) = libc::c_int::try_from(bytes) else {
            return false;
        };
        // SAFETY: mallopt only changes allocator parameters; any value is
        // accepted or refused (0) without touching existing allocations.
        unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, value) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        let _ = bytes;
        false
    }
}
