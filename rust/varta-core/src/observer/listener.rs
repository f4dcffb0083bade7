//! The Unix-domain datagram listener (`docs/configuration.md#listeners-and-transports`, `docs/observer.md#ingress`, `docs/observer.md#credentials`).
//!
//! Binding follows upstream: the umask is tightened while `bind(2)` creates
//! the socket file, then the file is `chmod`ed to the requested mode; a stale
//! socket file (nobody answers a probe `connect`) is replaced, a live one or a
//! non-socket file is refused with `EADDRINUSE`. `SO_PASSCRED` is mandatory,
//! so every datagram carries the sender's kernel-attested pid/uid/gid.
//! `SO_PASSPIDFD` (Linux ≥ 6.5) is enabled when the kernel has it (docs/observer.md#credentials):
//! every datagram then also carries a pidfd of its sender (`SCM_PIDFD`), which
//! pins *that* process, so a `/proc` identity read can be checked against the
//! sender's death (see [`crate::observer::procfs::pidfd_exited`]). A kernel
//! without it (`ENOPROTOOPT`/`EINVAL`) leaves the listener in credentials-only
//! mode, as before; [`UdsListener::pidfd_mode`] says which one is active.
//!
//! Receiving drains the socket in batches with `recvmmsg(2)` into fixed,
//! pre-allocated 33-byte buffers (one byte more than a frame, so an over-long
//! datagram is recognisable) with control space for `SCM_CREDENTIALS`, a
//! handful of `SCM_RIGHTS` descriptors and one `SCM_PIDFD`. Passed
//! descriptors are closed at once (`MSG_CMSG_CLOEXEC` keeps them from leaking
//! into children meanwhile); a datagram whose control data did not fit is
//! flagged (`MSG_CTRUNC`). A batch's pidfds stay open while it is
//! processed; afterwards the most recent ones ([`PIDFD_KEEP`]) are kept a little
//! longer (cheaper pidfds for active senders) and the rest closed at the
//! next receive; [`UdsListener::release_pidfds`] (idle socket, `close`,
//! drop) closes them all, so every pidfd received is closed exactly once.
//! Nothing here allocates after `bind`.
//!
//! Why every datagram gets its pidfd, not only those whose identity is read:
//! the kernel decides at the receive (the socket flag, and whether the
//! control buffer has room left) before we have seen the datagram, while
//! whether its identity is read depends on its content and the tracker; a
//! datagram received without its pidfd can never get it afterwards (a pidfd
//! opened by pid pins whoever holds the pid *now*). Toggling `SO_PASSPIDFD`
//! or the control room per batch would therefore leave unverified exactly
//! the datagrams that needed it whenever the guess was wrong; peeking first
//! (`MSG_PEEK` with `SO_PEEK_OFF`) is a second pass over every datagram and
//! is thrown off by over-long ones (the offset moves only by the bytes
//! copied). So each datagram pays the pidfd's creation in the receive and a
//! share of one `close_range` per run of closes; the liveness polls and `/proc` reads
//! are paid only when identity is read. A full descriptor table makes the
//! kernel send an error instead of a pidfd: that datagram's identity is not
//! trusted (fail closed) and counted as unavailable.

#[cfg(feature = "bench")]
pub use super::bench::{bench_recv_floor, thread_cpu_ns};
use super::cmsg::{parse_message, CmsgBuf, Meta, CMSG_BUF_LEN};
pub use super::cmsg::{PeerCred, SenderPidfd, MAX_PASSED_FDS, SCM_PIDFD, SO_PASSPIDFD};
use crate::frame::FRAME_LEN;
use crate::sys::{self, with_path_context as with_context, SunPathError};
pub use crate::sys::{errno_error, error_errno, wait_readable, ErrnoMessage};
use std::ffi::CString;
use std::fmt;
use std::io;
use std::mem::zeroed;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Datagrams taken per `recvmmsg(2)` call.
pub const RECV_BATCH: usize = 64;
/// Receive buffer per datagram: a frame plus one byte to spot over-long ones.
pub const RECV_BUF_LEN: usize = FRAME_LEN + 1;
/// Pidfds of past batches kept open: at least the most recent
/// `PIDFD_KEEP`, at most [`PIDFD_KEEP_MAX`] (then the oldest are closed
/// down to `PIDFD_KEEP` in one go, mostly one `close_range` for them all,
/// instead of a close per receive when batches are small). The kernel backs
/// all pidfds of one process with one pidfs entry that lives only while
/// some pidfd of it is open: closing every pidfd right after its batch made
/// each batch of a steady sender build that entry anew, which measured
/// several times the cost of the pidfd itself when batches are small (an
/// observer that keeps up receives one or two datagrams at a time).
/// Keeping recent ones open lets an active sender's next pidfd reuse it. At
/// most `PIDFD_KEEP_MAX` plus one batch are open at once, and all of them
/// are closed when the socket goes idle ([`UdsListener::release_pidfds`]).
pub const PIDFD_KEEP: usize = 32;
/// See [`PIDFD_KEEP`].
pub const PIDFD_KEEP_MAX: usize = PIDFD_KEEP + 64;

/// One received datagram as the listener saw it.
#[derive(Clone, Copy, Debug)]
pub struct Datagram<'a> {
    /// The received bytes (at most [`RECV_BUF_LEN`]).
    pub data: &'a [u8],
    /// The datagram did not fit the buffer (so it was longer than a frame).
    pub overlong: bool,
    /// Sender credentials, if the kernel attached them.
    pub creds: Option<PeerCred>,
    /// The control data was truncated (`MSG_CTRUNC`).
    pub ctrunc: bool,
    /// Descriptors the sender passed, already closed.
    pub fds_closed: u32,
    /// The sender's pidfd (valid until the listener's next batch).
    pub pidfd: SenderPidfd,
}

impl<'a> Datagram<'a> {
    /// Exactly one frame long (anything else is counted as truncated and
    /// never decoded).
    #[inline]
    pub fn frame_bytes(&self) -> Option<&'a [u8; FRAME_LEN]> {
        if self.overlong {
            return None;
        }
        self.data.try_into().ok()
    }
}

/// Pidfd bookkeeping of a Unix listener (tests assert no descriptor leaks).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PidfdCounters {
    /// Pidfds the kernel installed in our descriptor table.
    pub received: u64,
    /// Of those, closed again (equal to `received` between batches).
    pub closed: u64,
    /// Datagrams whose `SCM_PIDFD` carried an error instead of a pidfd, or
    /// that lacked it although pidfds are on.
    pub unavailable: u64,
}

/// The socket address of a listener path: a non-empty pathname (no
/// abstract names), with errors that name it.
pub(crate) fn listen_addr(path: &Path) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    let bytes = path.as_os_str().as_bytes();
    let invalid = || {
        errno_error(
            libc::EINVAL,
            format!("invalid socket path {:?}", path.display().to_string()),
        )
    };
    if bytes.is_empty() {
        return Err(invalid());
    }
    sys::sockaddr_un(bytes, false).map_err(|e| match e {
        SunPathError::Nul => invalid(),
        SunPathError::TooLong { limit } => errno_error(
            libc::ENAMETOOLONG,
            format!(
                "socket path {} is {} bytes; the limit is {limit}",
                path.display(),
                bytes.len(),
            ),
        ),
    })
}

/// Make room for a new socket at `path`: nothing there is fine; a stale
/// socket file is unlinked; a live listener or a non-socket is refused.
pub(crate) fn clear_stale(
    path: &Path,
    cpath: &CString,
    addr: &libc::sockaddr_un,
    len: u32,
) -> io::Result<()> {
    let st = match sys::lstat(cpath) {
        Ok(st) => st,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        Err(e) => return Err(with_context(e, "cannot inspect", path)),
    };
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(errno_error(
            libc::EADDRINUSE,
            format!(
                "{} exists and is not a socket; refusing to replace it",
                path.display()
            ),
        ));
    }
    let probe = sys::dgram_socket(libc::AF_UNIX, true)?;
    let e = match sys::connect(probe.as_raw_fd(), addr, len) {
        Ok(()) => {
            return Err(errno_error(
                libc::EADDRINUSE,
                format!(
                    "varta observer already running on {} (a live listener answered)",
                    path.display()
                ),
            ))
        }
        Err(e) => e,
    };
    match e.raw_os_error().unwrap_or(0) {
        libc::ECONNREFUSED => match sys::unlink(cpath) {
            Err(e) if e.raw_os_error() != Some(libc::ENOENT) => {
                Err(with_context(e, "cannot remove stale socket", path))
            }
            _ => Ok(()),
        },
        libc::ENOENT => Ok(()),
        e => Err(with_context(
            io::Error::from_raw_os_error(e),
            "cannot probe existing socket",
            path,
        )),
    }
}

/// A bound `AF_UNIX`/`SOCK_DGRAM` listener with its receive batch.
pub struct UdsListener {
    fd: Arc<OwnedFd>,
    path: PathBuf,
    cpath: CString,
    dev: libc::dev_t,
    ino: libc::ino_t,
    rcvbuf_bytes: u64,
    /// The process that bound the socket: a forked child that inherited
    /// the listener must never unlink the parent's socket file.
    owner_pid: u32,
    bufs: Box<[[u8; RECV_BUF_LEN]; RECV_BATCH]>,
    cmsg: Box<[CmsgBuf; RECV_BATCH]>,
    meta: [Meta; RECV_BATCH],
    count: usize,
    closed: bool,
    /// `SO_PASSPIDFD` is on: every datagram brings its sender's pidfd.
    pidfd_mode: bool,
    pidfd_counters: PidfdCounters,
    /// Pidfds of past batches still open, oldest first (at most
    /// [`PIDFD_KEEP_MAX`] between receives).
    kept: [RawFd; PIDFD_KEEP_MAX + RECV_BATCH],
    kept_len: usize,
}

impl fmt::Debug for UdsListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UdsListener")
            .field("fd", &self.fd.as_raw_fd())
            .field("path", &self.path)
            .field("rcvbuf_bytes", &self.rcvbuf_bytes)
            .field("pidfd_mode", &self.pidfd_mode)
            .finish_non_exhaustive()
    }
}

impl UdsListener {
    /// Bind `path` with file mode `mode` (≤ 0o777) and request `rcvbuf`
    /// bytes of receive buffer (0 = kernel default).
    pub fn bind(path: &Path, mode: u32, rcvbuf: u32) -> io::Result<UdsListener> {
        if mode > 0o777 {
            return Err(errno_error(
                libc::EINVAL,
                format!("socket mode {mode:#o} is not a permission mode (at most 0o777)"),
            ));
        }
        if rcvbuf > i32::MAX as u32 {
            return Err(errno_error(
                libc::EINVAL,
                format!("uds_rcvbuf_bytes {rcvbuf} exceeds {}", i32::MAX),
            ));
        }
        let (addr, len) = listen_addr(path)?;
        let cpath = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| errno_error(libc::EINVAL, "socket path contains NUL".into()))?;
        clear_stale(path, &cpath, &addr, len)?;

        let fd = sys::dgram_socket(libc::AF_UNIX, true)?;
        let raw = fd.as_raw_fd();
        sys::set_int_opt(raw, libc::SOL_SOCKET, libc::SO_PASSCRED, 1)
            .map_err(|e| with_context(e, "SO_PASSCRED on", path))?;
        let pidfd_mode = enable_passpidfd(raw);
        if rcvbuf > 0 {
            sys::set_int_opt(raw, libc::SOL_SOCKET, libc::SO_RCVBUF, rcvbuf as i32)
                .map_err(|e| with_context(e, "SO_RCVBUF on", path))?;
        }
        let rcvbuf_bytes = sys::get_int_opt(raw, libc::SOL_SOCKET, libc::SO_RCVBUF)
            .map(|v| v.max(0) as u64)
            .unwrap_or(0);

        // Tighten the umask so the socket file never exists with more bits
        // than requested, bind, restore, then set the exact mode.
        let tighten = (0o777 & !mode) as libc::mode_t;
        // umask cannot fail; restored right after bind.
        let old = sys::umask(tighten);
        sys::umask(old | tighten);
        let bound = sys::bind(raw, &addr, len);
        sys::umask(old);
        if let Err(e) = bound {
            if e.raw_os_error() == Some(libc::EADDRINUSE) {
                return Err(errno_error(
                    libc::EADDRINUSE,
                    format!("cannot bind {}: address already in use", path.display()),
                ));
            }
            return Err(with_context(e, "cannot bind", path));
        }
        let unlink_now = |e: io::Error, what: &str| {
            // We created this file.
            let _ = sys::unlink(&cpath);
            with_context(e, what, path)
        };
        if let Err(e) = sys::chmod(&cpath, mode as libc::mode_t) {
            return Err(unlink_now(e, "cannot chmod"));
        }
        let st = match sys::lstat(&cpath) {
            Ok(st) => st,
            Err(e) => return Err(unlink_now(e, "cannot stat")),
        };
        Ok(UdsListener {
            fd: Arc::new(fd),
            path: path.to_path_buf(),
            cpath,
            dev: st.st_dev,
            ino: st.st_ino,
            rcvbuf_bytes,
            owner_pid: std::process::id(),
            bufs: Box::new([[0u8; RECV_BUF_LEN]; RECV_BATCH]),
            cmsg: Box::new([CmsgBuf([0u8; CMSG_BUF_LEN]); RECV_BATCH]),
            meta: [Meta::default(); RECV_BATCH],
            count: 0,
            closed: false,
            pidfd_mode,
            pidfd_counters: PidfdCounters::default(),
            kept: [-1; PIDFD_KEEP_MAX + RECV_BATCH],
            kept_len: 0,
        })
    }

    /// Whether `SO_PASSPIDFD` is active (each datagram brings its sender's
    /// pidfd) or the listener runs on credentials alone.
    pub fn pidfd_mode(&self) -> bool {
        self.pidfd_mode
    }

    /// Pidfds received, closed and unavailable so far.
    pub fn pidfd_counters(&self) -> PidfdCounters {
        self.pidfd_counters
    }

    /// Close every pidfd the listener holds: the last batch's and the
    /// recent ones it keeps (see [`PIDFD_KEEP`]). Idempotent; `close` and
    /// drop call it too, and the observer calls it when a drain finds the
    /// socket idle. After this the batch's datagrams report
    /// [`SenderPidfd::Unavailable`] (never a stale descriptor number).
    pub fn release_pidfds(&mut self) {
        self.retire_batch();
        self.close_oldest_kept(0);
    }

    /// Move the last batch's pidfds to the kept list (oldest first); their
    /// datagrams report [`SenderPidfd::Unavailable`] from now on.
    fn retire_batch(&mut self) {
        for m in &mut self.meta[..self.count] {
            if let SenderPidfd::Fd(fd) = m.pidfd {
                m.pidfd = SenderPidfd::Unavailable;
                self.kept[self.kept_len] = fd;
                self.kept_len += 1;
            }
        }
    }

    /// Close the oldest kept pidfds until at most `keep` remain.
    ///
    /// The kernel installs each pidfd at the lowest free number while we
    /// still hold the others, so kept pidfds come mostly in ascending runs:
    /// a run of consecutive numbers is closed with one `close_range(2)`
    /// instead of one `close(2)` each. That is safe because every number in
    /// such a run is a descriptor we received and have not closed, so no
    /// other descriptor can carry it; numbers that are not consecutive are
    /// simply separate runs.
    fn close_oldest_kept(&mut self, keep: usize) {
        if self.kept_len <= keep {
            return;
        }
        let n = self.kept_len - keep;
        let mut run: Option<(RawFd, RawFd)> = None;
        for &fd in &self.kept[..n] {
            run = match run {
                Some((lo, hi)) if fd == hi + 1 => Some((lo, fd)),
                Some((lo, hi)) => {
                    self.pidfd_counters.closed += sys::close_run(lo, hi);
                    Some((fd, fd))
                }
                None => Some((fd, fd)),
            };
        }
        if let Some((lo, hi)) = run {
            self.pidfd_counters.closed += sys::close_run(lo, hi);
        }
        self.kept.copy_within(n..self.kept_len, 0);
        self.kept_len = keep;
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Effective `SO_RCVBUF` as the kernel reports it.
    pub fn rcvbuf_bytes(&self) -> u64 {
        self.rcvbuf_bytes
    }

    /// A shared handle on the socket, for waiting on readiness without
    /// borrowing the listener.
    pub fn wait_fd(&self) -> Arc<OwnedFd> {
        Arc::clone(&self.fd)
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Receive up to [`RECV_BATCH`] datagrams without blocking. `Ok(0)` when
    /// nothing is queued. Results are read with [`UdsListener::datagram`].
    pub fn recv_batch(&mut self) -> io::Result<usize> {
        self.retire_batch();
        self.count = 0;
        let r = self.recv_into_batch();
        // After the receive, so the new pidfds of a sender still in the
        // kept list found its pidfs entry alive (see [`PIDFD_KEEP`]).
        if self.closed {
            self.close_oldest_kept(0);
        } else if self.kept_len > PIDFD_KEEP_MAX {
            self.close_oldest_kept(PIDFD_KEEP);
        }
        r
    }

    fn recv_into_batch(&mut self) -> io::Result<usize> {
        if self.closed {
            return Ok(0);
        }
        // SAFETY: iovec/mmsghdr are plain old data; zero is valid.
        let mut iov: [libc::iovec; RECV_BATCH] = unsafe { zeroed() };
        let mut hdrs: [libc::mmsghdr; RECV_BATCH] = unsafe { zeroed() };
        for i in 0..RECV_BATCH {
            iov[i].iov_base = self.bufs[i].as_mut_ptr().cast();
            iov[i].iov_len = RECV_BUF_LEN;
            let h = &mut hdrs[i].msg_hdr;
            h.msg_iov = &mut iov[i];
            h.msg_iovlen = 1;
            h.msg_control = self.cmsg[i].0.as_mut_ptr().cast();
            h.msg_controllen = CMSG_BUF_LEN as _;
        }
        // SAFETY: every header points into buffers owned by `self` that
        // outlive the call; lengths match the allocations.
        let n = unsafe {
            sys::recvmmsg(
                self.fd.as_raw_fd(),
                &mut hdrs,
                libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC,
            )
        }?;
        for (i, hdr) in hdrs.iter().enumerate().take(n) {
            let m = parse_message(hdr, self.pidfd_mode);
            match m.pidfd {
                SenderPidfd::Fd(_) => self.pidfd_counters.received += 1,
                SenderPidfd::Unavailable => self.pidfd_counters.unavailable += 1,
                SenderPidfd::NotRequested => {}
            }
            self.meta[i] = m;
        }
        self.count = n;
        Ok(n)
    }

    /// Datagrams in the last batch.
    #[inline]
    pub fn batch_len(&self) -> usize {
        self.count
    }

    /// The `i`-th datagram of the last batch.
    #[inline]
    pub fn datagram(&self, i: usize) -> Datagram<'_> {
        assert!(i < self.count, "datagram index out of range");
        let m = &self.meta[i];
        Datagram {
            data: &self.bufs[i][..m.len as usize],
            overlong: m.overlong,
            creds: m.creds,
            ctrunc: m.ctrunc,
            fds_closed: m.fds_closed,
            pidfd: m.pidfd,
        }
    }

    /// Stop listening: unlink the socket file only if it is still ours
    /// (same device and inode, and we are the process that bound it), then
    /// drop our socket handle. Idempotent.
    pub fn close(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        self.release_pidfds();
        self.count = 0;
        if std::process::id() != self.owner_pid {
            return;
        }
        if let Ok(st) = sys::lstat(&self.cpath) {
            if st.st_dev == self.dev && st.st_ino == self.ino {
                let _ = sys::unlink(&self.cpath);
            }
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }
}

impl Drop for UdsListener {
    fn drop(&mut self) {
        self.close();
    }
}

/// Turn on `SO_PASSPIDFD`; false if this kernel does not have it. Only
/// `ENOPROTOOPT` (older kernels) and `EINVAL` are expected; any other error
/// also leaves the listener on credentials alone, which is what it was
/// before pidfds existed, so it is not worth refusing to start over.
fn enable_passpidfd(fd: RawFd) -> bool {
    sys::set_int_opt(fd, libc::SOL_SOCKET, SO_PASSPIDFD, 1).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    use std::os::unix::net::UnixDatagram;

    fn tmp(name: &str) -> (PathBuf, PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "varta-listener-{}-{}-{name}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("obs.sock");
        (dir, p)
    }

    #[test]
    fn bind_mode_stale_live_and_non_socket() {
        let (dir, p) = tmp("bind");
        let mut l = UdsListener::bind(&p, 0o600, 0).unwrap();
        let md = std::fs::symlink_metadata(&p).unwrap();
        assert!(md.file_type().is_socket());
        assert_eq!(md.permissions().mode() & 0o777, 0o600);

        let e = UdsListener::bind(&p, 0o600, 0).unwrap_err();
        assert_eq!(error_errno(&e), Some(libc::EADDRINUSE));
        assert!(e.to_string().contains("already running"), "{e}");

        l.close();
        assert!(!p.exists(), "close unlinks our socket file");

        // A stale socket file (its owner gone without unlinking) is replaced.
        let stale = UnixDatagram::bind(&p).unwrap();
        drop(stale);
        assert!(p.exists());
        let l2 = UdsListener::bind(&p, 0o640, 0).unwrap();
        let md = std::fs::symlink_metadata(&p).unwrap();
        assert_eq!(md.permissions().mode() & 0o777, 0o640);
        drop(l2);
        assert!(!p.exists());

        std::fs::write(&p, b"not a socket").unwrap();
        let e = UdsListener::bind(&p, 0o600, 0).unwrap_err();
        assert_eq!(error_errno(&e), Some(libc::EADDRINUSE));
        assert_eq!(std::fs::read(&p).unwrap(), b"not a socket");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn close_leaves_a_replaced_file_alone() {
        let (dir, p) = tmp("replaced");
        let mut l = UdsListener::bind(&p, 0o600, 0).unwrap();
        std::fs::remove_file(&p).unwrap();
        std::fs::write(&p, b"someone else's").unwrap();
        l.close();
        assert_eq!(std::fs::read(&p).unwrap(), b"someone else's");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn batch_receive_with_credentials_and_lengths() {
        let (dir, p) = tmp("recv");
        let mut l = UdsListener::bind(&p, 0o600, 1 << 16).unwrap();
        assert!(l.rcvbuf_bytes() > 0);
        let tx = UnixDatagram::unbound().unwrap();
        tx.send_to(&[7u8; 32], &p).unwrap();
        tx.send_to(&[1u8; 31], &p).unwrap();
        tx.send_to(&[2u8; 40], &p).unwrap();
        tx.send_to(&[], &p).unwrap();
        assert!(wait_readable(&[l.raw_fd()], Some(1_000_000_000)).unwrap());
        assert_eq!(l.recv_batch().unwrap(), 4);
        let me = std::process::id();
        let d0 = l.datagram(0);
        assert_eq!(d0.frame_bytes(), Some(&[7u8; 32]));
        let c = d0.creds.unwrap();
        assert_eq!(c.pid, me);
        // SAFETY: getuid cannot fail.
        assert_eq!(c.uid, unsafe { libc::getuid() });
        assert!(l.datagram(1).frame_bytes().is_none());
        let d2 = l.datagram(2);
        assert!(d2.overlong && d2.frame_bytes().is_none());
        assert_eq!(l.datagram(3).data.len(), 0);
        assert_eq!(l.recv_batch().unwrap(), 0);
        assert!(!wait_readable(&[l.raw_fd()], Some(1_000_000)).unwrap());
        drop(l);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Whether this kernel has `SO_PASSPIDFD` (Linux ≥ 6.5).
    fn kernel_has_passpidfd() -> bool {
        let s = sys::dgram_socket(libc::AF_UNIX, true).unwrap();
        enable_passpidfd(s.as_raw_fd())
    }

    /// Fork a child that sends `data` to `path` and exits at once; reap it
    /// before returning, so it is gone before anyone receives.
    fn send_from_reaped_child(path: &Path, data: &[u8]) -> u32 {
        let tx = UnixDatagram::unbound().unwrap();
        let (addr, len) = listen_addr(path).unwrap();
        // SAFETY: the child only calls async-signal-safe functions.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: buffers valid for the call; the child exits right after.
            unsafe {
                let rc = libc::sendto(
                    tx.as_raw_fd(),
                    data.as_ptr().cast(),
                    data.len(),
                    0,
                    (&addr as *const libc::sockaddr_un).cast(),
                    len,
                );
                libc::_exit(if rc < 0 { 1 } else { 0 });
            }
        }
        let mut status = 0;
        // SAFETY: our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
        pid as u32
    }

    #[test]
    fn release_closes_only_the_batch_pidfds_around_a_foreign_descriptor() {
        let (dir, p) = tmp("runs");
        let mut l = UdsListener::bind(&p, 0o600, 0).unwrap();
        let me = std::process::id();
        let fds: Vec<RawFd> = (0..5)
            .map(|_| {
                use std::os::fd::IntoRawFd;
                crate::observer::procfs::pidfd_open(me)
                    .unwrap()
                    .into_raw_fd()
            })
            .collect();
        // The middle one is not the batch's: a run must not swallow it.
        let batch = [fds[0], fds[1], fds[3], fds[4]];
        for (m, &fd) in l.meta.iter_mut().zip(&batch) {
            m.pidfd = SenderPidfd::Fd(fd);
        }
        l.count = batch.len();
        l.release_pidfds();
        assert_eq!(l.pidfd_counters().closed, 4);
        // SAFETY: F_GETFD only inspects the descriptor.
        assert!(
            unsafe { libc::fcntl(fds[2], libc::F_GETFD) } >= 0,
            "foreign fd kept"
        );
        // SAFETY: ours; closed once.
        unsafe { libc::close(fds[2]) };
        l.count = 0;
        drop(l);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn kept_pidfds_stay_bounded_and_are_all_closed_on_release() {
        let (dir, p) = tmp("keep");
        let mut l = UdsListener::bind(&p, 0o600, 1 << 20).unwrap();
        if !l.pidfd_mode() {
            eprintln!("kernel without SO_PASSPIDFD: nothing to check");
            return;
        }
        let total = 3 * (PIDFD_KEEP_MAX + RECV_BATCH) as u64;
        let sender = std::thread::spawn({
            let p = p.clone();
            move || {
                let tx = UnixDatagram::unbound().unwrap();
                for _ in 0..total {
                    // Blocking: waits while the receive queue is full.
                    tx.send_to(&[7u8; 32], &p).unwrap();
                }
            }
        });
        let mut got = 0u64;
        while got < total {
            assert!(wait_readable(&[l.raw_fd()], Some(5_000_000_000)).unwrap());
            let n = l.recv_batch().unwrap();
            got += n as u64;
            let c = l.pidfd_counters();
            let open = c.received - c.closed;
            assert!(
                open <= (PIDFD_KEEP_MAX + n) as u64,
                "{open} open after a batch of {n}"
            );
        }
        sender.join().unwrap();
        assert_eq!(l.pidfd_counters().received, total);
        l.release_pidfds();
        let c = l.pidfd_counters();
        assert_eq!(c.closed, c.received);
        drop(l);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn pidfds_come_with_datagrams_and_are_closed_on_release() {
        let (dir, p) = tmp("pidfd");
        let mut l = UdsListener::bind(&p, 0o600, 1 << 16).unwrap();
        assert_eq!(l.pidfd_mode(), kernel_has_passpidfd());
        if !l.pidfd_mode() {
            eprintln!("kernel without SO_PASSPIDFD: credentials-only mode checked only");
        }
        let tx = UnixDatagram::unbound().unwrap();
        for _ in 0..3 {
            tx.send_to(&[7u8; 32], &p).unwrap();
        }
        let child = send_from_reaped_child(&p, &[8u8; 32]);
        assert!(wait_readable(&[l.raw_fd()], Some(1_000_000_000)).unwrap());
        assert_eq!(l.recv_batch().unwrap(), 4);
        let me = std::process::id();
        for i in 0..3 {
            let d = l.datagram(i);
            assert_eq!(d.creds.unwrap().pid, me);
            match d.pidfd {
                SenderPidfd::Fd(fd) => {
                    assert!(l.pidfd_mode());
                    assert!(!crate::observer::procfs::pidfd_exited(fd), "we are alive");
                }
                SenderPidfd::NotRequested => assert!(!l.pidfd_mode()),
                SenderPidfd::Unavailable => panic!("a live sender's pidfd is missing"),
            }
        }
        // The child was reaped before the receive: its pidfd (kernels ≥ 6.16
        // hand out pidfds of reaped senders) reports the exit, or the kernel
        // sent an error value instead (older kernels). Either way not alive.
        let d = l.datagram(3);
        assert_eq!(d.creds.unwrap().pid, child);
        match d.pidfd {
            SenderPidfd::Fd(fd) => assert!(crate::observer::procfs::pidfd_exited(fd)),
            SenderPidfd::Unavailable => assert!(l.pidfd_mode()),
            SenderPidfd::NotRequested => assert!(!l.pidfd_mode()),
        }
        let c = l.pidfd_counters();
        if l.pidfd_mode() {
            assert_eq!(c.received + c.unavailable, 4);
            assert!(c.received >= 3);
            assert_eq!(c.closed, 0, "open until the batch is released");
        } else {
            assert_eq!(c, PidfdCounters::default());
        }
        l.release_pidfds();
        l.release_pidfds(); // idempotent
        let c = l.pidfd_counters();
        assert_eq!(c.closed, c.received);
        assert!(matches!(
            l.datagram(0).pidfd,
            SenderPidfd::Unavailable | SenderPidfd::NotRequested
        ));

        // Later batches keep recent pidfds open (bounded); close releases all.
        tx.send_to(&[7u8; 32], &p).unwrap();
        assert!(wait_readable(&[l.raw_fd()], Some(1_000_000_000)).unwrap());
        assert_eq!(l.recv_batch().unwrap(), 1);
        tx.send_to(&[7u8; 32], &p).unwrap();
        assert!(wait_readable(&[l.raw_fd()], Some(1_000_000_000)).unwrap());
        assert_eq!(l.recv_batch().unwrap(), 1);
        l.close();
        let c = l.pidfd_counters();
        assert_eq!(c.closed, c.received);
        drop(l);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
