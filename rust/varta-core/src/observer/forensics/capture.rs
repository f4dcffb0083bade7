//! One batch of captures: signal the announced processes, wait (bounded)
//! for each dump to settle, then read `/proc` (`docs/finding-hangs.md`).

use super::super::procfs;
use super::super::tracker::StallInfo;
use super::channel::{fd_size, find_announcement, open_request, read_range, send, Announcement};
use super::threads::{read_threads, ThreadState};
use super::{Failure, STABLE, TASKS_BEGIN, TASKS_END};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

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
