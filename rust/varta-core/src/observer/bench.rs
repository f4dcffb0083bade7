//! Benchmark drivers (cargo feature `bench`; used by `bench/observer.py`
//! through the binding and by `examples/tracker_scaling.rs`; not part of the
//! observer): the tracker driver below, and [`bench_recv_floor`], the bare
//! `recvmsg` loop the listener is measured against.
//!
//! Simulated pids beat round-robin, as agents with one period do: slots are
//! handed out in first-beat order, so beats visit slots in order while the
//! pid index is hit at hashed (random) places. Frames arrive in batches of
//! [`BENCH_BATCH`], each batch [`Tracker::prefetch`]ed and then recorded, as
//! the ingress drains a `recvmmsg` batch, with an expiry pass per batch, 1 µs
//! of observer time per beat and no stall ever due.
//!
//! Cost is thread CPU time, so a busy machine's other work is not counted.
//! [`bench_tracker_scaling`] runs several table sizes in interleaved chunks:
//! on a shared 2-vCPU machine the speed drifts by 1.5× over seconds, and
//! interleaving makes every size see the same drift, so the ratios hold.

use super::cmsg::{parse_message, CmsgBuf, SenderPidfd, CMSG_BUF_LEN, SO_PASSPIDFD};
use super::listener::{clear_stale, listen_addr, RECV_BUF_LEN};
use super::tracker::{BeatOrigin, StallInfo, Tracker, TrackerConfig, MAX_CAPACITY};
use crate::frame::{Frame, Status, FRAME_LEN};
use crate::sys::{self, errno_error, with_path_context};
use std::ffi::CString;
use std::io;
use std::mem::zeroed;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Frames per batch: one full `recvmmsg` drain of the UDS listener.
pub const BENCH_BATCH: usize = super::listener::RECV_BATCH;

/// Which pids the simulated agents have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PidLayout {
    /// Consecutive pids from 100: agents started together, as the kernel
    /// numbers them.
    Dense,
    /// Every `n`th pid from 100: each agent took `n` pids (its threads, or
    /// other processes started in between).
    Strided(u32),
    /// Spread over the whole 2^22 pid space in hashed order: long-lived
    /// agents on a host with heavy churn.
    Scattered,
}

impl PidLayout {
    /// The pid of simulated agent `i` (distinct and nonzero for
    /// `i < 1_000_000`, at most 2^22 for the scattered layout).
    pub fn pid(self, i: u32) -> u32 {
        match self {
            PidLayout::Dense => FIRST_PID + i,
            PidLayout::Strided(n) => FIRST_PID + i * n.max(1),
            // Multiplying by an odd constant permutes 0..2^22; +1 skips pid 0.
            PidLayout::Scattered => (i.wrapping_mul(2_654_435_761) & ((1 << 22) - 1)) + 1,
        }
    }

    /// `"dense"`, `"stride:<n>"`, `"scattered"`.
    pub fn parse(s: &str) -> Option<PidLayout> {
        match s {
            "dense" => Some(PidLayout::Dense),
            "scattered" => Some(PidLayout::Scattered),
            _ => s
                .strip_prefix("stride:")
                .and_then(|n| n.parse().ok())
                .filter(|&n: &u32| (1..=4).contains(&n))
                .map(PidLayout::Strided),
        }
    }
}

/// One warmed-up tracker with `agents` simulated pids, ready to take beats.
pub struct TrackerBench {
    layout: PidLayout,
    tracker: Tracker,
    frames: Vec<Frame>,
    agents: u32,
    batch: usize,
    next_pid: u32,
    nonce: u64,
    now: u64,
}

const FIRST_PID: u32 = 100;
const BLANK: Frame = Frame {
    status: Status::Ok,
    pid: 0,
    timestamp: 1,
    nonce: 1,
    payload: 0,
};

impl TrackerBench {
    /// A tracker of capacity `agents` holding every simulated pid (one
    /// warm-up beat each). `batch == 1` records frame by frame, unprefetched.
    pub fn new(agents: u32, batch: usize) -> TrackerBench {
        TrackerBench::with_layout(agents, batch, PidLayout::Dense)
    }

    /// [`TrackerBench::new`] with the pids of `layout`.
    pub fn with_layout(agents: u32, batch: usize, layout: PidLayout) -> TrackerBench {
        let agents = (agents.max(1) as usize).min(MAX_CAPACITY) as u32;
        let cfg = TrackerConfig {
            capacity: agents as usize,
            threshold_ns: 3_600_000_000_000,
            ..TrackerConfig::new(1)
        };
        let mut tracker = Tracker::new(cfg).expect("valid bench config");
        let mut now = 0u64;
        for i in 0..agents {
            now += 1_000;
            let f = Frame {
                pid: layout.pid(i),
                ..BLANK
            };
            tracker.record(&f, BeatOrigin::KernelAttested, Some(1), Some(1), now);
        }
        TrackerBench {
            layout,
            tracker,
            frames: vec![BLANK; batch.max(1)],
            agents,
            batch: batch.max(1),
            next_pid: 0,
            nonce: 2,
            now,
        }
    }

    /// Record `beats` more beats; returns the thread CPU ns they took.
    /// Panics if any beat is not accepted (the bench would be measuring
    /// the wrong path).
    pub fn run(&mut self, beats: u64) -> u64 {
        let mut accepted = 0u64;
        let mut sink = |_: StallInfo| {};
        let mut left = beats;
        let start = thread_cpu_ns();
        while left > 0 {
            let n = (self.batch as u64).min(left) as usize;
            left -= n as u64;
            for f in &mut self.frames[..n] {
                f.pid = self.layout.pid(self.next_pid);
                f.nonce = self.nonce;
                f.timestamp = self.nonce;
                self.next_pid += 1;
                if self.next_pid == self.agents {
                    self.next_pid = 0;
                    self.nonce += 1;
                }
            }
            let frames = core::hint::black_box(&self.frames[..n]);
            if self.batch > 1 {
                for f in frames {
                    self.tracker.prefetch(f.pid);
                }
            }
            for f in frames {
                self.now += 1_000;
                let out =
                    self.tracker
                        .record(f, BeatOrigin::KernelAttested, Some(1), Some(1), self.now);
                accepted += u64::from(out.is_accepted());
            }
            self.tracker.expire(self.now, &mut sink);
        }
        let elapsed = thread_cpu_ns().saturating_sub(start);
        assert_eq!(accepted, beats, "bench beats must all be accepted");
        elapsed
    }

    /// [`Tracker::bytes_per_agent`] of the bench's tracker.
    pub fn bytes_per_agent(&self) -> usize {
        self.tracker.bytes_per_agent()
    }
}

/// `beats` beats through a fresh tracker of `agents` pids: (thread-CPU ns
/// per beat, bytes per agent).
pub fn bench_tracker(agents: u32, beats: u64) -> (f64, usize) {
    bench_tracker_batched(agents, beats, BENCH_BATCH)
}

/// [`bench_tracker`] with a chosen batch size (`1` = frame by frame).
pub fn bench_tracker_batched(agents: u32, beats: u64, batch: usize) -> (f64, usize) {
    let mut b = TrackerBench::new(agents, batch);
    let ns = b.run(beats);
    (ns as f64 / beats.max(1) as f64, b.bytes_per_agent())
}

/// One table size's result from [`bench_tracker_scaling`].
#[derive(Clone, Debug)]
pub struct ScalingRow {
    pub agents: u32,
    pub bytes_per_agent: usize,
    /// Thread-CPU ns per beat of each chunk, in run order.
    pub chunk_ns_per_beat: Vec<f64>,
}

/// Build one tracker per size, then run `chunks` rounds, each giving every
/// tracker `beats_per_chunk` beats in turn (the order rotates per round).
pub fn bench_tracker_scaling(
    sizes: &[u32],
    beats_per_chunk: u64,
    chunks: usize,
) -> Vec<ScalingRow> {
    bench_tracker_scaling_layout(sizes, beats_per_chunk, chunks, PidLayout::Dense)
}

/// [`bench_tracker_scaling`] with the pids of `layout`.
pub fn bench_tracker_scaling_layout(
    sizes: &[u32],
    beats_per_chunk: u64,
    chunks: usize,
    layout: PidLayout,
) -> Vec<ScalingRow> {
    let mut benches: Vec<TrackerBench> = sizes
        .iter()
        .map(|&n| TrackerBench::with_layout(n, BENCH_BATCH, layout))
        .collect();
    // One untimed pass so every table is faulted in and warm.
    for b in &mut benches {
        b.run(u64::from(b.agents).max(beats_per_chunk));
    }
    let mut rows: Vec<ScalingRow> = benches
        .iter()
        .map(|b| ScalingRow {
            agents: b.agents,
            bytes_per_agent: b.bytes_per_agent(),
            chunk_ns_per_beat: Vec::with_capacity(chunks),
        })
        .collect();
    let beats = beats_per_chunk.max(1);
    for round in 0..chunks {
        for k in 0..benches.len() {
            let i = (k + round) % benches.len();
            let ns = benches[i].run(beats);
            rows[i].chunk_ns_per_beat.push(ns as f64 / beats as f64);
        }
    }
    rows
}

/// Per each of `rounds` copies of a tracker of `agents` pids into exporter
/// rows, a chunk at a time ([`PidRows::copy_chunk`](super::rows::PidRows::copy_chunk)):
/// (wall ns of the whole copy, of its longest chunk). A chunk is what
/// `Observer.pid_rows()` does per turn of the observer lock, the only part
/// of a `/metrics` render that holds up ingest (`docs/observer.md#agent-rows`).
pub fn bench_rows_copy(agents: u32, rounds: usize) -> Vec<(u64, u64)> {
    use super::rows::PidRows;
    let b = TrackerBench::new(agents, BENCH_BATCH);
    let ns = |t: std::time::Instant| u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX);
    (0..rounds)
        .map(|_| {
            let t0 = std::time::Instant::now();
            let mut longest = 0;
            let mut rows = Vec::new();
            let mut next = Some(0);
            while let Some(start) = next {
                let t = std::time::Instant::now();
                next = PidRows::copy_chunk(&b.tracker, start, &mut rows);
                longest = longest.max(ns(t));
            }
            std::hint::black_box(rows);
            (ns(t0), longest)
        })
        .collect()
}

/// CPU time of the calling thread (ns).
pub fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// Benchmark floor: bind a plain blocking `SO_PASSCRED` socket at `path` and
/// `recvmsg(2)` one datagram at a time with its credentials until `n`
/// frame-sized datagrams whose pid field matches the kernel pid arrived, or
/// nothing arrived for `idle_timeout_ms`. Returns (thread CPU ns, count).
/// With `pidfd` the socket also sets `SO_PASSPIDFD` and closes each
/// datagram's pidfd (the credential set of `docs/observer.md#credentials` on kernels
/// that have it; `ENOPROTOOPT` where they do not).
#[doc(hidden)]
pub fn bench_recv_floor(
    path: &Path,
    n: u64,
    rcvbuf: u32,
    idle_timeout_ms: u64,
    pidfd: bool,
) -> io::Result<(u64, u64)> {
    let (addr, len) = listen_addr(path)?;
    let cpath = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| errno_error(libc::EINVAL, "socket path contains NUL".into()))?;
    clear_stale(path, &cpath, &addr, len)?;
    let fd = sys::dgram_socket(libc::AF_UNIX, false)?;
    let raw = fd.as_raw_fd();
    sys::set_int_opt(raw, libc::SOL_SOCKET, libc::SO_PASSCRED, 1)?;
    if pidfd {
        sys::set_int_opt(raw, libc::SOL_SOCKET, SO_PASSPIDFD, 1)?;
    }
    if rcvbuf > 0 {
        sys::set_int_opt(raw, libc::SOL_SOCKET, libc::SO_RCVBUF, rcvbuf as i32)?;
    }
    let tv = libc::timeval {
        tv_sec: (idle_timeout_ms / 1000) as libc::time_t,
        tv_usec: ((idle_timeout_ms % 1000) * 1000) as libc::suseconds_t,
    };
    sys::set_opt(raw, libc::SOL_SOCKET, libc::SO_RCVTIMEO, tv)?;
    sys::bind(raw, &addr, len).map_err(|e| with_path_context(e, "cannot bind", path))?;
    let mut buf = [0u8; RECV_BUF_LEN];
    let mut cmsg = CmsgBuf([0u8; CMSG_BUF_LEN]);
    let mut got = 0u64;
    let start = thread_cpu_ns();
    while got < n {
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: RECV_BUF_LEN,
        };
        // SAFETY: plain old data.
        let mut msg: libc::msghdr = unsafe { zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg.0.as_mut_ptr().cast();
        msg.msg_controllen = CMSG_BUF_LEN as _;
        // SAFETY: `msg` points at live buffers of the advertised sizes.
        let r = unsafe { libc::recvmsg(raw, &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if r < 0 {
            match sys::errno() {
                libc::EINTR => continue,
                _ => break, // idle timeout (or an error): stop measuring
            }
        }
        let hdr = libc::mmsghdr {
            msg_hdr: msg,
            msg_len: r as u32,
        };
        let meta = parse_message(&hdr, pidfd);
        if let SenderPidfd::Fd(fd) = meta.pidfd {
            // SAFETY: installed for us by this receive; closed once.
            unsafe { libc::close(fd) };
        }
        if meta.len as usize == FRAME_LEN && !meta.overlong {
            let pid = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
            if meta.creds.is_some_and(|c| c.pid == pid) {
                got += 1;
            }
        }
    }
    let cpu = thread_cpu_ns().saturating_sub(start);
    // We bound it.
    let _ = sys::unlink(&cpath);
    Ok((cpu, got))
}
