//! Hang forensics (`docs/finding-hangs.md`): on a `hung` verdict, capture
//! where the process is stuck before the stall is delivered (and so before
//! recovery runs), off the ingest path.
//!
//! Two sources, one JSON file per stall (mode 0600, written atomically):
//!
//! * `/proc/<pid>/task/*` for any process: per-thread state, `wchan`, the
//!   current syscall and the kernel stack where readable (method `proc`);
//! * the SDK channel (`docs/finding-hangs.md#the-sdk-channel`), where the
//!   process announced one: every Python thread's traceback, written by
//!   `faulthandler` into a memfd on a real-time signal, plus the asyncio
//!   tasks' stacks when the SDK's helper thread can get the GIL (method
//!   `sdk`).
//!
//! A signal goes only to a process that announced the channel, checked for
//! that pid (`docs/security.md#forensics-signals`): the observer finds the
//! memfd `/memfd:varta-forensics` among the process's descriptors, reads its
//! header and sends only when the header names the pid, through the pidfd
//! pinned on the process (no pid-reuse race).
//!
//! Bounds: at most [`WAIT_MAX`] waiting for the process, at most
//! [`MAX_CAPTURE_BYTES`] per file (cut parts are flagged `truncated`).
//! [`Worker`] runs captures on a thread of its own, several stalls at once
//! in one batch, and hands each stall back with its file's path and SHA-256.

use super::procfs;
use super::tracker::StallInfo;
use super::verdict::Verdict;
use sha2::{Digest, Sha256};
use std::fs;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Longest wait for the process's own answer (the SDK dump).
pub const WAIT_MAX: Duration = Duration::from_millis(250);
/// Largest capture file.
pub const MAX_CAPTURE_BYTES: usize = 256 * 1024;
/// The dump is complete once it has grown and then not grown for this long.
const STABLE: Duration = Duration::from_millis(15);
/// Threads read from `/proc` at most (their entries are also cut by size).
const MAX_THREADS: usize = 512;
/// The memfd's name as `/proc/<pid>/fd/N` shows it.
pub const MEMFD_LINK: &[u8] = b"/memfd:varta-forensics (deleted)";
/// The header's first word.
pub const HEADER_MAGIC: &[u8] = b"varta-forensics v1 ";
/// The SDK helper's asyncio section markers (`varta/_forensics.py`).
pub const TASKS_BEGIN: &[u8] = b"varta-asyncio-tasks begin\n";
pub const TASKS_END: &[u8] = b"varta-asyncio-tasks end\n";
/// Capture file names: `hang-<pid>-<unix ms>.json`.
pub const FILE_PREFIX: &str = "hang-";
pub const FILE_SUFFIX: &str = ".json";

/// Where and how many captures are kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForensicsConfig {
    pub dir: PathBuf,
    /// Captures kept in `dir` (oldest removed first); 0 = no count bound.
    pub keep: usize,
    /// Captures older than this are removed; `None` = no age bound.
    pub max_age: Option<Duration>,
    pub wait: Duration,
    pub max_bytes: usize,
}

impl ForensicsConfig {
    /// Captures kept in the directory unless told (`forensics_keep`).
    pub const DEFAULT_KEEP: usize = 100;

    pub fn new(dir: PathBuf) -> ForensicsConfig {
        ForensicsConfig {
            dir,
            keep: ForensicsConfig::DEFAULT_KEEP,
            max_age: None,
            wait: WAIT_MAX,
            max_bytes: MAX_CAPTURE_BYTES,
        }
    }
}

/// Capture bookkeeping (the `varta_forensics_*` metric families).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForensicsCounters {
    /// Capture files written, by method.
    pub captures_sdk: u64,
    pub captures_proc: u64,
    /// Captures cut to the size bound.
    pub truncated: u64,
    /// Failures, by reason (see [`FAILURE_LABELS`]).
    pub failures: [u64; FAILURE_LABELS.len()],
}

/// Failure reasons, in counter order.
pub const FAILURE_LABELS: [&str; 5] = ["write", "gone", "pid_mismatch", "signal", "no_dump"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The file could not be written: the stall goes out without one.
    Write = 0,
    /// The process was gone before anything could be read.
    Gone = 1,
    /// A channel's header names another pid (an inherited memfd): no signal.
    PidMismatch = 2,
    /// Sending the signal failed: `/proc` capture only.
    Signal = 3,
    /// Signalled, but no dump came within the wait: `/proc` capture only.
    NoDump = 4,
}

impl ForensicsCounters {
    fn fail(&mut self, f: Failure) {
        self.failures[f as usize] += 1;
    }

    pub fn failure_entries(&self) -> Vec<(&'static str, u64)> {
        FAILURE_LABELS.iter().copied().zip(self.failures).collect()
    }
}

// ---------------------------------------------------------------- /proc

/// One thread as `/proc/<pid>/task/<tid>` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ThreadState {
    pub tid: u32,
    pub comm: String,
    pub state: Option<char>,
    pub wchan: Option<String>,
    /// The syscall's name (or number), `running`, or `user` (not in one).
    pub syscall: Option<String>,
    pub syscall_raw: Option<String>,
    /// Kernel stack frames (needs `CAP_SYS_ADMIN`); `None` when unreadable.
    pub stack: Option<Vec<String>>,
}

fn read_text(path: &Path, max: usize) -> Option<String> {
    use std::io::Read;
    let f = fs::File::open(path).ok()?;
    let mut buf = Vec::new();
    f.take(max as u64).read_to_end(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf).into_owned())
}

/// Names of the syscalls a hang usually sits in (x86_64 and aarch64
/// numbers); anything else is shown by number.
pub fn syscall_name(nr: i64) -> Option<&'static str> {
    #[cfg(target_arch = "x86_64")]
    const TABLE: &[(i64, &str)] = &[
        (0, "read"),
        (1, "write"),
        (7, "poll"),
        (23, "select"),
        (34, "pause"),
        (35, "nanosleep"),
        (43, "accept"),
        (45, "recvfrom"),
        (47, "recvmsg"),
        (61, "wait4"),
        (202, "futex"),
        (230, "clock_nanosleep"),
        (232, "epoll_wait"),
        (270, "pselect6"),
        (271, "ppoll"),
        (281, "epoll_pwait"),
        (288, "accept4"),
        (441, "epoll_pwait2"),
    ];
    #[cfg(target_arch = "aarch64")]
    const TABLE: &[(i64, &str)] = &[
        (22, "epoll_pwait"),
        (63, "read"),
        (64, "write"),
        (72, "pselect6"),
        (73, "ppoll"),
        (98, "futex"),
        (101, "nanosleep"),
        (115, "clock_nanosleep"),
        (202, "accept"),
        (207, "recvfrom"),
        (212, "recvmsg"),
        (242, "accept4"),
        (260, "wait4"),
        (441, "epoll_pwait2"),
    ];
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    const TABLE: &[(i64, &str)] = &[];
    TABLE.iter().find(|(n, _)| *n == nr).map(|(_, s)| *s)
}

/// `/proc/<pid>/task/<tid>/syscall`: `running`, `-1 sp pc` (not in a
/// syscall: `user`) or `nr arg… sp pc`; returns the name or number.
pub fn parse_syscall(text: &str) -> Option<String> {
    let first = text.split_whitespace().next()?;
    if first == "running" {
        return Some("running".to_owned());
    }
    let nr: i64 = first.parse().ok()?;
    if nr < 0 {
        return Some("user".to_owned());
    }
    Some(syscall_name(nr).map_or_else(|| format!("syscall {nr}"), str::to_owned))
}

/// `/proc/<pid>/task/<tid>/stack`: one `[<0>] symbol+0x…/0x…` per line;
/// returns the symbols with their offsets.
pub fn parse_stack(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            let l = match l.find("] ") {
                Some(i) if l.starts_with('[') => &l[i + 2..],
                _ => l,
            };
            (!l.is_empty()).then(|| l.to_owned())
        })
        .collect()
}

/// `/proc/<pid>/task/<tid>/wchan`: a symbol, or `0` when running.
pub fn parse_wchan(text: &str) -> Option<String> {
    let t = text.trim();
    (!t.is_empty() && t != "0").then(|| t.to_owned())
}

/// Every thread of `pid` (main thread first), at most [`MAX_THREADS`].
pub fn read_threads(pid: u32) -> io::Result<Vec<ThreadState>> {
    let base = PathBuf::from(format!("/proc/{pid}/task"));
    let mut tids: Vec<u32> = fs::read_dir(&base)?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    tids.sort_unstable();
    if let Some(i) = tids.iter().position(|&t| t == pid) {
        tids.remove(i);
        tids.insert(0, pid);
    }
    tids.truncate(MAX_THREADS);
    let mut out = Vec::with_capacity(tids.len());
    for tid in tids {
        let dir = base.join(tid.to_string());
        let stat = read_text(&dir.join("stat"), 1024);
        let state = stat
            .as_deref()
            .and_then(|s| procfs::parse_stat_state(s.as_bytes()))
            .map(|(c, _)| c as char);
        let syscall_raw = read_text(&dir.join("syscall"), 256).map(|s| s.trim().to_owned());
        out.push(ThreadState {
            tid,
            comm: read_text(&dir.join("comm"), 64)
                .map(|s| s.trim_end_matches('\n').to_owned())
                .unwrap_or_default(),
            state,
            wchan: read_text(&dir.join("wchan"), 256).and_then(|s| parse_wchan(&s)),
            syscall: syscall_raw.as_deref().and_then(parse_syscall),
            syscall_raw,
            stack: read_text(&dir.join("stack"), 8192).map(|s| parse_stack(&s)),
        });
    }
    Ok(out)
}

// ---------------------------------------------------------- SDK channel

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

fn pread(fd: RawFd, buf: &mut [u8], offset: u64) -> io::Result<usize> {
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

fn fd_size(fd: RawFd) -> u64 {
    // SAFETY: fstat fills one stat struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return 0;
    }
    st.st_size as u64
}

fn read_range(fd: RawFd, from: u64, to: u64) -> Vec<u8> {
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
fn send(pidfd: RawFd, pid: u32, header: &Header) -> io::Result<()> {
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

// -------------------------------------------------------------- captures

/// A hung stall waiting for its capture: the pinned process's pidfd (from
/// the exit watch, or opened and checked against the start time).
#[derive(Debug)]
pub struct Job {
    pub info: StallInfo,
    pub pidfd: Option<OwnedFd>,
}

/// What one capture found, before it is written.
#[derive(Debug, Default)]
pub struct Found {
    pub method: &'static str,
    pub sdk_signal: Option<i32>,
    pub sdk_note: Option<&'static str>,
    pub traceback: Option<Vec<u8>>,
    /// `thread 0x<ident> native_id=<tid> name=<name>` lines (the SDK
    /// helper's answer), mapping faulthandler's thread ids to tids.
    pub thread_names: Option<Vec<u8>>,
    pub tasks: Option<Vec<u8>>,
    pub threads: Vec<ThreadState>,
    pub capture_ns: u64,
    pub truncated: bool,
}

enum Phase {
    /// Waiting for faulthandler's dump to start and settle.
    Dump,
    /// Dump complete at `mid`; waiting for the asyncio section.
    Tasks {
        mid: u64,
    },
    Done,
}

struct Inflight {
    job: Job,
    memfd: Option<OwnedFd>,
    request: Option<OwnedFd>,
    start: u64,
    last_len: u64,
    last_change: Instant,
    phase: Phase,
    /// Where the dump ended and the asyncio section begins, once asked for.
    mid: Option<u64>,
    found: Found,
    failure: Option<Failure>,
    began: Instant,
}

impl Inflight {
    fn begin(job: Job) -> Inflight {
        let now = Instant::now();
        let mut f = Inflight {
            job,
            memfd: None,
            request: None,
            start: 0,
            last_len: 0,
            last_change: now,
            phase: Phase::Done,
            mid: None,
            found: Found {
                method: "proc",
                ..Found::default()
            },
            failure: None,
            began: now,
        };
        let pid = f.job.info.pid;
        let Some(pidfd) = f.job.pidfd.as_ref().map(AsRawFd::as_raw_fd) else {
            // Not pinned: no signal, whatever the process announces.
            f.found.sdk_note = Some("not pinned: no pidfd");
            return f;
        };
        if matches!(procfs::stat_state(pid), Some((b'T' | b't', _))) {
            // Stopped (SIGSTOP, a tracer): it could not answer before it
            // is continued, so it is not signalled.
            f.found.sdk_note = Some("stopped (SIGSTOP or a tracer): not signalled");
            return f;
        }
        match find_announcement(pid) {
            Announcement::None => {}
            Announcement::PidMismatch => {
                f.found.sdk_note = Some("channel header names another pid: not signalled");
                f.failure = Some(Failure::PidMismatch);
            }
            Announcement::Found { memfd, header } => {
                // The descriptor table read above was this process's only
                // if it is still alive now.
                if procfs::pidfd_exited(pidfd) {
                    f.failure = Some(Failure::Gone);
                    return f;
                }
                f.start = fd_size(memfd.as_raw_fd());
                f.last_len = f.start;
                f.request = header.request_fd.and_then(|n| open_request(pid, n));
                f.found.sdk_signal = Some(header.signal);
                match send(pidfd, pid, &header) {
                    Ok(()) => {
                        f.memfd = Some(memfd);
                        f.phase = Phase::Dump;
                        f.last_change = Instant::now();
                    }
                    Err(_) => {
                        f.found.sdk_note = Some("sending the signal failed");
                        f.failure = Some(Failure::Signal);
                    }
                }
            }
        }
        f
    }

    /// Advance; true when done.
    fn step(&mut self, now: Instant) -> bool {
        let Some(memfd) = self.memfd.as_ref() else {
            self.phase = Phase::Done;
            return true;
        };
        let len = fd_size(memfd.as_raw_fd());
        if len != self.last_len {
            self.last_len = len;
            self.last_change = now;
        }
        match self.phase {
            Phase::Dump => {
                if len > self.start && now.duration_since(self.last_change) >= STABLE {
                    match self.request.take() {
                        Some(req) => {
                            let one = [1u8];
                            // SAFETY: a one-byte write to a non-blocking pipe.
                            let n = unsafe { libc::write(req.as_raw_fd(), one.as_ptr().cast(), 1) };
                            self.mid = (n == 1).then_some(len);
                            self.phase = if n == 1 {
                                Phase::Tasks { mid: len }
                            } else {
                                Phase::Done
                            };
                        }
                        None => self.phase = Phase::Done,
                    }
                }
            }
            Phase::Tasks { mid } => {
                let tail = read_range(
                    memfd.as_raw_fd(),
                    len.saturating_sub(TASKS_END.len() as u64).max(mid),
                    len,
                );
                if tail.ends_with(TASKS_END) {
                    self.phase = Phase::Done;
                }
            }
            Phase::Done => {}
        }
        matches!(self.phase, Phase::Done)
    }

    fn finish(mut self, max_bytes: usize) -> (Job, Found, Option<Failure>) {
        if let Some(memfd) = self.memfd.take() {
            let fd = memfd.as_raw_fd();
            let end = self.last_len.min(self.start + max_bytes as u64);
            let mid = self.mid.unwrap_or(end).min(end);
            let dump = read_range(fd, self.start, mid);
            if dump.is_empty() {
                self.found.sdk_note = Some("signalled, but no dump came within the wait");
                self.failure = Some(Failure::NoDump);
            } else {
                self.found.method = "sdk";
                self.found.traceback = Some(dump);
                let helper = read_range(fd, mid, end);
                let helper = helper.strip_prefix(TASKS_BEGIN).unwrap_or(&helper);
                let helper = helper.strip_suffix(TASKS_END).unwrap_or(helper);
                let (names, tasks) = split_helper(helper);
                self.found.thread_names = (!names.is_empty()).then_some(names);
                self.found.tasks = (!tasks.is_empty()).then_some(tasks);
            }
            if self.last_len > end {
                self.found.truncated = true;
            }
        }
        match read_threads(self.job.info.pid) {
            Ok(t) => self.found.threads = t,
            Err(_) if self.found.traceback.is_none() => {
                self.failure.get_or_insert(Failure::Gone);
            }
            Err(_) => {}
        }
        self.found.capture_ns = u64::try_from(self.began.elapsed().as_nanos()).unwrap_or(u64::MAX);
        (self.job, self.found, self.failure)
    }
}

/// The helper's answer: its `thread 0x…` lines, and the rest (the asyncio
/// tasks' stacks).
pub fn split_helper(text: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let (mut names, mut rest) = (Vec::new(), Vec::new());
    for line in text.split_inclusive(|&c| c == b'\n') {
        if line.starts_with(b"thread 0x") {
            names.extend_from_slice(line);
        } else {
            rest.extend_from_slice(line);
        }
    }
    (names, rest)
}

fn open_request(pid: u32, fd: u32) -> Option<OwnedFd> {
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

/// Capture every job at once: signal the announced ones, wait (at most
/// `wait`) until each dump is complete, then read `/proc`.
pub fn capture_batch(
    jobs: Vec<Job>,
    wait: Duration,
    max_bytes: usize,
) -> Vec<(Job, Found, Option<Failure>)> {
    let deadline = Instant::now() + wait;
    let mut inflight: Vec<Inflight> = jobs.into_iter().map(Inflight::begin).collect();
    loop {
        let now = Instant::now();
        let mut done = true;
        for f in &mut inflight {
            done &= f.step(now);
        }
        if done || now >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    inflight.into_iter().map(|f| f.finish(max_bytes)).collect()
}

// ---------------------------------------------------------------- files

/// A JSON string literal.
pub fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_opt(s: Option<&str>) -> String {
    s.map_or_else(|| "null".to_owned(), json_str)
}

fn thread_json(t: &ThreadState) -> String {
    let stack = match &t.stack {
        None => "null".to_owned(),
        Some(frames) => format!(
            "[{}]",
            frames
                .iter()
                .map(|f| json_str(f))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    format!(
        "{{\"tid\": {}, \"comm\": {}, \"state\": {}, \"wchan\": {}, \"syscall\": {}, \"syscall_raw\": {}, \"stack\": {}}}",
        t.tid,
        json_str(&t.comm),
        json_opt(t.state.map(|c| c.to_string()).as_deref()),
        json_opt(t.wchan.as_deref()),
        json_opt(t.syscall.as_deref()),
        json_opt(t.syscall_raw.as_deref()),
        stack,
    )
}

/// The capture as JSON, at most `max_bytes` (text and threads are cut and
/// `truncated` set when it would be larger).
pub fn render(info: &StallInfo, f: &mut Found, unix_ns: u64, max_bytes: usize) -> String {
    let lossy = |b: &Option<Vec<u8>>| {
        b.as_deref()
            .map(|b| String::from_utf8_lossy(b).into_owned())
    };
    let mut traceback = lossy(&f.traceback);
    let mut tasks = lossy(&f.tasks);
    let names = lossy(&f.thread_names);
    let mut threads: Vec<String> = f.threads.iter().map(thread_json).collect();
    loop {
        let doc = format!(
            concat!(
                "{{\n  \"format\": \"varta-forensics-capture/1\",\n",
                "  \"pid\": {},\n  \"comm\": {},\n  \"start_time\": {},\n",
                "  \"verdict\": {},\n  \"method\": {},\n",
                "  \"captured_unix_ns\": {},\n  \"silent_ns\": {},\n  \"capture_ns\": {},\n",
                "  \"sdk_signal\": {},\n  \"sdk_note\": {},\n  \"truncated\": {},\n",
                "  \"threads\": [{}],\n",
                "  \"python_traceback\": {},\n  \"python_threads\": {},\n",
                "  \"asyncio_tasks\": {}\n}}\n"
            ),
            info.pid,
            json_opt(info.comm.map(|c| c.to_string_lossy()).as_deref()),
            info.generation
                .map_or_else(|| "null".to_owned(), |g| g.to_string()),
            json_str(info.verdict.as_str()),
            json_str(f.method),
            unix_ns,
            info.observer_ns.saturating_sub(info.last_ns),
            f.capture_ns,
            f.sdk_signal
                .map_or_else(|| "null".to_owned(), |s| s.to_string()),
            json_opt(f.sdk_note),
            f.truncated,
            if threads.is_empty() {
                String::new()
            } else {
                format!("\n    {}\n  ", threads.join(",\n    "))
            },
            json_opt(traceback.as_deref()),
            json_opt(names.as_deref()),
            json_opt(tasks.as_deref()),
        );
        if doc.len() <= max_bytes {
            return doc;
        }
        f.truncated = true;
        // Cut the largest part first: threads beyond the first, then the
        // asyncio section, then the traceback's tail.
        let over = doc.len() - max_bytes;
        if threads.len() > 1 {
            threads.pop();
        } else if let Some(t) = tasks.as_mut().filter(|t| !t.is_empty()) {
            cut_tail(t, over + 64);
        } else if let Some(t) = traceback.as_mut().filter(|t| !t.is_empty()) {
            cut_tail(t, over + 64);
        } else if !threads.is_empty() {
            threads.clear();
        } else {
            return doc; // nothing left to cut (cannot happen with sane bounds)
        }
    }
}

fn cut_tail(s: &mut String, by: usize) {
    let mut keep = s.len().saturating_sub(by);
    while keep > 0 && !s.is_char_boundary(keep) {
        keep -= 1;
    }
    s.truncate(keep);
    s.push_str("\n[cut at the size bound]\n");
}

fn lowercase_hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[usize::from(b >> 4)] as char);
        s.push(HEX[usize::from(b & 15)] as char);
    }
    s
}

/// Write `body` as `dir/name` (a temporary file, fsync, rename; mode 0600);
/// returns the path and the body's SHA-256 (lowercase hex).
pub fn write_capture(dir: &Path, name: &str, body: &[u8]) -> io::Result<(PathBuf, String)> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let path = dir.join(name);
    let res = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(&tmp)?;
        f.write_all(body)?;
        f.sync_all()?;
        fs::rename(&tmp, &path)
    })();
    if let Err(e) = res {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok((path, lowercase_hex(&Sha256::digest(body))))
}

/// Remove captures beyond the newest `keep` and older than `max_age`.
pub fn prune(dir: &Path, keep: usize, max_age: Option<Duration>) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let mut files: Vec<(SystemTime, PathBuf)> = entries
        .flatten()
        .filter(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            n.starts_with(FILE_PREFIX) && n.ends_with(FILE_SUFFIX)
        })
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    files.sort_by(|a, b| b.cmp(a)); // newest first
    let now = SystemTime::now();
    let mut removed = 0;
    for (i, (mtime, path)) in files.iter().enumerate() {
        let too_many = keep > 0 && i >= keep;
        let too_old = max_age.is_some_and(|a| now.duration_since(*mtime).is_ok_and(|d| d > a));
        if (too_many || too_old) && fs::remove_file(path).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// Create the capture directory (mode 0700) if it does not exist.
pub fn prepare_dir(dir: &Path) -> io::Result<()> {
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} is not a directory", dir.display()),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir),
        Err(e) => Err(e),
    }
}

/// Capture, write and prune for one batch; each stall comes back with its
/// file's path and SHA-256 set (unchanged when nothing could be written).
pub fn process(
    cfg: &ForensicsConfig,
    jobs: Vec<Job>,
    counters: &Mutex<ForensicsCounters>,
) -> Vec<StallInfo> {
    let results = capture_batch(jobs, cfg.wait, cfg.max_bytes);
    let mut out = Vec::with_capacity(results.len());
    let mut wrote = false;
    for (job, mut found, failure) in results {
        let mut info = job.info;
        let mut c = counters.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(f) = failure {
            c.fail(f);
        }
        if failure == Some(Failure::Gone) && found.threads.is_empty() {
            out.push(info);
            continue;
        }
        drop(c);
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let unix_ns = u64::try_from(unix.as_nanos()).unwrap_or(u64::MAX);
        let body = render(&info, &mut found, unix_ns, cfg.max_bytes);
        let name = format!(
            "{FILE_PREFIX}{}-{}{FILE_SUFFIX}",
            info.pid,
            unix.as_millis()
        );
        let res = write_capture(&cfg.dir, &name, body.as_bytes());
        let mut c = counters.lock().unwrap_or_else(PoisonError::into_inner);
        match res {
            Ok((path, sha)) => {
                if found.method == "sdk" {
                    c.captures_sdk += 1;
                } else {
                    c.captures_proc += 1;
                }
                if found.truncated {
                    c.truncated += 1;
                }
                info.forensics = Some(Arc::from(path.to_string_lossy().as_ref()));
                info.forensics_sha256 = Some(Arc::from(sha.as_str()));
                wrote = true;
            }
            Err(_) => c.fail(Failure::Write),
        }
        out.push(info);
    }
    if wrote {
        prune(&cfg.dir, cfg.keep, cfg.max_age);
    }
    out
}

/// Whether a stall gets a capture: a `hung` verdict on a pinned
/// (kernel-attested, start time known) process.
pub fn wants_capture(info: &StallInfo) -> bool {
    info.verdict == Verdict::Hung
        && info.origin == super::tracker::BeatOrigin::KernelAttested
        && info.generation.is_some()
}

/// The capture thread: takes jobs, runs them in batches and hands each
/// stall to `deliver`.
pub struct Worker {
    tx: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    counters: Arc<Mutex<ForensicsCounters>>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").finish_non_exhaustive()
    }
}

impl Worker {
    pub fn start(
        cfg: ForensicsConfig,
        deliver: impl Fn(Vec<StallInfo>) + Send + 'static,
    ) -> io::Result<Worker> {
        prepare_dir(&cfg.dir)?;
        let counters = Arc::new(Mutex::new(ForensicsCounters::default()));
        let (tx, rx) = mpsc::channel::<Job>();
        let c = Arc::clone(&counters);
        let thread = std::thread::Builder::new()
            .name("varta-forensics".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut jobs = vec![first];
                    jobs.extend(rx.try_iter());
                    deliver(process(&cfg, jobs, &c));
                }
            })?;
        Ok(Worker {
            tx: Some(tx),
            thread: Some(thread),
            counters,
        })
    }

    /// Queue a capture. A stall is never lost: if the thread is gone it
    /// comes back at once, uncaptured.
    pub fn submit(&self, job: Job) -> Result<(), Box<StallInfo>> {
        match &self.tx {
            Some(tx) => tx.send(job).map_err(|e| Box::new(e.0.info)),
            None => Err(Box::new(job.info)),
        }
    }

    pub fn counters(&self) -> ForensicsCounters {
        *self.counters.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Finish the queued captures and stop. Idempotent.
    pub fn close(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syscall_lines() {
        assert_eq!(parse_syscall("running\n").as_deref(), Some("running"));
        assert_eq!(parse_syscall("-1 0x7ffd 0x7f00\n").as_deref(), Some("user"));
        #[cfg(target_arch = "x86_64")]
        assert_eq!(
            parse_syscall("202 0x7f 0x80 0x0 0x0 0x0 0x0 0x7ffd 0x7f00").as_deref(),
            Some("futex")
        );
        assert_eq!(parse_syscall("9999 0x1").as_deref(), Some("syscall 9999"));
        assert_eq!(parse_syscall(""), None);
        assert_eq!(parse_syscall("garbage"), None);
    }

    #[test]
    fn stack_and_wchan() {
        let text = "[<0>] futex_wait_queue+0x60/0xa0\n[<0>] do_syscall_64+0x5d/0x170\n\n";
        assert_eq!(
            parse_stack(text),
            vec!["futex_wait_queue+0x60/0xa0", "do_syscall_64+0x5d/0x170"]
        );
        assert_eq!(
            parse_wchan("futex_wait_queue"),
            Some("futex_wait_queue".into())
        );
        assert_eq!(parse_wchan("0"), None);
        assert_eq!(parse_wchan(""), None);
    }

    #[test]
    fn headers() {
        let rt = libc::SIGRTMIN() + 6;
        let line = format!("varta-forensics v1 pid=42 signal={rt} tid=43 request_fd=7 extra=1\n");
        assert_eq!(
            parse_header(line.as_bytes()),
            Some(Header {
                pid: 42,
                signal: rt,
                tid: Some(43),
                request_fd: Some(7)
            })
        );
        // Only real-time signals, a pid and a signal are required.
        let kill = format!("varta-forensics v1 pid=42 signal={}", libc::SIGKILL);
        assert_eq!(parse_header(kill.as_bytes()), None);
        assert_eq!(parse_header(b"varta-forensics v1 signal=40"), None);
        assert_eq!(parse_header(b"varta-forensics v2 pid=1 signal=40"), None);
        assert_eq!(parse_header(b"varta-forensics v1 pid=x signal=40"), None);
    }

    #[test]
    fn own_threads_are_read() {
        let me = std::process::id();
        let t = read_threads(me).unwrap();
        assert_eq!(t[0].tid, me);
        assert!(t[0].state.is_some());
        assert!(!t[0].comm.is_empty());
    }

    #[test]
    fn helper_answer_splits() {
        let (n, t) =
            split_helper(b"thread 0x01 native_id=5 name='M'\nloop 0 (L): 1 tasks\nStack for x\n");
        assert_eq!(n, b"thread 0x01 native_id=5 name='M'\n");
        assert_eq!(t, b"loop 0 (L): 1 tasks\nStack for x\n");
    }

    #[test]
    fn json_strings_escape() {
        assert_eq!(json_str("a\"b\\c\n\u{1}"), "\"a\\\"b\\\\c\\n\\u0001\"");
    }

    #[test]
    fn render_respects_the_size_bound() {
        let info = StallInfo {
            pid: 7,
            last_nonce: 1,
            last_ns: 0,
            origin: super::super::tracker::BeatOrigin::KernelAttested,
            pid_ns_inode: None,
            generation: Some(1),
            observer_ns: 5,
            verdict: Verdict::Hung,
            cause: None,
            comm: None,
            forensics: None,
            forensics_sha256: None,
            peer: None,
            cmdline: None,
            unit: None,
            container: None,
        };
        let mut f = Found {
            method: "sdk",
            traceback: Some(vec![b'x'; 10_000]),
            threads: vec![ThreadState::default(); 100],
            ..Found::default()
        };
        let doc = render(&info, &mut f, 1, 4096);
        assert!(doc.len() <= 4096, "{}", doc.len());
        assert!(f.truncated);
        assert!(doc.contains("\"truncated\": true"));
        let mut g = Found {
            method: "proc",
            ..Found::default()
        };
        assert!(!render(&info, &mut g, 1, 4096).contains("\"truncated\": true"));
    }

    #[test]
    fn files_are_private_and_pruned() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("varta-forensics-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        prepare_dir(&dir).unwrap();
        for i in 0..5 {
            let (p, sha) = write_capture(&dir, &format!("hang-1-{i}.json"), b"{}").unwrap();
            assert_eq!(
                fs::metadata(&p).unwrap().permissions().mode() & 0o777,
                0o600
            );
            assert_eq!(
                sha,
                "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
            );
        }
        fs::write(dir.join("other.txt"), b"x").unwrap();
        assert_eq!(prune(&dir, 2, None), 3);
        let left = fs::read_dir(&dir).unwrap().count();
        assert_eq!(left, 3); // two captures and the unrelated file
        fs::remove_dir_all(&dir).unwrap();
    }
}
