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

use super::tracker::StallInfo;
use super::verdict::Verdict;
use std::io;
use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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

mod capture;
mod channel;
mod files;
#[cfg(test)]
mod tests;
mod threads;

pub use capture::{capture_batch, split_helper, Found, Job};
pub use channel::{find_announcement, parse_header, signal_is_default, Announcement, Header};
pub use files::{json_str, prepare_dir, prune, render, write_capture};
pub use threads::{
    parse_stack, parse_syscall, parse_wchan, read_threads, syscall_name, ThreadState,
};

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
