//! Verdicts, the exit watch and the ingest thread (`docs/verdicts.md`) on a
//! real Unix socket: a forked child is the agent, so its exit is real.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use varta_core::frame::{Frame, Status, NONCE_TERMINAL};
use varta_core::observer::clock::{ClockSource, MonotonicClock};
use varta_core::observer::pump::{Pump, Taken};
use varta_core::observer::verdict::PAYLOAD_CLEAN_EXIT;
use varta_core::observer::{Event, Observer, ObserverConfig, Verdict};

mod common;

#[global_allocator]
static GLOBAL: common::Counting = common::Counting;

const MS: u64 = 1_000_000;

fn sock_path(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("varta-verdicts-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("obs.sock")
}

fn observer(path: &Path, threshold_ns: u64) -> Observer {
    let mut cfg = ObserverConfig::new(Some(path.to_path_buf()), threshold_ns);
    cfg.max_beat_rate = 0;
    let clock = MonotonicClock::new(ClockSource::Monotonic).unwrap();
    Observer::new(cfg, Box::new(clock)).unwrap()
}

fn frame(pid: u32, nonce: u64, payload: u32) -> [u8; 32] {
    Frame {
        status: if nonce == NONCE_TERMINAL {
            Status::Critical
        } else {
            Status::Ok
        },
        pid,
        timestamp: if nonce == NONCE_TERMINAL { 1 } else { nonce },
        nonce,
        payload,
    }
    .encode()
}

/// A forked agent: sends one beat, waits for a byte on `cmd`, then sends a
/// clean-exit terminal frame if the byte is `c` and exits. Only
/// async-signal-safe calls in the child.
struct Child {
    pid: libc::pid_t,
    cmd: libc::c_int,
}

impl Child {
    fn spawn(path: &Path) -> Child {
        let sock = std::os::unix::net::UnixDatagram::unbound().unwrap();
        sock.connect(path).unwrap();
        let mut fds = [0; 2];
        // SAFETY: a pipe into a local array.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: the child makes only async-signal-safe calls, then _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: async-signal-safe calls on descriptors we own.
            unsafe {
                let me = libc::getpid() as u32;
                let beat = frame(me, 1, 0);
                libc::send(sock.as_raw_fd(), beat.as_ptr().cast(), 32, 0);
                let mut b = 0u8;
                libc::read(fds[0], (&mut b as *mut u8).cast(), 1);
                if b == b'c' {
                    let t = frame(me, NONCE_TERMINAL, PAYLOAD_CLEAN_EXIT);
                    libc::send(sock.as_raw_fd(), t.as_ptr().cast(), 32, 0);
                }
                libc::_exit(0);
            }
        }
        // SAFETY: closing our copy of the read end.
        unsafe { libc::close(fds[0]) };
        Child { pid, cmd: fds[1] }
    }

    fn tell(&self, b: u8) {
        // SAFETY: one byte into our pipe.
        assert_eq!(
            unsafe { libc::write(self.cmd, (&b as *const u8).cast(), 1) },
            1
        );
    }

    fn reap(&self) {
        // SAFETY: our own child.
        unsafe { libc::waitpid(self.pid, std::ptr::null_mut(), 0) };
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        // SAFETY: our own child and pipe.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            libc::waitpid(self.pid, std::ptr::null_mut(), 0);
            libc::close(self.cmd);
        }
    }
}

/// Events until one satisfies `pred` (waiting on the observer's readiness).
fn until(obs: &mut Observer, pred: impl Fn(&Event) -> bool) -> Vec<Event> {
    let waiter = obs.waiter();
    let mut seen = Vec::new();
    for _ in 0..200 {
        waiter.wait(Some(50 * MS)).unwrap();
        let start = seen.len();
        obs.drain_ready(&mut seen);
        if seen[start..].iter().any(&pred) {
            return seen;
        }
    }
    panic!("no matching event; saw {seen:?}");
}

fn stall_of(pid: libc::pid_t) -> impl Fn(&Event) -> bool {
    move |e| matches!(e, Event::Stall(s) if s.pid == pid as u32)
}

#[test]
fn a_clean_exit_is_reported_at_once_as_exited_and_retired() {
    let path = sock_path("clean");
    let mut obs = observer(&path, 60_000 * MS);
    let child = Child::spawn(&path);
    until(&mut obs, |e| matches!(e, Event::Beat { .. }));
    assert_eq!(obs.exit_watch_counters().unwrap().watched, 1);
    child.tell(b'c');
    let seen = until(&mut obs, stall_of(child.pid));
    let Some(Event::Stall(s)) = seen.iter().find(|e| stall_of(child.pid)(e)) else {
        unreachable!()
    };
    assert_eq!(s.verdict, Verdict::Exited);
    assert!(s.comm.is_some());
    // The terminal frame was read before the exit was judged.
    assert!(seen
        .iter()
        .any(|e| matches!(e, Event::Beat { nonce, .. } if *nonce == NONCE_TERMINAL)));
    assert!(obs.agent(child.pid as u32).is_none());
    let mut removed = Vec::new();
    obs.take_removed(&mut removed);
    assert_eq!(
        removed.iter().map(|a| a.pid).collect::<Vec<_>>(),
        [child.pid as u32]
    );
    child.reap();
}

#[test]
fn a_silent_exit_is_vanished() {
    let path = sock_path("vanish");
    let mut obs = observer(&path, 60_000 * MS);
    let child = Child::spawn(&path);
    until(&mut obs, |e| matches!(e, Event::Beat { .. }));
    child.tell(b'x');
    let seen = until(&mut obs, stall_of(child.pid));
    assert!(seen.iter().any(|e| matches!(
        e,
        Event::Stall(s) if s.verdict == Verdict::Vanished && s.cause.is_none()
    )));
    child.reap();
}

#[test]
fn a_live_silent_agent_is_hung_at_the_threshold() {
    let path = sock_path("hung");
    let mut obs = observer(&path, 100 * MS);
    let child = Child::spawn(&path); // blocks on its pipe: alive, silent
    let seen = until(&mut obs, stall_of(child.pid));
    assert!(seen
        .iter()
        .any(|e| matches!(e, Event::Stall(s) if s.verdict == Verdict::Hung)));
    let a = obs.agent(child.pid as u32).unwrap();
    assert!(a.stalled && a.verdict == Some(Verdict::Hung));
}

#[test]
fn steady_beats_with_the_exit_watch_do_not_allocate() {
    let path = sock_path("alloc");
    let mut cfg = ObserverConfig::new(Some(path.clone()), 60_000 * MS);
    cfg.max_beat_rate = 0;
    cfg.emit_beats = false;
    let clock = MonotonicClock::new(ClockSource::Monotonic).unwrap();
    let mut obs = Observer::new(cfg, Box::new(clock)).unwrap();
    let tx = std::os::unix::net::UnixDatagram::unbound().unwrap();
    tx.connect(&path).unwrap();
    let me = std::process::id();
    let mut out = Vec::with_capacity(64);
    // First contact: identity read and the pidfd watch (allowed to allocate).
    tx.send(&frame(me, 1, 0)).unwrap();
    obs.drain_ready(&mut out);
    assert_eq!(obs.exit_watch_counters().unwrap().watched, 1);
    for n in 2..10 {
        tx.send(&frame(me, n, 0)).unwrap();
    }
    let allocs = common::count_allocs(|| obs.drain_ready(&mut out));
    assert_eq!(allocs, 0, "allocations on the steady UDS ingress path");
    assert_eq!(obs.agent(me).unwrap().beats, 9);
}

#[test]
fn the_pump_delivers_events_and_counts_a_blind_interval() {
    let path = sock_path("pump");
    let obs = observer(&path, 60_000 * MS);
    let pump = Pump::start(obs, 1024, true).unwrap();
    let tx = std::os::unix::net::UnixDatagram::unbound().unwrap();
    tx.connect(&path).unwrap();
    let me = std::process::id();
    tx.send(&frame(me, 1, 0)).unwrap();
    let mut out = Vec::new();
    assert_eq!(
        pump.take_events(&mut out, 16, Duration::from_secs(10)),
        Taken::Events
    );
    assert!(matches!(out[..], [Event::Beat { nonce: 1, .. }]));
    let due = pump.observer().next_deadline_ns().unwrap();
    // Holding the observer keeps the ingest thread from looking: that is
    // blindness, and every deadline moves back by it.
    {
        let _held = pump.observer();
        std::thread::sleep(Duration::from_millis(300));
    }
    out.clear();
    assert_eq!(
        pump.take_events(&mut out, 16, Duration::from_secs(10)),
        Taken::Events
    );
    let Some(Event::Blind { duration_ns, .. }) = out.first() else {
        panic!("{out:?}")
    };
    assert!(*duration_ns >= 150 * MS, "{duration_ns}");
    let moved = pump.observer().next_deadline_ns().unwrap();
    assert!(moved >= due + duration_ns, "{due} {moved} {duration_ns}");
    pump.close();
    assert_eq!(
        pump.take_events(&mut out, 16, Duration::ZERO),
        Taken::Closed
    );
    assert!(!path.exists(), "close unlinks the socket");
}

#[test]
fn a_full_queue_drops_beats_but_never_stalls() {
    let path = sock_path("queue");
    let obs = observer(&path, 150 * MS);
    let pump = Pump::start(obs, 2, true).unwrap();
    let tx = std::os::unix::net::UnixDatagram::unbound().unwrap();
    tx.connect(&path).unwrap();
    let me = std::process::id();
    for n in 1..=5 {
        tx.send(&frame(me, n, 0)).unwrap();
    }
    // Nobody takes events: the queue (2) fills with beats, the rest are
    // dropped and counted; the stall at the threshold still gets in.
    let mut waited = 0;
    while pump.queue_stats().len < 3 && waited < 200 {
        std::thread::sleep(Duration::from_millis(25));
        waited += 1;
    }
    let stats = pump.queue_stats();
    assert_eq!(stats.len, 3, "{stats:?}");
    assert_eq!(stats.dropped_beats, 3);
    let mut out = Vec::new();
    pump.take_events(&mut out, 16, Duration::ZERO);
    assert!(matches!(out.last(), Some(Event::Stall(s)) if s.verdict == Verdict::Hung));
}

#[test]
fn a_dead_ingest_thread_is_reported_not_mistaken_for_silence() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use varta_core::observer::clock::Clock;

    /// A clock that panics on the ingest thread once armed.
    struct Booby(Arc<AtomicBool>, MonotonicClock);
    impl Clock for Booby {
        fn now_ns(&self) -> u64 {
            let on_ingest = std::thread::current().name() == Some("varta-ingest");
            if on_ingest && self.0.load(Ordering::SeqCst) {
                panic!("the ingest thread's clock failed (test)");
            }
            self.1.now_ns()
        }
    }
    let armed = Arc::new(AtomicBool::new(false));
    let clock = Booby(
        Arc::clone(&armed),
        MonotonicClock::new(ClockSource::Monotonic).unwrap(),
    );
    let obs = Observer::new(ObserverConfig::new(None, 60_000 * MS), Box::new(clock)).unwrap();
    let pump = Pump::start(obs, 16, true).unwrap();
    let mut out = Vec::new();
    assert_eq!(
        pump.take_events(&mut out, 16, Duration::from_millis(20)),
        Taken::Timeout
    );
    armed.store(true, Ordering::SeqCst);
    // The thread dies at its next clock reading (within one wait slice);
    // events the consumer's own drains make meanwhile (a Blind, once nobody
    // else drains) may come first.
    let mut taken = Taken::Timeout;
    for _ in 0..100 {
        taken = pump.take_events(&mut out, 16, Duration::from_millis(100));
        if taken == Taken::Closed {
            break;
        }
    }
    assert_eq!(
        taken,
        Taken::Closed,
        "a dead thread must not look like silence"
    );
    assert!(!pump.is_closed(), "nobody closed it");
}
