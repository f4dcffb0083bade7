//! Progress-gated heartbeats (`docs/agent.md#progress-heartbeats`).
//!
//! A [`Heartbeat`] owns an [`Agent`] and a background thread (the *beater*)
//! that wakes every interval and beats **only if** the progress counter moved
//! since the last beat that was sent. The hot loop's only job is
//! [`Heartbeat::progress`]: one relaxed atomic add on its own cache line — no
//! system call, no allocation, no lock. A loop that stops calling it stops the
//! beats even though the process and the beater thread are alive, so the
//! observer reports it `hung`.
//!
//! What a beat carries (`docs/protocol.md#payload`):
//!
//! - status `OK` and payload = progress calls since the last sent beat,
//!   saturated at `u32::MAX` (never 0: a beat is only sent after progress);
//! - or, after [`Heartbeat::set_status`], that status and (if given) that
//!   payload, until it is set again. The gate stays: a stuck loop stops the
//!   beats whatever status was reported.
//!
//! A beat that is dropped or fails leaves its progress pending, so the next
//! tick retries it; nothing is ever sent more often than once per interval.
//!
//! Fork (`docs/agent.md#progress-heartbeats-and-fork`): a forked child gets no
//! beater (threads do not survive `fork`). Its copy is inert: `progress()`
//! still counts into the child's copy, nothing is sent, closing only closes
//! the child's copy of the socket and never joins the parent's thread.

use crate::agent::{Agent, BeatOutcome};
use crate::fork::{self, incarnation};
use crate::frame::Status;
use crate::sync::ForkSafeMutex;
use crate::transport::Transport;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// The progress counter on a cache line of its own: the hot loop writes it,
/// the beater reads it once per interval.
#[repr(align(64))]
struct Padded(AtomicU64);

/// Packed [`Heartbeat::set_status`] report. 0 = `OK` with the progress payload.
const REPORT_SET: u64 = 1 << 40;
const REPORT_PAYLOAD: u64 = 1 << 41;

/// State shared by the handle and the beater thread.
struct Shared {
    progress: Padded,
    report: AtomicU64,
    stop: AtomicBool,
    done: AtomicBool,
    sent: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
    idle: AtomicU64,
}

/// Counters of a [`Heartbeat`] (`docs/agent.md#progress-heartbeats`). Every
/// tick is exactly one of them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeartbeatStats {
    /// Beats the kernel accepted.
    pub sent: u64,
    /// Beats dropped (no observer, full queue…): their progress stays pending.
    pub dropped: u64,
    /// Beats that failed (closed, OS error): their progress stays pending.
    pub failed: u64,
    /// Ticks without progress since the last sent beat: nothing was sent.
    pub idle: u64,
}

/// Which process a handle was made in: a forked child differs in at least
/// one of these (`docs/agent.md#fork-safety`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Incarnation {
    token: Option<u64>,
    epoch: u64,
    pid: u32,
}

impl Incarnation {
    fn now() -> Incarnation {
        let token = incarnation::current();
        Incarnation {
            token,
            epoch: fork::current(),
            // With a wipe-on-fork token the pid need not be read.
            pid: if token.is_some() { 0 } else { fork::getpid() },
        }
    }
}

/// A progress-gated heartbeat: an agent plus the thread that beats for it.
pub struct Heartbeat<T: Transport + Send + 'static> {
    shared: Arc<Shared>,
    agent: Arc<ForkSafeMutex<Agent<T>>>,
    thread: ForkSafeMutex<Option<JoinHandle<()>>>,
    interval: Duration,
    born: Incarnation,
}

impl<T: Transport + Send + 'static> Heartbeat<T> {
    /// Start beating for `agent` every `interval` (> 0). Fails only if the
    /// thread cannot be spawned.
    pub fn start(agent: Agent<T>, interval: Duration) -> io::Result<Self> {
        if interval.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "heartbeat interval must be > 0",
            ));
        }
        fork::register()?;
        incarnation::init();
        let shared = Arc::new(Shared {
            progress: Padded(AtomicU64::new(0)),
            report: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            done: AtomicBool::new(false),
            sent: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            idle: AtomicU64::new(0),
        });
        let agent = Arc::new(ForkSafeMutex::new(agent));
        let handle = {
            let shared = Arc::clone(&shared);
            let agent = Arc::clone(&agent);
            thread::Builder::new()
                .name("varta-heartbeat".into())
                .spawn(move || beater(&shared, &agent, interval))?
        };
        Ok(Heartbeat {
            shared,
            agent,
            thread: ForkSafeMutex::new(Some(handle)),
            interval,
            born: Incarnation::now(),
        })
    }

    /// The hot-loop call: one relaxed atomic add. No system call, no
    /// allocation, no lock.
    #[inline(always)]
    pub fn progress(&self) {
        self.shared.progress.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Progress calls so far (wrapping at 2⁶⁴).
    pub fn progress_count(&self) -> u64 {
        self.shared.progress.0.load(Ordering::Relaxed)
    }

    /// The status (and payload) the next beats carry: `(Ok, None)` restores
    /// the default (`OK`, progress payload); a `Some` payload replaces the
    /// progress count. `Stall` is the observer's, never sent: `InvalidInput`.
    pub fn set_status(&self, status: Status, payload: Option<u32>) -> io::Result<()> {
        if status == Status::Stall {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "STALL is reserved for the observer",
            ));
        }
        let word = match (status, payload) {
            (Status::Ok, None) => 0,
            (s, None) => REPORT_SET | (s as u64) << 32,
            (s, Some(p)) => REPORT_SET | REPORT_PAYLOAD | (s as u64) << 32 | u64::from(p),
        };
        self.shared.report.store(word, Ordering::Relaxed);
        Ok(())
    }

    /// The status and payload override set by [`set_status`](Self::set_status).
    pub fn status(&self) -> (Status, Option<u32>) {
        decode_report(self.shared.report.load(Ordering::Relaxed))
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    pub fn stats(&self) -> HeartbeatStats {
        let s = &self.shared;
        HeartbeatStats {
            sent: s.sent.load(Ordering::Relaxed),
            dropped: s.dropped.load(Ordering::Relaxed),
            failed: s.failed.load(Ordering::Relaxed),
            idle: s.idle.load(Ordering::Relaxed),
        }
    }

    /// This handle lives in a forked child of the process that started it:
    /// it has no beater (`docs/agent.md#progress-heartbeats-and-fork`).
    pub fn is_forked_copy(&self) -> bool {
        Incarnation::now() != self.born
    }

    /// The beater runs: started here, not stopped, and not a forked copy.
    pub fn is_beating(&self) -> bool {
        !self.is_forked_copy() && !self.shared.done.load(Ordering::Acquire)
    }

    /// Ask the beater to stop and wait up to `slice` for it; join it once it
    /// has finished. True when no beater runs any more (also in a forked
    /// child, which has none). Bindings call this in bounded slices.
    pub fn stop(&self, slice: Duration) -> bool {
        let mut th = self.thread.lock();
        let Some(handle) = th.as_ref() else {
            return true;
        };
        if self.is_forked_copy() {
            // The thread does not exist here: joining (or detaching) it
            // would touch another process's thread. Forget the handle.
            if let Some(h) = th.take() {
                std::mem::forget(h);
            }
            return true;
        }
        self.shared.stop.store(true, Ordering::Release);
        handle.thread().unpark();
        let end = Instant::now() + slice;
        while !self.shared.done.load(Ordering::Acquire) {
            let now = Instant::now();
            if now >= end {
                return false;
            }
            thread::sleep((end - now).min(Duration::from_millis(1)));
        }
        if let Some(h) = th.take() {
            // Finished: the join returns at once. The beater never panics.
            let _ = h.join();
        }
        true
    }

    /// After [`stop`](Self::stop) returned true: close the agent, first
    /// sending the clean-exit terminal frame when `final_frame` (and the
    /// agent has not signed off already). A forked copy sends nothing: its
    /// process never beat. Returns the terminal frame's outcome if one was
    /// attempted. Idempotent.
    pub fn finish(&self, final_frame: bool) -> Option<BeatOutcome> {
        let forked = self.is_forked_copy();
        let mut a = self.agent.lock();
        if a.is_closed() {
            return None;
        }
        let outcome = (final_frame && !forked && !a.signed_off()).then(|| a.send_terminal());
        a.close();
        outcome
    }

    /// Stop the beater (waiting as long as it takes) and [`finish`](Self::finish).
    pub fn close(&self, final_frame: bool) -> Option<BeatOutcome> {
        while !self.stop(Duration::from_millis(50)) {}
        self.finish(final_frame)
    }

    pub fn is_closed(&self) -> bool {
        self.agent.lock().is_closed()
    }

    /// The agent, for reading its state (nonce, transport). Beats take the
    /// same lock; hold it briefly.
    pub fn agent(&self) -> &ForkSafeMutex<Agent<T>> {
        &self.agent
    }
}

impl<T: Transport + Send + 'static> Drop for Heartbeat<T> {
    fn drop(&mut self) {
        // Stop the thread (it would otherwise beat for a dropped handle's
        // progress forever); leave the socket to the agent's own drop.
        while !self.stop(Duration::from_millis(50)) {}
    }
}

fn decode_report(word: u64) -> (Status, Option<u32>) {
    if word & REPORT_SET == 0 {
        return (Status::Ok, None);
    }
    let status = Status::from_u8((word >> 32) as u8).unwrap_or(Status::Ok);
    let payload = (word & REPORT_PAYLOAD != 0).then_some(word as u32);
    (status, payload)
}

/// The beater thread: one tick per interval until asked to stop.
fn beater<T: Transport>(shared: &Shared, agent: &ForkSafeMutex<Agent<T>>, interval: Duration) {
    let mut next = Instant::now() + interval;
    // Progress already reported by a sent beat.
    let mut reported = 0u64;
    'run: loop {
        loop {
            if shared.stop.load(Ordering::Acquire) {
                break 'run;
            }
            let now = Instant::now();
            if now >= next {
                // Missed ticks (a suspended machine) are skipped, not replayed.
                next = (next + interval).max(now + interval / 2);
                break;
            }
            thread::park_timeout(next - now);
        }
        tick(shared, agent, &mut reported);
    }
    shared.done.store(true, Ordering::Release);
}

/// One tick: beat if progress moved since the last sent beat.
fn tick<T: Transport>(shared: &Shared, agent: &ForkSafeMutex<Agent<T>>, reported: &mut u64) {
    let now = shared.progress.0.load(Ordering::Relaxed);
    if now == *reported {
        shared.idle.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let delta = u32::try_from(now.wrapping_sub(*reported)).unwrap_or(u32::MAX);
    let (status, payload) = decode_report(shared.report.load(Ordering::Relaxed));
    let outcome = agent.lock().beat(status, payload.unwrap_or(delta));
    let counter = match outcome {
        BeatOutcome::Sent => {
            *reported = now;
            &shared.sent
        }
        BeatOutcome::Dropped(_) => &shared.dropped,
        BeatOutcome::Failed(_) => &shared.failed,
    };
    counter.fetch_add(1, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{Frame, FRAME_LEN, NONCE_TERMINAL};
    use std::sync::Mutex;

    /// Records every frame; can be told to drop.
    #[derive(Clone, Default)]
    struct Rec {
        frames: Arc<Mutex<Vec<Frame>>>,
        drop_all: Arc<AtomicBool>,
    }

    impl Transport for Rec {
        type Pending = ();
        fn send(&mut self, frame: &[u8; FRAME_LEN]) -> io::Result<usize> {
            if self.drop_all.load(Ordering::Relaxed) {
                return Err(io::Error::from_raw_os_error(libc::ECONNREFUSED));
            }
            self.frames
                .lock()
                .unwrap()
                .push(Frame::decode(frame).unwrap());
            Ok(FRAME_LEN)
        }
        fn prepare_reconnect(&self) -> io::Result<()> {
            Ok(())
        }
        fn commit_reconnect(&mut self, _: ()) {}
    }

    const TICK: Duration = Duration::from_millis(10);

    fn start(rec: &Rec) -> Heartbeat<Rec> {
        Heartbeat::start(Agent::new(rec.clone()).unwrap(), TICK).unwrap()
    }

    fn wait_for(what: &str, mut pred: impl FnMut() -> bool) {
        let end = Instant::now() + Duration::from_secs(10);
        while !pred() {
            assert!(Instant::now() < end, "timed out waiting for {what}");
            thread::sleep(Duration::from_millis(1));
        }
    }

    fn beats(rec: &Rec) -> Vec<Frame> {
        rec.frames.lock().unwrap().clone()
    }

    #[test]
    fn no_beat_without_progress() {
        let rec = Rec::default();
        let hb = start(&rec);
        wait_for("idle ticks", || hb.stats().idle >= 10);
        assert!(beats(&rec).is_empty(), "beat without progress");
        assert_eq!(hb.stats().sent, 0);
        hb.close(false);
        assert!(beats(&rec).is_empty());
    }

    #[test]
    fn beats_follow_progress_and_stop_when_it_stops() {
        let rec = Rec::default();
        let hb = start(&rec);
        for _ in 0..5 {
            hb.progress();
        }
        wait_for("a beat", || !beats(&rec).is_empty());
        let first = beats(&rec)[0];
        assert_eq!(
            (first.status, first.payload, first.nonce),
            (Status::Ok, 5, 1)
        );
        // Stalled: ticks pass, nothing more is sent.
        let idle = hb.stats().idle;
        wait_for("idle ticks", || hb.stats().idle >= idle + 10);
        assert_eq!(beats(&rec).len(), 1, "beat while progress stalled");
        // Resumed: beats resume, carrying the progress since the last beat.
        hb.progress();
        hb.progress();
        wait_for("a second beat", || beats(&rec).len() == 2);
        assert_eq!(beats(&rec)[1].payload, 2);
        assert!(hb.is_beating());
        hb.close(false);
        assert!(!hb.is_beating());
    }

    #[test]
    fn set_status_overrides_status_and_payload_until_cleared() {
        let rec = Rec::default();
        let hb = start(&rec);
        hb.set_status(Status::Degraded, Some(1234)).unwrap();
        assert_eq!(hb.status(), (Status::Degraded, Some(1234)));
        hb.progress();
        wait_for("a beat", || beats(&rec).len() == 1);
        let f = beats(&rec)[0];
        assert_eq!((f.status, f.payload), (Status::Degraded, 1234));
        hb.set_status(Status::Critical, None).unwrap();
        hb.progress();
        wait_for("a beat", || beats(&rec).len() == 2);
        let f = beats(&rec)[1];
        assert_eq!((f.status, f.payload), (Status::Critical, 1));
        hb.set_status(Status::Ok, None).unwrap();
        assert_eq!(hb.status(), (Status::Ok, None));
        assert!(hb.set_status(Status::Stall, None).is_err());
        hb.close(false);
    }

    #[test]
    fn dropped_beat_keeps_its_progress_pending() {
        let rec = Rec::default();
        rec.drop_all.store(true, Ordering::Relaxed);
        let hb = start(&rec);
        hb.progress();
        wait_for("drops", || hb.stats().dropped >= 2);
        rec.drop_all.store(false, Ordering::Relaxed);
        // No new progress, but the pending one is delivered once, then idle.
        wait_for("the retried beat", || beats(&rec).len() == 1);
        let idle = hb.stats().idle;
        wait_for("idle ticks", || hb.stats().idle >= idle + 5);
        assert_eq!(beats(&rec).len(), 1);
        assert_eq!(beats(&rec)[0].payload, 1);
        hb.close(false);
    }

    #[test]
    fn close_final_sends_the_clean_exit_terminal_frame_once() {
        let rec = Rec::default();
        let hb = start(&rec);
        hb.progress();
        wait_for("a beat", || beats(&rec).len() == 1);
        assert!(hb.close(true).unwrap().is_sent());
        assert!(hb.is_closed());
        assert!(hb.close(true).is_none(), "second close sends nothing");
        let fr = beats(&rec);
        assert_eq!(fr.len(), 2);
        assert_eq!(fr[1].nonce, NONCE_TERMINAL);
        assert_eq!(fr[1].status, Status::Critical);
        assert_eq!(fr[1].payload, crate::cause::PAYLOAD_CLEAN_EXIT);
        // Closed: progress no longer beats.
        hb.progress();
        thread::sleep(TICK * 3);
        assert_eq!(beats(&rec).len(), 2);
    }

    #[test]
    fn drop_stops_the_beater() {
        let rec = Rec::default();
        let hb = start(&rec);
        let shared = Arc::clone(&hb.shared);
        drop(hb);
        assert!(shared.done.load(Ordering::Acquire));
        assert_eq!(Arc::strong_count(&shared), 1, "the thread has let go");
    }

    #[test]
    fn zero_interval_is_rejected() {
        let rec = Rec::default();
        let err = Heartbeat::start(Agent::new(rec).unwrap(), Duration::ZERO)
            .err()
            .unwrap();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
