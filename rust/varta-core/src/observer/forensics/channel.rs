//! The SDK channel (`docs/finding-hangs.md#the-sdk-channel`): finding the
//! announcement among a process's descriptors, checking its header, and
//! signalling the process (`docs/security.md#forensics-signals`); reading
//! the memfd's dump.

use super::super::procfs;
use super::{HEADER_MAGIC, MEMFD_LINK};
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// A channel header (`varta-forensics v1 pid=… signal=… tid=… request_fd=…`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub pid: u32,
    pub signal: i32,
    /// The SDK's helper thread (signalled instead of the whole process).
    pub tid: Option<u32>,
    /// The write end of the SDK's request pipe, in the process's table.
    pub request_fd: Option<u32>,
}

/// Parse the header line (without or with its newline).
pub fn parse_header(line: &[u8]) -> Option<Header> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let rest = std::str::from_utf8(line.strip_prefix(HEADER_MAGIC)?).ok()?;
    let (mut pid, mut signal, mut tid, mut request_fd) = (None, None, None, None);
    for kv in rest.split_ascii_whitespace() {
        let (k, v) = kv.split_once('=')?;
        match k {
            "pid" => pid = Some(v.parse().ok()?),
            "signal" => signal = Some(v.parse().ok()?),
            "tid" => tid = Some(v.parse().ok()?),
            "request_fd" => request_fd = Some(v.parse().ok()?),
            _ => {} // later fields: ignored
        }
    }
    let signal: i32 = signal?;
    // Only real-time signals: a forged header can never make the observer
    // send SIGKILL, SIGTERM or the like.
    if !(libc::SIGRTMIN()..=libc::SIGRTMAX()).contains(&signal) {
        return None;
    }
    Some(Header {
        pid: pid?,
        signal,
        tid,
        request_fd,
    })
}

/// What the descriptor table of a process says about the channel.
#[derive(Debug)]
pub enum Announcement {
    /// No channel (or it could not be read).
    None,
    /// A channel whose header names another pid (inherited across fork by a
    /// process that did not set up its own): not signalled.
    PidMismatch,
    /// A channel for this pid: the memfd (opened read-only) and its header.
    Found { memfd: OwnedFd, header: Header },
}

/// Look for the channel of `pid` in `/proc/<pid>/fd`.
pub fn find_announcement(pid: u32) -> Announcement {
    let dir = PathBuf::from(format!("/proc/{pid}/fd"));
    let Ok(entries) = fs::read_dir(&dir) else {
        return Announcement::None;
    };
    let mut mismatch = false;
    for e in entries.flatten() {
        let Ok(target) = fs::read_link(e.path()) else {
            continue;
        };
        if target.as_os_str().as_encoded_bytes() != MEMFD_LINK {
            continue;
        }
        // Non-blocking, and only a regular file (a memfd is one): whatever
        // the link says, a FIFO or a device is never read.
        let Ok(f) = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(e.path())
        else {
            continue;
        };
        if !f.metadata().is_ok_and(|m| m.file_type().is_file()) {
            continue;
        }
        let mut buf = [0u8; 256];
        let fd = OwnedFd::from(f);
        let n = pread(fd.as_raw_fd(), &mut buf, 0).unwrap_or(0);
        let line = match buf[..n].iter().position(|&c| c == b'\n') {
            Some(i) => &buf[..=i],
            None => continue,
        };
        match parse_header(line) {
            Some(h) if h.pid == pid => {
                return Announcement::Found {
                    memfd: fd,
                    header: h,
                }
            }
            Some(_) => mismatch = true,
            None => {}
        }
    }
    if mismatch {
        Announcement::PidMismatch
    } else {
        Announcement::None
    }
}

pub(super) fn pread(fd: RawFd, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    loop {
        // SAFETY: writes stay within `buf`.
        let n = unsafe {
            libc::pread(
                fd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                offset as libc::off_t,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

pub(super) fn fd_size(fd: RawFd) -> u64 {
    // SAFETY: fstat fills one stat struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return 0;
    }
    st.st_size as u64
}

pub(super) fn read_range(fd: RawFd, from: u64, to: u64) -> Vec<u8> {
    let mut buf = vec![0u8; usize::try_from(to.saturating_sub(from)).unwrap_or(0)];
    let mut got = 0;
    while got < buf.len() {
        match pread(fd, &mut buf[got..], from + got as u64) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    buf.truncate(got);
    buf
}

/// Whether `sig`'s disposition in this process is the default action.
pub fn signal_is_default(sig: i32) -> io::Result<bool> {
    // SAFETY: zeroed sigaction is a valid out-parameter.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: a query (no new action).
    if unsafe { libc::sigaction(sig, std::ptr::null(), &mut old) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(old.sa_sigaction == libc::SIG_DFL)
}

const PIDFD_THREAD: libc::c_int = libc::O_EXCL;
const PIDFD_SIGNAL_THREAD: libc::c_uint = 1;

fn pidfd_send_signal(pidfd: RawFd, sig: i32, flags: libc::c_uint) -> io::Result<()> {
    // SAFETY: plain syscall on a pidfd we hold; no siginfo.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd,
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            flags,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Signal the SDK of the process pinned by `pidfd` (`pid`): its helper
/// thread `tid` where the kernel has thread pidfds (Linux ≥ 6.9), so the
/// stuck thread is not interrupted; else the process, through `pidfd`.
///
/// The thread pidfd is taken by number, so it is checked afterwards: the
/// pinned process is still alive (its pid is still its own), `tid` is one of
/// its threads, and the thread pidfd is still alive (so it names that
/// thread, which holds the tid).
pub(super) fn send(pidfd: RawFd, pid: u32, header: &Header) -> io::Result<()> {
    if let Some(tid) = header.tid {
        // SAFETY: plain syscall; the result is a fresh descriptor owned below.
        let rc = unsafe { libc::syscall(libc::SYS_pidfd_open, tid as libc::pid_t, PIDFD_THREAD) };
        if rc >= 0 {
            // SAFETY: `rc` is a new descriptor nobody else owns.
            let tfd = unsafe { OwnedFd::from_raw_fd(rc as RawFd) };
            let ours = !procfs::pidfd_exited(pidfd)
                && Path::new(&format!("/proc/{pid}/task/{tid}")).exists()
                && !procfs::pidfd_exited(tfd.as_raw_fd());
            if ours {
                return pidfd_send_signal(tfd.as_raw_fd(), header.signal, PIDFD_SIGNAL_THREAD);
            }
        }
    }
    pidfd_send_signal(pidfd, header.signal, 0)
}

pub(super) fn open_request(pid: u32, fd: u32) -> Option<OwnedFd> {
    let path = format!("/proc/{pid}/fd/{fd}");
    let target = fs::read_link(&path).ok()?;
    if !target.as_os_str().as_encoded_bytes().starts_with(b"pipe:[") {
        return None;
    }
    let f = fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(&path)
        .ok()?;
    Some(OwnedFd::from(f))
}
