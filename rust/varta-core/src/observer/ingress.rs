//! The observer: listeners → gates → tracker → events (`docs/observer.md#ingress`, `docs/observer.md#peer-authentication`,
//! docs/observer.md#main-loop).
//!
//! [`Observer::drain_ready`] never blocks: it takes whatever datagrams are
//! queued (round-robin over listeners, one batch each per pass, bounded per
//! call), runs every frame through the ingress gates in the spec's order and
//! the tracker, then runs the stall expiry. [`Observer::waiter`] hands out a
//! lock-free handle on the listener sockets so a caller can wait for
//! readiness *without* holding the observer (the binding waits with the GIL
//! released and its mutex free); [`Observer::until_next_deadline_ns`] says
//! how long that wait may last before a stall is due. [`Observer::poll`]
//! combines the three for Rust callers.
//!
//! Listener kinds are an enum ([`Listener`]) so network listeners (UDP,
//! secure UDP) slot in next to the Unix socket: each turns its datagrams into
//! [`Received`] items (plaintext 32 bytes + who sent them) and the shared
//! gate code does the rest.
//!
//! Adding a listener kind: a new [`Listener`] variant with `raw_fd`/`wait_fd`
//! (readiness), `recv_batch` (non-blocking, pre-allocated buffers),
//! `received` (its own checks → [`Received`]; `Peer { kernel_pid: None,
//! origin, local: false }` for network peers, whose identity is not read from
//! `/proc` and which the `pid_max` gate applies to), `pid_hint` and `close`;
//! bind it in [`Observer::new`] from new [`ObserverConfig`] fields (or hand it
//! to [`Observer::add_listener`]). Its counters live in [`IngressCounters`].

use super::clock::Clock;
pub use super::config::{ObserverConfig, ObserverError};
use super::event::Event;
use super::exitwatch::{ExitWatch, ExitWatchCounters};
use super::gates::{uds_received, Gates};
pub use super::gates::{IngressCounters, Peer, Received, RecvCtx, PID_MAX_REFRESH_NS};
use super::identity::ProcIdentity;
use super::listener::{wait_readable, PidfdCounters, SenderPidfd, UdsListener, RECV_BATCH};
use super::tracker::{AgentRef, AgentView, BeatOrigin, NetPeer, Tracker};
use super::udp::UdpListener;
use super::verdict::Verdict;
use crate::frame::{DecodeError, FRAME_LEN};
use std::borrow::Cow;
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest single wait slice; callers re-check signals/shutdown between slices.
pub const WAIT_SLICE_NS: u64 = 50_000_000;
/// With blindness watched ([`Observer::watch_for_blindness`]), a drain
/// later than one wait slice after the previous one by more than this means
/// the observer could not look. Below it, a late drain is ordinary
/// scheduling noise and the kernel's queue absorbs what arrived meanwhile.
pub const BLIND_TOLERANCE_NS: u64 = 25_000_000;
/// Datagrams handled per [`Observer::drain_ready`] call at most (bounds the
/// time a caller holds the observer).
pub const DRAIN_BUDGET: usize = 4096;

/// A source of datagrams: the Unix socket, or a UDP listener (plaintext or
/// secure, [`super::udp`]).
#[derive(Debug)]
// Listeners are few and long-lived: their size difference does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Listener {
    Uds(UdsListener),
    Udp(UdpListener),
}

impl Listener {
    pub fn raw_fd(&self) -> RawFd {
        match self {
            Listener::Uds(l) => l.raw_fd(),
            Listener::Udp(l) => l.raw_fd(),
        }
    }

    pub fn wait_fd(&self) -> Arc<OwnedFd> {
        match self {
            Listener::Uds(l) => l.wait_fd(),
            Listener::Udp(l) => l.wait_fd(),
        }
    }

    /// Non-blocking receive of one batch; the count of datagrams taken.
    pub fn recv_batch(&mut self) -> io::Result<usize> {
        match self {
            Listener::Uds(l) => l.recv_batch(),
            Listener::Udp(l) => l.recv_batch(),
        }
    }

    /// The `i`-th datagram of the last batch, through the listener's own
    /// checks (a secure listener opens the AEAD here and counts its
    /// failures in `ctx.counters`).
    pub fn received<'a>(&'a mut self, i: usize, ctx: &mut RecvCtx<'_>) -> Received<'a> {
        match self {
            Listener::Uds(l) => uds_received(l, i, ctx.own_uid),
            Listener::Udp(l) => l.received(i, ctx.now_ns, ctx.counters),
        }
    }

    /// The sender's pidfd for the `i`-th datagram (Unix listener with
    /// `SO_PASSPIDFD`; [`SenderPidfd::NotRequested`] otherwise).
    pub fn sender_pidfd(&self, i: usize) -> SenderPidfd {
        match self {
            Listener::Uds(l) => l.datagram(i).pidfd,
            Listener::Udp(_) => SenderPidfd::NotRequested,
        }
    }

    /// The listener went idle: close what it still holds from past batches
    /// (the Unix listener's pidfds).
    pub fn release_idle(&mut self) {
        match self {
            Listener::Uds(l) => l.release_pidfds(),
            Listener::Udp(_) => {}
        }
    }

    /// The pid field of the `i`-th datagram, unverified — only a cache
    /// prefetch hint for the tracker's pid index.
    pub fn pid_hint(&self, i: usize) -> Option<u32> {
        match self {
            Listener::Uds(l) => {
                let d = l.datagram(i).data;
                (d.len() >= 8).then(|| u32::from_le_bytes([d[4], d[5], d[6], d[7]]))
            }
            Listener::Udp(l) => l.pid_hint(i),
        }
    }

    pub fn close(&mut self) {
        match self {
            Listener::Uds(l) => l.close(),
            Listener::Udp(l) => l.close(),
        }
    }
}

/// A counter as exported by [`Observer::counters`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CounterValue {
    Int(u64),
    /// Every label value, zero-filled, in a fixed order.
    Labels(Vec<(&'static str, u64)>),
}

/// A cheap, lock-free handle for waiting until any listener is readable.
/// Holds its own references to the sockets, so it stays valid (and simply
/// sees nothing) if the observer is closed meanwhile.
#[derive(Clone, Debug)]
pub struct Waiter {
    fds: Vec<Arc<OwnedFd>>,
}

impl Waiter {
    /// Also wake when `fd` is readable (an eventfd to interrupt a wait).
    pub fn add(&mut self, fd: Arc<OwnedFd>) {
        self.fds.push(fd);
    }

    /// Wait up to `timeout_ns` (`None` = forever) for a readable listener.
    /// With no listeners this just sleeps for the timeout.
    pub fn wait(&self, timeout_ns: Option<u64>) -> io::Result<bool> {
        let mut raw = [0 as RawFd; 16];
        let n = self.fds.len().min(raw.len());
        for (r, fd) in raw.iter_mut().zip(&self.fds) {
            *r = fd.as_raw_fd();
        }
        wait_readable(&raw[..n], timeout_ns)
    }
}

/// The observer core. See the module docs.
pub struct Observer {
    listeners: Vec<Listener>,
    cursor: usize,
    gates: Gates,
    clock: Box<dyn Clock>,
    socket_path: Option<PathBuf>,
    uds_rcvbuf_bytes: u64,
    closed: bool,
    /// Blindness is judged at each drain ([`Observer::watch_for_blindness`]).
    blind_watch: bool,
    /// Observer time the last drain finished.
    last_look_ns: u64,
}

impl fmt::Debug for Observer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Observer")
            .field("listeners", &self.listeners)
            .field("socket_path", &self.socket_path)
            .field("tracked", &self.gates.tracker.len())
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

impl Observer {
    /// Validate `cfg`, build the tracker and bind the Unix listener (if any).
    pub fn new(cfg: ObserverConfig, clock: Box<dyn Clock>) -> Result<Observer, ObserverError> {
        cfg.validate()?;
        let tracker = Tracker::new(cfg.tracker)?;
        let mut listeners = Vec::new();
        let mut uds_rcvbuf_bytes = 0;
        if let Some(path) = &cfg.socket_path {
            let l = UdsListener::bind(path, cfg.socket_mode, cfg.uds_rcvbuf_bytes)?;
            uds_rcvbuf_bytes = l.rcvbuf_bytes();
            listeners.push(Listener::Uds(l));
        }
        let now = clock.now_ns();
        let exits = if cfg.exit_watch {
            // No epoll (a seccomp filter, say): exits are found at the threshold.
            ExitWatch::new(cfg.tracker.capacity).ok()
        } else {
            None
        };
        let gates = Gates::new(&cfg, tracker, exits, now);
        Ok(Observer {
            listeners,
            cursor: 0,
            gates,
            clock,
            socket_path: cfg.socket_path,
            uds_rcvbuf_bytes,
            closed: false,
            blind_watch: false,
            last_look_ns: now,
        })
    }

    /// `f` of the first UDP listener that gives an answer.
    fn first_udp<R>(&self, f: impl Fn(&UdpListener) -> Option<R>) -> Option<R> {
        self.listeners.iter().find_map(|l| match l {
            Listener::Udp(u) => f(u),
            Listener::Uds(_) => None,
        })
    }

    /// The Unix listener, if any.
    fn uds(&self) -> Option<&UdsListener> {
        self.listeners.iter().find_map(|l| match l {
            Listener::Uds(u) => Some(u),
            Listener::Udp(_) => None,
        })
    }

    /// Add a listener (network listeners are bound by their own module).
    pub fn add_listener(&mut self, l: Listener) {
        if matches!(l, Listener::Udp(_)) {
            self.gates.tracker.reserve_senders();
        }
        self.listeners.push(l);
    }

    /// The bound address of the first UDP listener, if any.
    pub fn udp_local_addr(&self) -> Option<std::net::SocketAddr> {
        self.first_udp(|u| Some(u.local_addr()))
    }

    /// Effective `SO_RCVBUF` of the first UDP listener, if any.
    pub fn udp_rcvbuf_bytes(&self) -> Option<u64> {
        self.first_udp(|u| Some(u.rcvbuf_bytes()))
    }

    /// Replay-state entries held by the first secure UDP listener, if any.
    pub fn secure_senders(&self) -> Option<usize> {
        self.first_udp(UdpListener::secure_senders)
    }

    pub fn socket_path(&self) -> Option<&Path> {
        self.socket_path.as_deref()
    }

    pub fn threshold_ns(&self) -> u64 {
        self.gates.threshold_ns
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Observer time (ns since start, clamped forward).
    pub fn now_ns(&self) -> u64 {
        self.clock.now_ns()
    }

    pub fn tracker(&self) -> &Tracker {
        &self.gates.tracker
    }

    pub fn ingress_counters(&self) -> &IngressCounters {
        &self.gates.counters
    }

    /// Whether the Unix listener receives its senders' pidfds
    /// (`SO_PASSPIDFD`); `None` without a Unix listener.
    pub fn uds_pidfd_mode(&self) -> Option<bool> {
        self.uds().map(UdsListener::pidfd_mode)
    }

    /// Pidfd bookkeeping of the Unix listener (received / closed /
    /// unavailable); `None` without one.
    pub fn uds_pidfd_counters(&self) -> Option<PidfdCounters> {
        self.uds().map(UdsListener::pidfd_counters)
    }

    /// Mutable ingress counters, for network listeners that count their own
    /// refusals.
    pub fn ingress_counters_mut(&mut self) -> &mut IngressCounters {
        &mut self.gates.counters
    }

    pub fn next_deadline_ns(&self) -> Option<u64> {
        self.gates.tracker.next_deadline_ns()
    }

    /// Time left before the next stall is due (0 = due now); `None` if no
    /// pid is armed.
    pub fn until_next_deadline_ns(&self) -> Option<u64> {
        self.next_deadline_ns()
            .map(|d| d.saturating_sub(self.clock.now_ns()))
    }

    /// The Unix socket's agent `pid`.
    pub fn agent(&self, pid: u32) -> Option<AgentView> {
        self.gates.tracker.get(pid)
    }

    /// Agent (`peer`, `pid`) (docs/observer.md#agent-identity); `None` = the Unix socket's.
    pub fn agent_at(&self, peer: Option<&NetPeer>, pid: u32) -> Option<AgentView> {
        self.gates.tracker.get_at(peer, pid)
    }

    /// The Unix socket's agent `pid`, else the first network agent with it.
    pub fn agent_any(&self, pid: u32) -> Option<AgentView> {
        self.gates.tracker.get_any(pid)
    }

    /// What the OS said about agent (`peer`, `pid`)'s process, if read.
    pub fn identity(&self, peer: Option<&NetPeer>, pid: u32) -> Option<Arc<ProcIdentity>> {
        self.gates.tracker.identity(peer, pid)
    }

    pub fn agents(&self) -> impl Iterator<Item = AgentView> + '_ {
        self.gates.tracker.iter()
    }

    /// Every agent with its identity, if read.
    pub fn agents_identified(
        &self,
    ) -> impl Iterator<Item = (AgentView, Option<&Arc<ProcIdentity>>)> + '_ {
        self.gates.tracker.iter_identified()
    }

    /// Agents removed from the tracker since the last call. Their secure
    /// replay state is kept on purpose (`secure::replay`, "Lifetime").
    pub fn take_removed(&mut self, out: &mut Vec<AgentRef>) {
        self.gates.tracker.take_removed(out);
    }

    /// Readiness handle: every listener, and the exit watch.
    pub fn waiter(&self) -> Waiter {
        let mut fds: Vec<Arc<OwnedFd>> = self.listeners.iter().map(Listener::wait_fd).collect();
        if let Some(w) = &self.gates.exits {
            fds.push(w.wait_fd());
        }
        Waiter { fds }
    }

    /// A pidfd pinned on the process `pid` started at `generation`: the exit
    /// watch's (duplicated), else one opened now and checked against the
    /// start time (still that process, still running); `None` otherwise.
    pub fn pinned_pidfd(&self, pid: u32, generation: u64) -> Option<OwnedFd> {
        if let Some(fd) = self
            .gates
            .exits
            .as_ref()
            .and_then(|w| w.dup_pidfd(pid, generation))
        {
            return Some(fd);
        }
        super::procfs::pinned_pidfd(pid, generation).ok()
    }

    /// Counters of the pidfd exit watch; `None` when it is off.
    pub fn exit_watch_counters(&self) -> Option<ExitWatchCounters> {
        self.gates.exits.as_ref().map(ExitWatch::counters)
    }

    /// The observer could not look from `from_ns` to `to_ns` (observer
    /// time): its process was stopped, the host stalled, or its thread was
    /// not scheduled. Every armed deadline moves back by that long, so no
    /// agent is blamed for beats the observer could not receive (the kernel
    /// drops them once the socket queue is full); a [`Event::Blind`] says
    /// so.
    pub fn observer_was_blind(&mut self, from_ns: u64, to_ns: u64, out: &mut Vec<Event>) {
        self.gates.blind(from_ns, to_ns, out);
    }

    /// Judge blindness at every [`Observer::drain_ready`]: a drain more than
    /// one wait slice ([`WAIT_SLICE_NS`]) plus [`BLIND_TOLERANCE_NS`] after
    /// the previous one means nobody was looking for the excess, which is
    /// then handed to [`Observer::observer_was_blind`]. For owners that drain
    /// at least once a slice while they look ([`super::pump`]); off by
    /// default, so callers with a fake clock drain when they please.
    pub fn watch_for_blindness(&mut self, on: bool) {
        self.blind_watch = on;
        self.last_look_ns = self.clock.now_ns();
    }

    /// Take queued datagrams (≤ [`DRAIN_BUDGET`]) from every listener
    /// round-robin, gate and record them, then emit due stalls. Never
    /// blocks. Events are appended to `out`.
    pub fn drain_ready(&mut self, out: &mut Vec<Event>) {
        if self.closed {
            return;
        }
        let mut now = self.clock.now_ns();
        if self.blind_watch {
            // Before anything can expire: whoever drains (the ingest thread
            // or a consumer) sees the same gap, so no path judges deadlines
            // that blind time should have moved.
            let expected = self.last_look_ns.saturating_add(WAIT_SLICE_NS);
            if now > expected.saturating_add(BLIND_TOLERANCE_NS) {
                self.gates.blind(expected, now, out);
            }
        }
        self.gates.refresh_pid_max(now);
        // Runs on every wake-up, traffic or not: an idle listener's expired
        // replay state is swept too.
        for l in &mut self.listeners {
            if let Listener::Udp(u) = l {
                u.maintain(now);
            }
        }
        let n = self.listeners.len();
        let mut budget = DRAIN_BUDGET;
        let mut idle = 0;
        // One batch per listener per pass, until every listener came back
        // empty in a row or the budget is spent.
        while n > 0 && idle < n && budget > 0 {
            let i = self.cursor % n;
            self.cursor = (self.cursor + 1) % n;
            let l = &mut self.listeners[i];
            match l.recv_batch() {
                Ok(0) => idle += 1,
                Ok(got) => {
                    // A short batch means the queue is empty: skip the
                    // extra (empty) receive for this listener.
                    if got < RECV_BATCH {
                        idle += 1;
                    } else {
                        idle = 0;
                    }
                    budget = budget.saturating_sub(got);
                    self.gates.counters.datagrams =
                        self.gates.counters.datagrams.saturating_add(got as u64);
                    now = self.clock.now_ns();
                    // Overlap the pid-index cache misses of the whole batch.
                    for k in 0..got {
                        if let Some(pid) = l.pid_hint(k) {
                            self.gates.tracker.prefetch(pid);
                        }
                    }
                    for k in 0..got {
                        let mut ctx = RecvCtx {
                            own_uid: self.gates.own_uid,
                            now_ns: now,
                            counters: &mut self.gates.counters,
                        };
                        let pidfd = l.sender_pidfd(k);
                        let r = l.received(k, &mut ctx);
                        self.gates.handle(r, pidfd, now, out);
                    }
                }
                Err(e) => {
                    idle += 1;
                    let error = Cow::Owned(format!("receive failed: {e}"));
                    self.gates.refused(error, e.raw_os_error(), now, out);
                }
            }
        }
        if budget == DRAIN_BUDGET {
            // Nothing arrived on any listener (a wait slice ran out): close
            // the pidfds kept from past batches.
            for l in &mut self.listeners {
                l.release_idle();
            }
        }
        let now = self.clock.now_ns();
        if idle >= n {
            // Every queue is empty, so a terminal frame sent before an exit
            // has been read: the exit's verdict can use it.
            self.gates.reap_exits(now, out);
        }
        self.gates.expire(now, out);
        self.last_look_ns = self.clock.now_ns();
    }

    /// Blocking convenience for Rust callers: wait (in slices of at most
    /// [`WAIT_SLICE_NS`], ending early at the next stall deadline) until at
    /// least one event is ready or `timeout` elapses (`None` = forever).
    /// Returns the number of events appended.
    pub fn poll(&mut self, timeout: Option<Duration>, out: &mut Vec<Event>) -> io::Result<usize> {
        let start = out.len();
        let deadline = timeout.map(|t| Instant::now() + t);
        let waiter = self.waiter();
        loop {
            // Wait first: readiness is level-triggered, so queued datagrams
            // (or a stall already due: slice 0) end the wait at once.
            let remaining = deadline.map(|d| {
                u64::try_from(d.saturating_duration_since(Instant::now()).as_nanos())
                    .unwrap_or(u64::MAX)
            });
            waiter.wait(Some(self.wait_slice_ns(remaining)))?;
            self.drain_ready(out);
            if out.len() > start || self.closed {
                return Ok(out.len() - start);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(0);
            }
        }
    }

    /// How long one wait slice may last: the caller's remaining time, the
    /// next stall deadline and [`WAIT_SLICE_NS`], whichever is first.
    pub fn wait_slice_ns(&self, remaining_ns: Option<u64>) -> u64 {
        let mut t = WAIT_SLICE_NS;
        if let Some(r) = remaining_ns {
            t = t.min(r);
        }
        if let Some(d) = self.until_next_deadline_ns() {
            t = t.min(d);
        }
        t
    }

    /// Every counter of `docs/observer.md#metric-families` the core owns, keyed by family
    /// name without `varta_` and `_total`; labelled families zero-filled.
    pub fn counters(&self) -> Vec<(&'static str, CounterValue)> {
        use CounterValue::{Int, Labels};
        let c = &self.gates.counters;
        let t = self.gates.tracker.counters();
        let cfg = self.gates.tracker.config();
        let mut v: Vec<(&'static str, CounterValue)> =
            t.entries().iter().map(|&(k, n)| (k, Int(n))).collect();
        v.extend([
            ("frame_auth_failures", Int(c.frame_auth_failures)),
            (
                "decode_errors",
                Labels(
                    DecodeError::ALL_LABELS
                        .iter()
                        .zip(c.decode_errors)
                        .map(|(&l, n)| (l, n))
                        .collect(),
                ),
            ),
            ("io_errors", Int(c.io_errors)),
            ("ctrl_truncated", Int(c.ctrl_truncated)),
            ("tracker_capacity", Int(cfg.capacity as u64)),
            (
                "tracker_eviction_scan_window_max",
                Int(cfg.scan_window as u64),
            ),
            ("frame_namespace_mismatch", Int(c.frame_namespace_mismatch)),
            (
                "frame_rejected_pid_above_max",
                Int(c.frame_rejected_pid_above_max),
            ),
            ("pid_max_current", Int(u64::from(self.gates.pid_max))),
            ("truncated_datagrams", Int(c.truncated_datagrams)),
            (
                "rate_limited",
                Labels(vec![
                    ("per_pid", c.rate_limited_per_pid),
                    ("global", c.rate_limited_global),
                ]),
            ),
            ("observer_uds_rcvbuf_bytes", Int(self.uds_rcvbuf_bytes)),
            ("observer_clock_regression", Int(self.clock.regressions())),
            (
                "observer_clock_jump_forward",
                Int(self.clock.jumps_forward()),
            ),
            ("watch_pids_tracked", Int(self.gates.tracker.len() as u64)),
            (
                "stall_verdicts",
                Labels(
                    Verdict::ALL
                        .iter()
                        .map(|v| (v.as_str(), t.stall_verdicts[*v as usize]))
                        .collect(),
                ),
            ),
            ("observer_blind_intervals", Int(self.gates.blind_intervals)),
            ("observer_blind_ns", Int(self.gates.blind_ns)),
            ("frame_decrypt_failures", Int(c.frame_decrypt_failures)),
            ("secure_replay_refused", Int(c.secure_replay_refused)),
            ("sender_state_full", Int(c.sender_state_full)),
            ("secure_aead_attempts", Int(c.secure_aead_attempts)),
        ]);
        v
    }

    /// Close every listener (unlinking the socket file iff it is still
    /// ours). Idempotent; the tracker stays readable.
    pub fn close(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        for l in &mut self.listeners {
            l.close();
        }
        self.listeners.clear();
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.close();
    }
}

/// Feed raw 32-byte frames through the gates as if a local kernel-attested
/// peer with pid `kernel_pid` had sent them (tests of the gate order without
/// sockets).
#[doc(hidden)]
pub fn inject_for_test(
    obs: &mut Observer,
    bytes: &[u8; FRAME_LEN],
    kernel_pid: Option<u32>,
    out: &mut Vec<Event>,
) {
    let now = obs.clock.now_ns();
    let peer = Peer {
        kernel_pid,
        origin: if kernel_pid.is_some() {
            BeatOrigin::KernelAttested
        } else {
            BeatOrigin::SocketModeOnly
        },
        local: true,
        net: None,
    };
    obs.gates.handle(
        Received::Frame { bytes, peer },
        SenderPidfd::NotRequested,
        now,
        out,
    );
}

/// Run the stall expiry alone (tests with a fake clock).
#[doc(hidden)]
pub fn expire_for_test(obs: &mut Observer, out: &mut Vec<Event>) {
    let now = obs.clock.now_ns();
    obs.gates.expire(now, out);
}
