//! The ingest thread (`docs/verdicts.md`, "Never blind by its own fault").
//!
//! A [`Pump`] owns an [`Observer`] and runs its receive → gates → tracker →
//! deadline work on a thread of its own, draining the sockets continuously
//! whatever its consumer (the Python daemon) is doing: a recovery spawn, an
//! fsync, a `/metrics` render or a GC pause no longer leaves datagrams to
//! the kernel's tiny Unix-socket queue (about 11 datagrams, whatever
//! `SO_RCVBUF` says), where beats are dropped at the sender once it is full.
//!
//! Events go to a bounded queue that the consumer takes from
//! ([`Pump::take_events`]). When the queue is full, `Beat` and diagnostic
//! events are dropped and counted ([`QueueStats`]); `Stall` and `Blind`
//! events are never dropped (at most one stall per agent per silence run,
//! so they stay bounded by the tracker).
//!
//! Blindness: each wait lasts at most one slice (≤ 50 ms, and never past the
//! next deadline), so the observer drains at least once a slice while it
//! looks. A drain that comes later than that by more than
//! [`BLIND_TOLERANCE_NS`] — the process was stopped (SIGSTOP), the host or
//! the VM stalled, the thread was not scheduled, or the clock jumped — means
//! the observer was blind for the excess, and every armed deadline moves back
//! by it before anything is declared stalled. The check runs inside
//! [`Observer::drain_ready`] ([`Observer::watch_for_blindness`]), so the
//! consumer's own drains judge the same gap as the ingest thread's.
//!
//! Hang forensics (`docs/finding-hangs.md`): with a [`ForensicsConfig`]
//! ([`Pump::start_with_forensics`]) a `hung` stall of a pinned process is
//! not queued at once: it goes to the capture thread ([`Worker`]), which
//! queues it when its capture is written (≤ 250 ms waiting for the process,
//! plus the write), with the file's path and SHA-256 set. Ingest, other
//! events and other stalls go on meanwhile, so such a stall can come after
//! events that were produced later.
//!
//! Lock order: the observer lock, then the queue lock. The consumer waits on
//! the queue lock alone, so it never holds up ingest.
//!
//! Without the thread ([`Pump::start`] with `threaded = false`) the consumer
//! drains the sockets itself in [`Pump::take_events`], as a single-threaded
//! observer would: deterministic for tests that must control when a
//! datagram is read, and for embedders who want no extra thread.

use super::event::Event;
use super::forensics::{self, ForensicsConfig, ForensicsCounters, Job, Worker};
pub use super::ingress::BLIND_TOLERANCE_NS;
use super::ingress::{Observer, Waiter};
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Default bound of the event queue.
pub const DEFAULT_QUEUE_CAPACITY: usize = 65_536;

/// Event-queue bookkeeping.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Events waiting for the consumer.
    pub len: usize,
    /// High-water mark of `len`.
    pub max_len: usize,
    /// `Beat` events dropped because the queue was full.
    pub dropped_beats: u64,
    /// Diagnostic events (decode, auth, io, …) dropped because it was full.
    pub dropped_other: u64,
}

struct Queue {
    events: VecDeque<Event>,
    capacity: usize,
    stats: QueueStats,
    /// The thread ended (closed, or it failed): no more events will come.
    done: bool,
}

impl Queue {
    fn push_all(&mut self, batch: &mut Vec<Event>) {
        for ev in batch.drain(..) {
            let keep = self.events.len() < self.capacity
                || matches!(ev, Event::Stall(_) | Event::Blind { .. });
            if keep {
                self.events.push_back(ev);
            } else if matches!(ev, Event::Beat { .. }) {
                self.stats.dropped_beats += 1;
            } else {
                self.stats.dropped_other += 1;
            }
        }
        self.stats.max_len = self.stats.max_len.max(self.events.len());
    }
}

struct Shared {
    obs: Mutex<Observer>,
    queue: Mutex<Queue>,
    ready: Condvar,
    stop: AtomicBool,
    /// Written to wake the thread out of its wait at close.
    wake: Arc<OwnedFd>,
    /// The capture thread, when forensics is on.
    forensics: Mutex<Option<Worker>>,
}

/// Send the `hung` stalls of pinned processes in `batch` to the capture
/// thread (they come back through the queue once captured).
fn route_hung(shared: &Shared, obs: &Observer, batch: &mut Vec<Event>) {
    let worker = lock(&shared.forensics);
    let Some(w) = worker.as_ref() else {
        return;
    };
    let mut i = 0;
    while i < batch.len() {
        let wanted = matches!(&batch[i], Event::Stall(s) if forensics::wants_capture(s));
        if !wanted {
            i += 1;
            continue;
        }
        let Event::Stall(info) = batch.remove(i) else {
            unreachable!("matched a stall above")
        };
        let pidfd = info.generation.and_then(|g| obs.pinned_pidfd(info.pid, g));
        if let Err(info) = w.submit(Job { info: *info, pidfd }) {
            batch.insert(i, Event::Stall(info));
            i += 1;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What [`Pump::take_events`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Taken {
    /// At least one event was appended.
    Events,
    /// The timeout passed with nothing to report.
    Timeout,
    /// The pump is closed and its queue is empty.
    Closed,
}

/// An observer driven by its own ingest thread. See the module docs.
pub struct Pump {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    closed: AtomicBool,
    /// The process that started the thread: a forked child has a copy of
    /// this value but no thread behind it.
    owner_pid: u32,
    /// Readiness of the sockets, for the consumer's own waits (no thread).
    waiter: Waiter,
    threaded: bool,
}

impl std::fmt::Debug for Pump {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pump")
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the result is a fresh descriptor owned below.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl Pump {
    /// Start the ingest thread for `obs` (unless `threaded` is false), with
    /// an event queue of `queue_capacity` (≥ 1) events.
    pub fn start(obs: Observer, queue_capacity: usize, threaded: bool) -> io::Result<Pump> {
        Pump::start_with_forensics(obs, queue_capacity, threaded, None)
    }

    /// [`Pump::start`], with hang captures into `forensics.dir` (created
    /// with mode 0700 if missing) when given.
    pub fn start_with_forensics(
        mut obs: Observer,
        queue_capacity: usize,
        threaded: bool,
        forensics: Option<ForensicsConfig>,
    ) -> io::Result<Pump> {
        // The thread looks at least once a slice; without it, the caller
        // looks only when it polls, which is its own business.
        obs.watch_for_blindness(threaded);
        let capacity = queue_capacity.max(1);
        let wake = Arc::new(eventfd()?);
        let mut waiter = obs.waiter();
        waiter.add(Arc::clone(&wake));
        let shared = Arc::new(Shared {
            obs: Mutex::new(obs),
            queue: Mutex::new(Queue {
                events: VecDeque::with_capacity(capacity.min(DEFAULT_QUEUE_CAPACITY)),
                capacity,
                stats: QueueStats::default(),
                done: false,
            }),
            ready: Condvar::new(),
            stop: AtomicBool::new(false),
            wake,
            forensics: Mutex::new(None),
        });
        if let Some(cfg) = forensics {
            let weak: Weak<Shared> = Arc::downgrade(&shared);
            let worker = Worker::start(cfg, move |stalls| {
                if let Some(shared) = weak.upgrade() {
                    let mut batch: Vec<Event> = stalls
                        .into_iter()
                        .map(|s| Event::Stall(Box::new(s)))
                        .collect();
                    lock(&shared.queue).push_all(&mut batch);
                    shared.ready.notify_all();
                }
            })?;
            *lock(&shared.forensics) = Some(worker);
        }
        let thread = if threaded {
            let inner = Arc::clone(&shared);
            let waiter = waiter.clone();
            Some(
                std::thread::Builder::new()
                    .name("varta-ingest".into())
                    .spawn(move || ingest(&inner, &waiter))?,
            )
        } else {
            None
        };
        Ok(Pump {
            shared,
            thread: Mutex::new(thread),
            closed: AtomicBool::new(false),
            owner_pid: std::process::id(),
            waiter,
            threaded,
        })
    }

    /// The observer, locked (reads of the tracker and counters). Hold it
    /// briefly: ingest waits for it.
    pub fn observer(&self) -> MutexGuard<'_, Observer> {
        lock(&self.shared.obs)
    }

    /// Capture bookkeeping; `None` when forensics is off.
    pub fn forensics_counters(&self) -> Option<ForensicsCounters> {
        lock(&self.shared.forensics).as_ref().map(Worker::counters)
    }

    pub fn queue_stats(&self) -> QueueStats {
        let q = lock(&self.shared.queue);
        QueueStats {
            len: q.events.len(),
            ..q.stats
        }
    }

    /// Move up to `max` queued events to `out`, waiting up to `timeout` for
    /// the first. Before waiting, drains the sockets once itself, so what
    /// was sent before the call is seen even with a zero timeout.
    pub fn take_events(&self, out: &mut Vec<Event>, max: usize, timeout: Duration) -> Taken {
        let deadline = Instant::now() + timeout;
        if !self.threaded {
            return self.take_unthreaded(out, max, deadline);
        }
        {
            let mut q = lock(&self.shared.queue);
            if q.events.is_empty() && !q.done {
                drop(q);
                self.drain_now();
                q = lock(&self.shared.queue);
            }
            loop {
                if !q.events.is_empty() {
                    let n = q.events.len().min(max.max(1));
                    out.extend(q.events.drain(..n));
                    return Taken::Events;
                }
                if q.done {
                    return Taken::Closed;
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Taken::Timeout;
                }
                q = self
                    .shared
                    .ready
                    .wait_timeout(q, left)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
        }
    }

    /// [`Pump::take_events`] without a thread: wait on the sockets (at most
    /// until the next deadline) and drain on the caller's thread.
    fn take_unthreaded(&self, out: &mut Vec<Event>, max: usize, deadline: Instant) -> Taken {
        loop {
            self.drain_now();
            {
                let mut q = lock(&self.shared.queue);
                if !q.events.is_empty() {
                    let n = q.events.len().min(max.max(1));
                    out.extend(q.events.drain(..n));
                    return Taken::Events;
                }
                if q.done || self.is_closed() {
                    return Taken::Closed;
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Taken::Timeout;
            }
            let left = u64::try_from(left.as_nanos()).unwrap_or(u64::MAX);
            let slice = lock(&self.shared.obs).wait_slice_ns(Some(left));
            if let Err(e) = self.waiter.wait(Some(slice)) {
                let now = lock(&self.shared.obs).now_ns();
                out.push(Event::Io {
                    error: format!("waiting for datagrams failed: {e}").into(),
                    errno: e.raw_os_error(),
                    observer_ns: now,
                });
                return Taken::Events;
            }
        }
    }

    /// One drain on the caller's thread (the observer lock, then the queue).
    fn drain_now(&self) {
        let mut obs = lock(&self.shared.obs);
        if obs.is_closed() {
            return;
        }
        let mut batch = Vec::new();
        obs.drain_ready(&mut batch);
        route_hung(&self.shared, &obs, &mut batch);
        if !batch.is_empty() {
            lock(&self.shared.queue).push_all(&mut batch);
            self.shared.ready.notify_all();
        }
    }

    /// Stop the thread, then close the observer's listeners (the tracker
    /// stays readable). Idempotent.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        if std::process::id() != self.owner_pid {
            // A forked child: the thread (and whatever lock it held at the
            // fork) lives only in the parent. Leave the parent's socket
            // file and ingest alone; our descriptors close at exit.
            return;
        }
        self.shared.stop.store(true, Ordering::SeqCst);
        let one: u64 = 1;
        // SAFETY: an 8-byte write to our eventfd; a full counter is fine.
        unsafe { libc::write(self.shared.wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
        let thread = lock(&self.thread).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
        // Captures under way finish and queue their stalls first.
        let worker = lock(&self.shared.forensics).take();
        if let Some(mut w) = worker {
            w.close();
        }
        lock(&self.shared.obs).close();
        lock(&self.shared.queue).done = true;
        self.shared.ready.notify_all();
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }
}

impl Drop for Pump {
    fn drop(&mut self) {
        self.close();
    }
}

/// Marks the queue done when the ingest thread ends, however it ends (a
/// panic included), so a consumer is told instead of waiting on a dead
/// thread forever.
struct EndOfIngest<'a>(&'a Shared);

impl Drop for EndOfIngest<'_> {
    fn drop(&mut self) {
        lock(&self.0.queue).done = true;
        self.0.ready.notify_all();
    }
}

fn ingest(shared: &Shared, waiter: &Waiter) {
    let _end = EndOfIngest(shared);
    let mut batch: Vec<Event> = Vec::with_capacity(256);
    while !shared.stop.load(Ordering::SeqCst) {
        let slice = lock(&shared.obs).wait_slice_ns(None);
        let waited = waiter.wait(Some(slice));
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let mut obs = lock(&shared.obs);
        if obs.is_closed() {
            break;
        }
        let now = obs.now_ns();
        if let Err(e) = waited {
            batch.push(Event::Io {
                error: format!("waiting for datagrams failed: {e}").into(),
                errno: e.raw_os_error(),
                observer_ns: now,
            });
            drop(obs);
            lock(&shared.queue).push_all(&mut batch);
            shared.ready.notify_all();
            std::thread::sleep(Duration::from_nanos(slice.max(1_000_000)));
            continue;
        }
        obs.drain_ready(&mut batch);
        route_hung(shared, &obs, &mut batch);
        if !batch.is_empty() {
            // Pushed under the observer lock, so a consumer's own drain can
            // never queue newer events ahead of these.
            lock(&shared.queue).push_all(&mut batch);
            shared.ready.notify_all();
        }
    }
}
