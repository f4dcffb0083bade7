//! Prompt exit detection for kernel-attested agents (`docs/verdicts.md`,
//! "Exit detection").
//!
//! Each kernel-attested agent gets one pidfd, taken once per process (on its
//! first accepted beat, or when its pid's generation changes) and never in
//! the per-beat path: a duplicate of the pidfd that came with the datagram
//! (`SO_PASSPIDFD`), else `pidfd_open(pid)` checked against the start time
//! pinned on the slot. The pidfds sit in one epoll set whose descriptor the
//! observer waits on beside its sockets: a process exit wakes the observer at
//! once, so `exited` / `vanished` verdicts come within milliseconds instead
//! of at the next threshold.
//!
//! Descriptors are bounded: at most `limit` agents are watched (the tracker
//! capacity, capped below the process's `RLIMIT_NOFILE`). An agent over the
//! limit, or whose pidfd cannot be had, is counted in `unavailable` and its
//! exit is still found at the threshold through `/proc`.

use super::procfs::{self, Comm};
use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

/// Descriptors left for everything else when sizing the watch limit.
const FD_RESERVE: u64 = 256;
/// Exits taken per [`ExitWatch::take_exited`] call at most.
const EXIT_BATCH: usize = 256;

struct Watched {
    fd: OwnedFd,
    generation: u64,
    comm: Comm,
}

/// Counters of the exit watch (not Prometheus families of their own; see
/// [`ExitWatch::counters`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitWatchCounters {
    /// Processes given a pidfd watch.
    pub watched: u64,
    /// Kernel-attested agents that could not be watched (limit reached, no
    /// pidfd: old kernel, `EMFILE`, the process already gone).
    pub unavailable: u64,
    /// Exits reported by the kernel.
    pub exits: u64,
}

/// The epoll set of agent pidfds. See the module docs.
pub struct ExitWatch {
    epoll: Arc<OwnedFd>,
    watched: HashMap<u32, Watched>,
    limit: usize,
    ready: Vec<libc::epoll_event>,
    counters: ExitWatchCounters,
}

impl std::fmt::Debug for ExitWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExitWatch")
            .field("watched", &self.watched.len())
            .field("limit", &self.limit)
            .field("counters", &self.counters)
            .finish()
    }
}

fn soft_nofile() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return 1024;
    }
    r.rlim_cur
}

fn dup_cloexec(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: fcntl on a descriptor the caller holds open.
    let rc = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `rc` is a new descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(rc) })
}

impl ExitWatch {
    /// An empty watch for up to `capacity` agents (fewer if the descriptor
    /// limit is lower).
    pub fn new(capacity: usize) -> io::Result<ExitWatch> {
        // SAFETY: plain syscall; the result is a fresh descriptor owned below.
        let rc = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `rc` is a new descriptor nobody else owns.
        let epoll = Arc::new(unsafe { OwnedFd::from_raw_fd(rc) });
        let by_fds = usize::try_from(soft_nofile().saturating_sub(FD_RESERVE)).unwrap_or(0);
        Ok(ExitWatch {
            epoll,
            watched: HashMap::new(),
            limit: capacity.min(by_fds),
            ready: vec![libc::epoll_event { events: 0, u64: 0 }; EXIT_BATCH],
            counters: ExitWatchCounters::default(),
        })
    }

    /// The epoll descriptor: readable when a watched process has exited.
    pub fn wait_fd(&self) -> Arc<OwnedFd> {
        Arc::clone(&self.epoll)
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    pub fn len(&self) -> usize {
        self.watched.len()
    }

    pub fn is_empty(&self) -> bool {
        self.watched.is_empty()
    }

    pub fn counters(&self) -> ExitWatchCounters {
        self.counters
    }

    /// Whether `pid` is watched as the process started at `generation`.
    pub fn is_watching(&self, pid: u32, generation: u64) -> bool {
        self.watched
            .get(&pid)
            .is_some_and(|w| w.generation == generation)
    }

    /// The command name read when `pid` (at `generation`) was first watched.
    pub fn comm(&self, pid: u32, generation: u64) -> Option<Comm> {
        self.watched
            .get(&pid)
            .filter(|w| w.generation == generation)
            .map(|w| w.comm)
    }

    /// The kernel's answer for a watched process: `Some(true)` once it has
    /// exited (zombie included); `None` if it is not watched.
    pub fn has_exited(&self, pid: u32, generation: u64) -> Option<bool> {
        self.watched
            .get(&pid)
            .filter(|w| w.generation == generation)
            .map(|w| procfs::pidfd_exited(w.fd.as_raw_fd()))
    }

    /// A duplicate of the pidfd pinned on `pid` (at `generation`), if watched
    /// (hang forensics signals through it, `docs/finding-hangs.md`).
    pub fn dup_pidfd(&self, pid: u32, generation: u64) -> Option<OwnedFd> {
        self.watched
            .get(&pid)
            .filter(|w| w.generation == generation)
            .and_then(|w| dup_cloexec(w.fd.as_raw_fd()).ok())
    }

    /// Watch `pid`, the process started at `generation`, replacing a watch on
    /// an older process with that pid. `sender_pidfd` is the pidfd that came
    /// with its datagram, if any. `keep` tells which existing watches are
    /// still wanted when the limit is reached (stale ones are dropped then).
    /// Returns whether the process is now watched.
    pub fn watch(
        &mut self,
        pid: u32,
        generation: u64,
        sender_pidfd: Option<RawFd>,
        keep: impl Fn(u32, u64) -> bool,
    ) -> bool {
        if self.is_watching(pid, generation) {
            return true;
        }
        self.unwatch(pid);
        if self.watched.len() >= self.limit {
            self.watched.retain(|&p, w| keep(p, w.generation));
            if self.watched.len() >= self.limit {
                self.counters.unavailable += 1;
                return false;
            }
        }
        let fd = match sender_pidfd {
            Some(fd) => dup_cloexec(fd),
            None => procfs::pinned_pidfd(pid, generation),
        };
        let Ok(fd) = fd else {
            self.counters.unavailable += 1;
            return false;
        };
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: u64::from(pid),
        };
        // SAFETY: both descriptors are open; `ev` is initialised.
        let rc = unsafe {
            libc::epoll_ctl(
                self.epoll.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                fd.as_raw_fd(),
                &mut ev,
            )
        };
        if rc != 0 {
            self.counters.unavailable += 1;
            return false;
        }
        let comm = procfs::comm(pid).unwrap_or_default();
        self.watched.insert(
            pid,
            Watched {
                fd,
                generation,
                comm,
            },
        );
        self.counters.watched += 1;
        true
    }

    /// Stop watching `pid` (closing its pidfd).
    pub fn unwatch(&mut self, pid: u32) {
        if let Some(w) = self.watched.remove(&pid) {
            self.deregister(&w);
        }
    }

    fn deregister(&self, w: &Watched) {
        // SAFETY: both descriptors are open; DEL ignores the event argument.
        unsafe {
            libc::epoll_ctl(
                self.epoll.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                w.fd.as_raw_fd(),
                std::ptr::null_mut(),
            );
        }
    }

    /// Append `(pid, generation, comm)` of every watched process that has
    /// exited (at most one batch) and stop watching them. Never blocks.
    pub fn take_exited(&mut self, out: &mut Vec<(u32, u64, Comm)>) {
        if self.watched.is_empty() {
            return;
        }
        // SAFETY: `ready` has room for EXIT_BATCH events; timeout 0.
        let n = unsafe {
            libc::epoll_wait(
                self.epoll.as_raw_fd(),
                self.ready.as_mut_ptr(),
                EXIT_BATCH as libc::c_int,
                0,
            )
        };
        for i in 0..usize::try_from(n).unwrap_or(0) {
            let pid = self.ready[i].u64 as u32;
            if let Some(w) = self.watched.remove(&pid) {
                self.deregister(&w);
                self.counters.exits += 1;
                out.push((pid, w.generation, w.comm));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fork_child() -> libc::pid_t {
        // SAFETY: the child only blocks in pause() until killed.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            loop {
                // SAFETY: async-signal-safe.
                unsafe { libc::pause() };
            }
        }
        pid
    }

    #[test]
    fn an_exit_is_reported_once_with_its_generation() {
        let mut w = ExitWatch::new(8).unwrap();
        let child = fork_child();
        let pid = child as u32;
        let gen = procfs::start_time(pid).unwrap();
        assert!(w.watch(pid, gen, None, |_, _| true));
        assert!(w.is_watching(pid, gen));
        assert_eq!(w.has_exited(pid, gen), Some(false));
        let mut out = Vec::new();
        w.take_exited(&mut out);
        assert!(out.is_empty());
        // SAFETY: our own child.
        unsafe { libc::kill(child, libc::SIGKILL) };
        // Readiness is the event we wait for (the zombie counts as exited).
        let fds = [w.wait_fd().as_raw_fd()];
        assert!(super::super::listener::wait_readable(&fds, Some(5_000_000_000)).unwrap());
        w.take_exited(&mut out);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].0, out[0].1), (pid, gen));
        assert!(w.is_empty());
        assert_eq!(w.counters().exits, 1);
        // SAFETY: reap our child.
        unsafe { libc::waitpid(child, std::ptr::null_mut(), 0) };
    }

    #[test]
    fn a_wrong_generation_or_a_full_table_is_unavailable() {
        let mut w = ExitWatch::new(1).unwrap();
        let me = std::process::id();
        let gen = procfs::start_time(me).unwrap();
        assert!(!w.watch(me, gen + 1, None, |_, _| true));
        assert!(w.watch(me, gen, None, |_, _| true));
        let child = fork_child();
        let cgen = procfs::start_time(child as u32).unwrap();
        // Full, and the existing watch is still wanted.
        assert!(!w.watch(child as u32, cgen, None, |_, _| true));
        // Full, but the existing watch is stale: dropped for the new one.
        assert!(w.watch(child as u32, cgen, None, |_, _| false));
        assert_eq!(w.counters().unavailable, 2);
        // SAFETY: our own child.
        unsafe {
            libc::kill(child, libc::SIGKILL);
            libc::waitpid(child, std::ptr::null_mut(), 0);
        }
    }
}
