//! Allocation-free reads of the `/proc` identity of a sender
//! (`docs/observer.md#namespaces-and-generations`): pid-namespace inode, start time (generation) and
//! `pid_max`. Every function returns `None` (or a documented default) when
//! the file is missing or malformed; callers treat that as "unknown".
//!
//! With a pidfd of the sender ([`pidfd_exited`]) a read can be vouched for:
//! a pid cannot be handed to another process while its holder has not
//! exited, so if the pidfd shows the sender alive after the read, the read
//! saw the sender and not a later holder of a recycled pid.

use std::io;

/// `pid_max` when `/proc/sys/kernel/pid_max` cannot be read (`docs/observer.md#namespaces-and-generations`).
pub const PID_MAX_FALLBACK: u32 = 4_194_304;

/// A NUL-terminated path built on the stack: `/proc/<pid>/<tail>`.
struct ProcPath {
    buf: [u8; 48],
    len: usize,
}

impl ProcPath {
    fn new(pid: Option<u32>, tail: &[u8]) -> ProcPath {
        let mut p = ProcPath {
            buf: [0; 48],
            len: 0,
        };
        p.push(b"/proc/");
        match pid {
            Some(pid) => {
                let mut digits = [0u8; 10];
                let mut n = pid;
                let mut i = digits.len();
                loop {
                    i -= 1;
                    digits[i] = b'0' + (n % 10) as u8;
                    n /= 10;
                    if n == 0 {
                        break;
                    }
                }
                p.push(&digits[i..]);
            }
            None => p.push(b"self"),
        }
        p.push(b"/");
        p.push(tail);
        p
    }

    fn push(&mut self, s: &[u8]) {
        // Paths here are at most "/proc/4294967295/" + a short tail.
        let end = self.len + s.len();
        self.buf[self.len..end].copy_from_slice(s);
        self.len = end;
    }

    fn as_ptr(&self) -> *const libc::c_char {
        debug_assert!(self.len < self.buf.len() && self.buf[self.len] == 0);
        self.buf.as_ptr().cast()
    }
}

/// Read up to `buf.len()` bytes of a small file; `None` on any error.
fn read_small(path: &ProcPath, buf: &mut [u8]) -> Option<usize> {
    // SAFETY: NUL-terminated path; the descriptor is closed before return.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    let mut total = 0;
    let ok = loop {
        if total == buf.len() {
            break true;
        }
        // SAFETY: writes stay within `buf[total..]`.
        let n = unsafe { libc::read(fd, buf[total..].as_mut_ptr().cast(), buf.len() - total) };
        if n < 0 {
            if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            break false;
        }
        if n == 0 {
            break true;
        }
        total += n as usize;
    };
    // SAFETY: closing the descriptor opened above.
    unsafe { libc::close(fd) };
    ok.then_some(total)
}

fn parse_u64(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    let mut v: u64 = 0;
    for &c in s {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
    }
    Some(v)
}

/// Field 22 (`starttime`, clock ticks since boot) of a `/proc/<pid>/stat`
/// line. Fields are counted after the *last* `)` so a `comm` holding spaces
/// or parentheses cannot shift them.
pub fn parse_stat_start_time(stat: &[u8]) -> Option<u64> {
    let close = stat.iter().rposition(|&c| c == b')')?;
    // After ")" come fields 3 (state), 4, …; field 22 is the 20th of them.
    stat[close + 1..]
        .split(|c| c.is_ascii_whitespace())
        .filter(|f| !f.is_empty())
        .nth(22 - 3)
        .and_then(parse_u64)
}

/// Process start time (the pid's generation); `None` if the process is gone
/// or the file is unreadable.
pub fn start_time(pid: u32) -> Option<u64> {
    let mut buf = [0u8; 1024];
    let n = read_small(&ProcPath::new(Some(pid), b"stat"), &mut buf)?;
    parse_stat_start_time(&buf[..n])
}

/// Field 3 (`state`: `R`, `S`, `Z`, …) and field 22 (`starttime`) of a
/// `/proc/<pid>/stat` line.
pub fn parse_stat_state(stat: &[u8]) -> Option<(u8, u64)> {
    let close = stat.iter().rposition(|&c| c == b')')?;
    let state = *stat[close + 1..]
        .iter()
        .find(|c| !c.is_ascii_whitespace())?;
    Some((state, parse_stat_start_time(stat)?))
}

/// State letter and start time of `pid` in one read; `None` if it is gone.
pub fn stat_state(pid: u32) -> Option<(u8, u64)> {
    let mut buf = [0u8; 1024];
    let n = read_small(&ProcPath::new(Some(pid), b"stat"), &mut buf)?;
    parse_stat_state(&buf[..n])
}

/// `/proc/<pid>/comm` (the kernel's 15-byte command name), without its newline.
pub fn comm(pid: u32) -> Option<Comm> {
    let mut buf = [0u8; 64];
    let n = read_small(&ProcPath::new(Some(pid), b"comm"), &mut buf)?;
    Some(Comm::new(buf[..n].strip_suffix(b"\n").unwrap_or(&buf[..n])))
}

/// A process's command name, inline (no allocation; at most 16 bytes).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Comm {
    bytes: [u8; 16],
    len: u8,
}

impl Comm {
    pub fn new(name: &[u8]) -> Comm {
        let len = name.len().min(16);
        let mut bytes = [0u8; 16];
        bytes[..len].copy_from_slice(&name[..len]);
        Comm {
            bytes,
            len: len as u8,
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// Lossy UTF-8 text.
    pub fn to_string_lossy(&self) -> String {
        String::from_utf8_lossy(self.as_bytes()).into_owned()
    }
}

impl std::fmt::Debug for Comm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Comm({:?})", self.to_string_lossy())
    }
}

/// Parse a `pid:[N]` namespace link target.
pub fn parse_ns_link(target: &[u8]) -> Option<u64> {
    let inner = target.strip_prefix(b"pid:[")?.strip_suffix(b"]")?;
    parse_u64(inner)
}

fn ns_inode_at(path: &ProcPath) -> Option<u64> {
    let mut buf = [0u8; 64];
    // SAFETY: NUL-terminated path; `buf` is writable for its length.
    let n = unsafe { libc::readlink(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n <= 0 || n as usize >= buf.len() {
        return None;
    }
    parse_ns_link(&buf[..n as usize])
}

/// The pid-namespace inode of `pid` (`/proc/<pid>/ns/pid`).
pub fn pid_ns_inode(pid: u32) -> Option<u64> {
    ns_inode_at(&ProcPath::new(Some(pid), b"ns/pid"))
}

/// Our own pid-namespace inode.
pub fn own_pid_ns_inode() -> Option<u64> {
    ns_inode_at(&ProcPath::new(None, b"ns/pid"))
}

/// `/proc/sys/kernel/pid_max`, or [`PID_MAX_FALLBACK`].
pub fn pid_max() -> u32 {
    let mut buf = [0u8; 32];
    let path = {
        let mut p = ProcPath {
            buf: [0; 48],
            len: 0,
        };
        p.push(b"/proc/sys/kernel/pid_max");
        p
    };
    read_small(&path, &mut buf)
        .and_then(|n| parse_u64(buf[..n].trim_ascii()))
        .and_then(|v| u32::try_from(v).ok())
        .filter(|&v| v > 0)
        .unwrap_or(PID_MAX_FALLBACK)
}

/// Whether the process behind `pidfd` has exited (or the descriptor is not
/// a usable pidfd): `poll(2)` reports `POLLIN` on a pidfd once the process
/// has exited (zombie or reaped; `POLLHUP` too once reaped). Exit is final,
/// so "not exited" after a `/proc` read means alive during it. A `kill(pid,
/// 0)`-style `pidfd_send_signal` would not do: it succeeds on a zombie,
/// whose pid may already be on its way to reuse once reaped. Any doubt
/// (a negative descriptor, `POLLNVAL`, an error) answers "exited", which
/// fails closed. One `poll` costs far less than the `/proc` reads it guards.
pub fn pidfd_exited(pidfd: libc::c_int) -> bool {
    if pidfd < 0 {
        return true;
    }
    let mut p = libc::pollfd {
        fd: pidfd,
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: one valid pollfd, zero timeout.
        let rc = unsafe { libc::poll(&mut p, 1, 0) };
        if rc >= 0 {
            return rc > 0 && p.revents != 0;
        }
        if io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return true;
        }
    }
}

/// A pidfd for the process `pid` started at `generation` (its start time),
/// opened by pid and then checked: a pidfd opened by pid names whoever holds
/// the pid *now*, so it is kept only if that is still the pinned process and
/// it is still running (`ESRCH` otherwise).
pub fn pinned_pidfd(pid: u32, generation: u64) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::AsRawFd;
    let fd = pidfd_open(pid)?;
    if start_time(pid) == Some(generation) && !pidfd_exited(fd.as_raw_fd()) {
        Ok(fd)
    } else {
        Err(io::Error::from_raw_os_error(libc::ESRCH))
    }
}

/// `pidfd_open(2)` (Linux ≥ 5.3): a close-on-exec pidfd for `pid`. Opened
/// by pid it pins whoever holds the pid *now*, not the sender: the observer
/// uses it only through [`pinned_pidfd`]; tests use it to watch processes
/// they forked.
pub fn pidfd_open(pid: u32) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: plain syscall; the result is a fresh descriptor owned below.
    let rc = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `rc` is a new descriptor nobody else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(rc as libc::c_int) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_field_22_after_last_paren() {
        let line =
            b"1234 (a) b) (c) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_stat_start_time(line), Some(987_654));
        assert_eq!(parse_stat_start_time(b"1 (x) S 1"), None);
        assert_eq!(parse_stat_start_time(b"no paren"), None);
    }

    #[test]
    fn stat_state_and_comm() {
        let line =
            b"1234 (a) b) Z 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_stat_state(line), Some((b'Z', 987_654)));
        let me = std::process::id();
        assert_eq!(stat_state(me).map(|s| s.1), start_time(me));
        assert!(!comm(me).unwrap().as_bytes().is_empty());
        assert_eq!(
            Comm::new(b"0123456789abcdefXYZ").as_bytes(),
            b"0123456789abcdef"
        );
    }

    #[test]
    fn ns_link() {
        assert_eq!(parse_ns_link(b"pid:[4026531836]"), Some(4_026_531_836));
        assert_eq!(parse_ns_link(b"net:[1]"), None);
        assert_eq!(parse_ns_link(b"pid:[]"), None);
    }

    #[test]
    fn own_identity_is_readable() {
        let me = std::process::id();
        assert!(start_time(me).is_some());
        assert_eq!(pid_ns_inode(me), own_pid_ns_inode());
        assert!(own_pid_ns_inode().is_some());
        assert!(pid_max() >= 32_768 || pid_max() == PID_MAX_FALLBACK);
        assert_eq!(start_time(u32::MAX), None);
    }

    /// Fork a child that waits on a pipe and then exits: a live process we
    /// own and can reap at a chosen moment.
    fn fork_waiting_child() -> (u32, libc::c_int) {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` has room for two descriptors.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: the child only calls async-signal-safe functions.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let mut b = [0u8; 1];
            // SAFETY: blocking read until the parent closes the write end.
            unsafe {
                libc::close(fds[1]);
                libc::read(fds[0], b.as_mut_ptr().cast(), 1);
                libc::_exit(0);
            }
        }
        // SAFETY: the parent keeps only the write end.
        unsafe { libc::close(fds[0]) };
        (pid as u32, fds[1])
    }

    fn wait_exit_without_reaping(pid: u32) {
        // SAFETY: WNOWAIT leaves the child a zombie; infop is written.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        assert_eq!(rc, 0);
    }

    fn reap(pid: u32) {
        let mut status = 0;
        // SAFETY: our own child.
        assert_eq!(
            unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) },
            pid as libc::pid_t
        );
    }

    #[test]
    fn pidfd_reports_alive_then_exit_then_reaped() {
        use std::os::fd::AsRawFd;
        let (pid, release) = fork_waiting_child();
        let pidfd = pidfd_open(pid).unwrap();
        assert!(!pidfd_exited(pidfd.as_raw_fd()), "running child");
        let gen = start_time(pid).unwrap();
        assert!(!pidfd_exited(pidfd.as_raw_fd()));

        // SAFETY: closing our write end lets the child exit.
        unsafe { libc::close(release) };
        wait_exit_without_reaping(pid);
        // A zombie: /proc still answers with the old start time, but the
        // pidfd already says it is gone, so that read is not vouched for.
        assert!(pidfd_exited(pidfd.as_raw_fd()), "zombie counts as exited");
        assert_eq!(start_time(pid), Some(gen));

        reap(pid);
        assert!(pidfd_exited(pidfd.as_raw_fd()), "reaped");
        // Our own pidfd is alive, a closed descriptor fails closed.
        let own = pidfd_open(std::process::id()).unwrap();
        assert!(!pidfd_exited(own.as_raw_fd()));
        // poll(2) would silently skip a negative descriptor: fail closed.
        assert!(pidfd_exited(-1));
    }
}
