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
use super::event::Event;
use super::exitwatch::{ExitWatch, ExitWatchCounters};
use super::listener::{
    wait_readable, Datagram, PeerCred, PidfdCounters, SenderPidfd, UdsListener, RECV_BATCH,
};
use super::procfs;
use super::tracker::{
    AgentView, BeatOrigin, ExitOutcome, RecordOutcome, StallDecision, Tracker, TrackerConfig,
    TrackerConfigError, MAX_CAPACITY, MAX_SCAN_WINDOW,
};
use super::udp::UdpListener;
use super::verdict::{self, Liveness, Verdict};
use crate::frame::{DecodeError, Frame, FRAME_LEN};
use std::borrow::Cow;
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest single wait slice; callers re-check signals/shutdown between slices.
pub const WAIT_SLICE_NS: u64 = 50_000_000;
/// Datagrams handled per [`Observer::drain_ready`] call at most (bounds the
/// time a caller holds the observer).
pub const DRAIN_BUDGET: usize = 4096;
/// With blindness watched ([`Observer::watch_for_blindness`]), a drain
/// later than one wait slice after the previous one by more than this means
/// the observer could not look. Below it, a late drain is ordinary
/// scheduling noise and the kernel's queue absorbs what arrived meanwhile.
pub const BLIND_TOLERANCE_NS: u64 = 25_000_000;
/// `pid_max` is re-read at most this often (observer ns).
pub const PID_MAX_REFRESH_NS: u64 = 60_000_000_000;

const NS_PER_SEC: u64 = 1_000_000_000;

/// Everything an [`Observer`] needs besides its clock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObserverConfig {
    /// UDS listener path; `None` = no Unix listener.
    pub socket_path: Option<PathBuf>,
    /// Socket file mode (≤ 0o777).
    pub socket_mode: u32,
    /// `SO_RCVBUF` request (0 = kernel default; ≤ i32::MAX).
    pub uds_rcvbuf_bytes: u32,
    pub tracker: TrackerConfig,
    /// Per-pid beats per second (0 = off).
    pub max_beat_rate: u32,
    /// Global token bucket refill per second (0 = off).
    pub global_beat_rate: u32,
    /// Global token bucket capacity (0 = off).
    pub global_beat_burst: u32,
    pub allow_cross_namespace: bool,
    /// Emit a `Beat` event per accepted beat (else beats are only counted).
    pub emit_beats: bool,
    /// Watch kernel-attested agents' pidfds so exits are reported at once
    /// ([`super::exitwatch`]); off = exits are found at the threshold.
    pub exit_watch: bool,
}

impl ObserverConfig {
    /// Defaults of `docs/configuration.md` for `threshold_ns`.
    pub fn new(socket_path: Option<PathBuf>, threshold_ns: u64) -> ObserverConfig {
        ObserverConfig {
            socket_path,
            socket_mode: 0o600,
            uds_rcvbuf_bytes: 1_048_576,
            tracker: TrackerConfig::new(threshold_ns),
            max_beat_rate: 100,
            global_beat_rate: 5000,
            global_beat_burst: 10_000,
            allow_cross_namespace: false,
            emit_beats: true,
            exit_watch: true,
        }
    }

    fn validate(&self) -> Result<(), ObserverError> {
        let t = &self.tracker;
        if t.threshold_ns == 0 {
            return Err(ObserverError::Config(
                TrackerConfigError::Threshold(0).to_string(),
            ));
        }
        if !(1..=MAX_CAPACITY).contains(&t.capacity) {
            return Err(ObserverError::Config(
                TrackerConfigError::Capacity(t.capacity).to_string(),
            ));
        }
        if !(1..=MAX_SCAN_WINDOW).contains(&t.scan_window) {
            return Err(ObserverError::Config(
                TrackerConfigError::ScanWindow(t.scan_window).to_string(),
            ));
        }
        if self.socket_mode > 0o777 {
            return Err(ObserverError::Config(format!(
                "socket_mode {:#o} is not a permission mode (at most 0o777)",
                self.socket_mode
            )));
        }
        if self.uds_rcvbuf_bytes > i32::MAX as u32 {
            return Err(ObserverError::Config(format!(
                "uds_rcvbuf_bytes {} exceeds {}",
                self.uds_rcvbuf_bytes,
                i32::MAX
            )));
        }
        Ok(())
    }
}

/// Why an observer could not be built.
#[derive(Debug)]
pub enum ObserverError {
    /// A configuration value out of range (the binding raises `ValueError`).
    Config(String),
    /// Binding a listener or opening the clock failed (`OSError`).
    Io(io::Error),
}

impl fmt::Display for ObserverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ObserverError::Config(m) => f.write_str(m),
            ObserverError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ObserverError {}

impl From<io::Error> for ObserverError {
    fn from(e: io::Error) -> Self {
        ObserverError::Io(e)
    }
}

impl From<TrackerConfigError> for ObserverError {
    fn from(e: TrackerConfigError) -> Self {
        ObserverError::Config(e.to_string())
    }
}

/// Who sent a frame, as far as the listener can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    /// Kernel-attested sender pid (never 0); `None` = not verified.
    pub kernel_pid: Option<u32>,
    /// Origin before the identity step (docs/observer.md#ingress step 8 may lower it).
    pub origin: BeatOrigin,
    /// A Unix-socket peer: its `/proc` identity is read and a raw
    /// credential cannot "repair" a downgraded slot past the limiter.
    pub local: bool,
}

/// One datagram after the listener's own checks, before decoding.
#[derive(Clone, Copy, Debug)]
pub enum Received<'a> {
    /// 32 plaintext bytes and their sender.
    Frame {
        bytes: &'a [u8; FRAME_LEN],
        peer: Peer,
    },
    /// Not exactly one frame long: counted in `truncated_datagrams`, silent.
    Truncated,
    /// Control data truncated: a `CtrlTruncated` event.
    CtrlTruncated,
    /// Refused before decoding: an `Io` event.
    Refused {
        error: &'static str,
        errno: Option<i32>,
    },
    /// Consumed and accounted for by the listener itself (e.g. a failed AEAD
    /// open on a secure listener): nothing more to do.
    Dropped,
    /// Authenticated (secure listener) but not a valid frame: a `Decode`
    /// event and `decode_errors{kind}`.
    Decode(DecodeError),
}

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

/// What a listener may use while judging one datagram.
#[derive(Debug)]
pub struct RecvCtx<'c> {
    /// The observer's uid (same-uid rule, docs/observer.md#credentials).
    pub own_uid: u32,
    /// Observer time of the batch.
    pub now_ns: u64,
    /// Ingress counters (decrypt failures, replays, …).
    pub counters: &'c mut IngressCounters,
}

const NO_CREDS: &str = "kernel did not attach peer credentials";
const FOREIGN_UID: &str = "permission denied: sender uid differs from the observer uid";

fn uds_received(l: &UdsListener, i: usize, own_uid: u32) -> Received<'_> {
    classify_uds(l.datagram(i), own_uid)
}

/// The Unix listener's own checks (`docs/observer.md#credentials`), in order: control
/// truncation, length, credentials present, same uid; a kernel pid of 0 (a
/// sender the kernel cannot map into our pid namespace) is not attested.
fn classify_uds(d: Datagram<'_>, own_uid: u32) -> Received<'_> {
    if d.ctrunc {
        return Received::CtrlTruncated;
    }
    let Some(bytes) = d.frame_bytes() else {
        return Received::Truncated;
    };
    let Some(PeerCred { pid, uid, .. }) = d.creds else {
        return Received::Refused {
            error: NO_CREDS,
            errno: None,
        };
    };
    if pid != 0 && uid != own_uid {
        return Received::Refused {
            error: FOREIGN_UID,
            errno: Some(libc::EACCES),
        };
    }
    let peer = if pid == 0 {
        // The kernel could not map the sender into our pid namespace.
        Peer {
            kernel_pid: None,
            origin: BeatOrigin::SocketModeOnly,
            local: true,
        }
    } else {
        Peer {
            kernel_pid: Some(pid),
            origin: BeatOrigin::KernelAttested,
            local: true,
        }
    };
    Received::Frame { bytes, peer }
}

/// Ingress-side counters (the tracker keeps its own, see
/// [`super::counters::TrackerCounters`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IngressCounters {
    pub frame_auth_failures: u64,
    /// Indexed like [`DecodeError::ALL_LABELS`].
    pub decode_errors: [u64; 8],
    pub io_errors: u64,
    pub ctrl_truncated: u64,
    pub frame_namespace_mismatch: u64,
    pub frame_rejected_pid_above_max: u64,
    pub truncated_datagrams: u64,
    pub rate_limited_per_pid: u64,
    pub rate_limited_global: u64,
    /// Secure UDP listeners ([`super::udp`]; zero without one).
    pub frame_decrypt_failures: u64,
    pub secure_replay_refused: u64,
    pub sender_state_full: u64,
    pub secure_aead_attempts: u64,
    /// Datagrams taken off every listener (not exported; for benchmarks).
    pub datagrams: u64,
    /// `/proc` identity reads vouched for by the sender's pidfd (alive
    /// before and after the read). Not a Prometheus family.
    pub identity_pidfd_verified: u64,
    /// `/proc` identity reads refused because the sender's pidfd showed it
    /// exited (or none came with the datagram): treated as unreadable
    /// identity (docs/observer.md#ingress step 8). Not a Prometheus family.
    pub identity_sender_exited: u64,
}

fn bump(c: &mut u64) {
    *c = c.saturating_add(1);
}

fn decode_label_index(e: &DecodeError) -> usize {
    let label = e.metric_label();
    DecodeError::ALL_LABELS
        .iter()
        .position(|l| *l == label)
        .unwrap_or(0)
}

/// A counter as exported by [`Observer::counters`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CounterValue {
    Int(u64),
    /// Every label value, zero-filled, in a fixed order.
    Labels(Vec<(&'static str, u64)>),
}

/// Global token bucket in milli-tokens with lazy refill (docs/configuration.md#rate-limits).
#[derive(Clone, Copy, Debug)]
struct TokenBucket {
    /// Tokens per second; 0 = off.
    rate: u64,
    cap_milli: u64,
    milli: u64,
    last_ns: u64,
}

impl TokenBucket {
    fn new(rate: u32, burst: u32, now_ns: u64) -> TokenBucket {
        let (rate, burst) = if rate == 0 || burst == 0 {
            (0, 0)
        } else {
            (u64::from(rate), u64::from(burst))
        };
        TokenBucket {
            rate,
            cap_milli: burst * 1000,
            milli: burst * 1000,
            last_ns: now_ns,
        }
    }

    fn enabled(&self) -> bool {
        self.rate != 0
    }

    fn refill(&mut self, now_ns: u64) {
        let elapsed = now_ns.saturating_sub(self.last_ns);
        if elapsed == 0 {
            return;
        }
        if self.milli >= self.cap_milli {
            self.last_ns = now_ns;
            return;
        }
        // rate tokens/s = rate milli-tokens per ms = rate / 1e6 milli per ns.
        let add = (u128::from(elapsed) * u128::from(self.rate) / 1_000_000) as u64;
        if add == 0 {
            return; // keep accumulating elapsed time
        }
        let room = self.cap_milli - self.milli;
        if add >= room {
            self.milli = self.cap_milli;
            self.last_ns = now_ns;
        } else {
            self.milli += add;
            // Advance only by the time those whole milli-tokens took.
            let used = (u128::from(add) * 1_000_000 / u128::from(self.rate)) as u64;
            self.last_ns += used.min(elapsed);
        }
    }

    /// Take one token; false if the bucket is empty.
    fn take(&mut self, now_ns: u64) -> bool {
        if !self.enabled() {
            return true;
        }
        self.refill(now_ns);
        if self.milli >= 1000 {
            self.milli -= 1000;
            true
        } else {
            false
        }
    }

    /// Charge a rejection (never refused, only drains the bucket).
    fn charge(&mut self, now_ns: u64) {
        if self.enabled() {
            self.refill(now_ns);
            self.milli = self.milli.saturating_sub(1000);
        }
    }
}

/// Gate state shared by every listener.
struct Gates {
    tracker: Tracker,
    counters: IngressCounters,
    bucket: TokenBucket,
    /// Per-pid minimum gap between accepted beats (0 = off).
    min_interval_ns: u64,
    own_ns: Option<u64>,
    own_uid: u32,
    pid_max: u32,
    pid_max_read_ns: u64,
    allow_cross_namespace: bool,
    emit_beats: bool,
    threshold_ns: u64,
    /// Pidfd exit watch; `None` when off or epoll is unavailable.
    exits: Option<ExitWatch>,
    /// Scratch for [`Gates::reap_exits`] (kept to avoid allocating).
    exited: Vec<(u32, u64, super::procfs::Comm)>,
    blind_intervals: u64,
    blind_ns: u64,
}

impl Gates {
    fn refused(&mut self, error: &'static str, errno: Option<i32>, now: u64, out: &mut Vec<Event>) {
        bump(&mut self.counters.io_errors);
        self.bucket.charge(now);
        out.push(Event::Io {
            error: Cow::Borrowed(error),
            errno,
            observer_ns: now,
        });
    }

    fn handle(&mut self, r: Received<'_>, pidfd: SenderPidfd, now: u64, out: &mut Vec<Event>) {
        match r {
            Received::Frame { bytes, peer } => self.frame(bytes, peer, pidfd, now, out),
            Received::Truncated => bump(&mut self.counters.truncated_datagrams),
            Received::CtrlTruncated => {
                bump(&mut self.counters.ctrl_truncated);
                self.bucket.charge(now);
                out.push(Event::CtrlTruncated {
                    error: Cow::Borrowed("control data truncated (MSG_CTRUNC); datagram discarded"),
                    observer_ns: now,
                });
            }
            Received::Refused { error, errno } => self.refused(error, errno, now, out),
            Received::Dropped => {}
            Received::Decode(error) => {
                bump(&mut self.counters.decode_errors[decode_label_index(&error)]);
                self.bucket.charge(now);
                out.push(Event::Decode {
                    error,
                    observer_ns: now,
                });
            }
        }
    }

    /// `/proc` identity of a kernel-attested sender: reuse what the slot
    /// already pins while the beat is an unremarkable continuation of the
    /// same process; re-read on first contact, terminal frames, non-increasing
    /// nonces (a recycled pid restarts at 1), after silence ≥ threshold, and
    /// whenever something is unknown.
    ///
    /// A read is checked against the sender's pidfd when the listener has
    /// one (docs/observer.md#namespaces-and-generations: "trusted only if the sender is alive before and after"):
    /// a sender that exited before or during the read may have left its pid
    /// to another process, whose namespace and start time we would pin. Such
    /// a read — or a datagram whose pidfd the kernel could not supply — is
    /// treated as unreadable identity (both `None`, so a first contact is
    /// `SocketModeOnly` by step 8). The pidfd is only consulted here, so the
    /// cached continuation path costs nothing extra.
    fn identity(
        &mut self,
        pid: u32,
        slot: Option<&AgentView>,
        frame: &Frame,
        pidfd: SenderPidfd,
        now: u64,
    ) -> (Option<u64>, Option<u64>) {
        if let Some(s) = slot {
            let continuation = s.origin == BeatOrigin::KernelAttested
                && s.pid_ns_inode.is_some()
                && s.generation.is_some()
                && !s.stalled
                && !frame.is_terminal()
                && now.saturating_sub(s.last_ns) < self.threshold_ns
                && s.last_regular_nonce.is_some_and(|n| frame.nonce > n);
            if continuation {
                return (s.pid_ns_inode, s.generation);
            }
        }
        match pidfd {
            SenderPidfd::NotRequested => (procfs::pid_ns_inode(pid), procfs::start_time(pid)),
            SenderPidfd::Unavailable => {
                bump(&mut self.counters.identity_sender_exited);
                (None, None)
            }
            SenderPidfd::Fd(fd) => {
                // Exit is final, so the check after the reads is what
                // vouches for them; the one before only spares the reads
                // for a sender already gone. The pidfd and the credential
                // pid come from the same kernel reference (the datagram's
                // sender), so no separate pid check (fdinfo `Pid:`) is done.
                if procfs::pidfd_exited(fd) {
                    bump(&mut self.counters.identity_sender_exited);
                    return (None, None);
                }
                let id = (procfs::pid_ns_inode(pid), procfs::start_time(pid));
                if procfs::pidfd_exited(fd) {
                    bump(&mut self.counters.identity_sender_exited);
                    return (None, None);
                }
                bump(&mut self.counters.identity_pidfd_verified);
                id
            }
        }
    }

    fn frame(
        &mut self,
        bytes: &[u8; FRAME_LEN],
        peer: Peer,
        pidfd: SenderPidfd,
        now: u64,
        out: &mut Vec<Event>,
    ) {
        let frame = match Frame::decode(bytes) {
            Ok(f) => f,
            Err(error) => {
                bump(&mut self.counters.decode_errors[decode_label_index(&error)]);
                self.bucket.charge(now);
                out.push(Event::Decode {
                    error,
                    observer_ns: now,
                });
                return;
            }
        };
        let slot = self.tracker.get(frame.pid);
        // (1) The first terminal after regular beats must get through.
        let terminal_after_regular = frame.is_terminal()
            && slot
                .as_ref()
                .is_some_and(|s| s.last_regular_nonce.is_some() && s.last_terminal_ts.is_none());
        // (2) Kernel pid vs frame pid.
        if let Some(kp) = peer.kernel_pid {
            if kp != frame.pid {
                bump(&mut self.counters.frame_auth_failures);
                self.bucket.charge(now);
                out.push(Event::AuthFailure {
                    claimed_pid: frame.pid,
                    observer_ns: now,
                });
                return;
            }
        }
        let verified = peer.kernel_pid.is_some();
        // (3) pid_max, only for pids nobody vouched for.
        if !verified && frame.pid > self.pid_max {
            bump(&mut self.counters.frame_rejected_pid_above_max);
            return;
        }
        // (4) Origin repair: a stronger origin fixing a downgraded slot skips
        // the per-pid limiter, except a raw local credential.
        let origin_repair = !peer.local && slot.as_ref().is_some_and(|s| peer.origin > s.origin);
        // (5) Per-pid rate limit (unknown pids exempt).
        if self.min_interval_ns != 0 && !origin_repair && !terminal_after_regular {
            if let Some(s) = &slot {
                if now.saturating_sub(s.last_ns) < self.min_interval_ns {
                    bump(&mut self.counters.rate_limited_per_pid);
                    return;
                }
            }
        }
        // (6) Global bucket.
        let exempt = verified && terminal_after_regular;
        if !exempt && !self.bucket.take(now) {
            bump(&mut self.counters.rate_limited_global);
            return;
        }
        // (7) Identity.
        let (ns_inode, generation) = match (peer.local, peer.kernel_pid) {
            (true, Some(pid)) => self.identity(pid, slot.as_ref(), &frame, pidfd, now),
            _ => (None, None),
        };
        // (8) A first-contact local peer we cannot identify is not attested.
        let mut origin = peer.origin;
        if peer.local && slot.is_none() && (ns_inode.is_none() || generation.is_none()) {
            origin = origin.min(BeatOrigin::SocketModeOnly);
        }
        // (9) Namespace gate (fail-closed).
        if let Some(ino) = ns_inode {
            if !self.allow_cross_namespace && self.own_ns != Some(ino) {
                bump(&mut self.counters.frame_namespace_mismatch);
                out.push(Event::NamespaceConflict {
                    claimed_pid: frame.pid,
                    observed_ns_inode: Some(ino),
                    observer_ns_inode: self.own_ns,
                    observer_ns: now,
                });
                return;
            }
        }
        // (10) Tracker.
        match self
            .tracker
            .record(&frame, origin, ns_inode, generation, now)
        {
            RecordOutcome::Inserted | RecordOutcome::Refreshed => {
                // A new attested process (first contact, a recycled pid, an
                // upgraded origin): watch its pidfd once. Continuation beats
                // never get here with anything new to watch.
                if let (BeatOrigin::KernelAttested, Some(gen)) = (origin, generation) {
                    let known = slot.as_ref().is_some_and(|s| {
                        s.origin == BeatOrigin::KernelAttested && s.generation == Some(gen)
                    });
                    if !known {
                        self.watch_exit(frame.pid, gen, pidfd);
                    }
                }
                if self.emit_beats {
                    out.push(Event::Beat {
                        pid: frame.pid,
                        status: frame.status,
                        payload: frame.payload,
                        nonce: frame.nonce,
                        origin,
                        pid_ns_inode: ns_inode,
                        observer_ns: now,
                    });
                }
            }
            RecordOutcome::OriginConflict { slot_origin } => out.push(Event::OriginConflict {
                claimed_pid: frame.pid,
                observed_origin: origin,
                slot_origin,
                observer_ns: now,
            }),
            RecordOutcome::NamespaceConflict { slot_ns } => out.push(Event::NamespaceConflict {
                claimed_pid: frame.pid,
                observed_ns_inode: ns_inode,
                observer_ns_inode: slot_ns,
                observer_ns: now,
            }),
            RecordOutcome::OutOfOrder | RecordOutcome::CapacityExceeded => {}
        }
    }

    fn watch_exit(&mut self, pid: u32, generation: u64, pidfd: SenderPidfd) {
        let Some(exits) = self.exits.as_mut() else {
            return;
        };
        let sender = match pidfd {
            SenderPidfd::Fd(fd) => Some(fd),
            _ => None,
        };
        let tracker = &self.tracker;
        exits.watch(pid, generation, sender, |p, g| {
            tracker.get(p).is_some_and(|s| s.generation == Some(g))
        });
    }

    /// Stalls due at `now`, each with its verdict (`docs/verdicts.md`): the
    /// kernel is asked whether an attested process still lives (its pidfd
    /// when watched, else `/proc` start time and state); agents that ended
    /// are reported and retired.
    fn expire(&mut self, now: u64, out: &mut Vec<Event>) {
        if self.tracker.next_deadline_ns().is_none_or(|d| d > now) {
            return;
        }
        let exits = self.exits.as_ref();
        self.tracker.expire_with(now, usize::MAX, &mut |s| {
            let liveness = match (s.origin, s.generation) {
                (BeatOrigin::KernelAttested, Some(g)) => {
                    match exits.and_then(|w| w.has_exited(s.pid, g)) {
                        Some(true) => Liveness::Gone,
                        Some(false) => Liveness::Alive,
                        None => verdict::proc_liveness(s.pid, Some(g)),
                    }
                }
                _ => Liveness::Unknown,
            };
            let v = verdict::judge(s.origin, s.cause, liveness);
            let comm = match (exits, s.generation) {
                (Some(w), Some(g)) => w.comm(s.pid, g),
                _ => None,
            };
            out.push(Event::Stall(super::tracker::StallInfo {
                verdict: v,
                comm,
                ..*s
            }));
            if v.process_gone() {
                StallDecision::EmitAndRetire(v)
            } else {
                StallDecision::Emit(v)
            }
        });
    }

    /// Processes the exit watch saw end: report each (unless its stall was
    /// already reported) and retire its slot.
    fn reap_exits(&mut self, now: u64, out: &mut Vec<Event>) {
        let Some(exits) = self.exits.as_mut() else {
            return;
        };
        self.exited.clear();
        exits.take_exited(&mut self.exited);
        for i in 0..self.exited.len() {
            let (pid, generation, comm) = self.exited[i];
            if let ExitOutcome::Reported(mut info) = self.tracker.take_exit(pid, generation, now) {
                info.comm = Some(comm);
                out.push(Event::Stall(info));
            }
        }
    }

    /// The observer was blind from `from_ns` to `to_ns`: extend every armed
    /// deadline by that much and say so.
    fn blind(&mut self, from_ns: u64, to_ns: u64, out: &mut Vec<Event>) {
        let duration = to_ns.saturating_sub(from_ns);
        if duration == 0 {
            return;
        }
        self.tracker.extend_deadlines(duration);
        bump(&mut self.blind_intervals);
        self.blind_ns = self.blind_ns.saturating_add(duration);
        out.push(Event::Blind {
            started_ns: from_ns,
            duration_ns: duration,
            observer_ns: to_ns,
        });
    }

    fn refresh_pid_max(&mut self, now: u64) {
        if now.saturating_sub(self.pid_max_read_ns) >= PID_MAX_REFRESH_NS {
            self.pid_max = procfs::pid_max();
            self.pid_max_read_ns = now;
        }
    }
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
        let min_interval_ns = if cfg.max_beat_rate == 0 {
            0
        } else {
            NS_PER_SEC / u64::from(cfg.max_beat_rate)
        };
        Ok(Observer {
            listeners,
            cursor: 0,
            gates: Gates {
                tracker,
                counters: IngressCounters::default(),
                bucket: TokenBucket::new(cfg.global_beat_rate, cfg.global_beat_burst, now),
                min_interval_ns,
                own_ns: procfs::own_pid_ns_inode(),
                // SAFETY: getuid cannot fail.
                own_uid: unsafe { libc::getuid() },
                pid_max: procfs::pid_max(),
                pid_max_read_ns: now,
                allow_cross_namespace: cfg.allow_cross_namespace,
                emit_beats: cfg.emit_beats,
                threshold_ns: cfg.tracker.threshold_ns,
                exits,
                exited: Vec::with_capacity(256),
                blind_intervals: 0,
                blind_ns: 0,
            },
            clock,
            socket_path: cfg.socket_path,
            uds_rcvbuf_bytes,
            closed: false,
            blind_watch: false,
            last_look_ns: now,
        })
    }

    /// Add a listener (network listeners are bound by their own module).
    pub fn add_listener(&mut self, l: Listener) {
        self.listeners.push(l);
    }

    /// The bound address of the first UDP listener, if any.
    pub fn udp_local_addr(&self) -> Option<std::net::SocketAddr> {
        self.listeners.iter().find_map(|l| match l {
            Listener::Udp(u) => Some(u.local_addr()),
            Listener::Uds(_) => None,
        })
    }

    /// Effective `SO_RCVBUF` of the first UDP listener, if any.
    pub fn udp_rcvbuf_bytes(&self) -> Option<u64> {
        self.listeners.iter().find_map(|l| match l {
            Listener::Udp(u) => Some(u.rcvbuf_bytes()),
            Listener::Uds(_) => None,
        })
    }

    /// Replay-state entries held by the first secure UDP listener, if any.
    pub fn secure_senders(&self) -> Option<usize> {
        self.listeners.iter().find_map(|l| match l {
            Listener::Udp(u) => u.secure_senders(),
            Listener::Uds(_) => None,
        })
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
        self.listeners.iter().find_map(|l| match l {
            Listener::Uds(u) => Some(u.pidfd_mode()),
            Listener::Udp(_) => None,
        })
    }

    /// Pidfd bookkeeping of the Unix listener (received / closed /
    /// unavailable); `None` without one.
    pub fn uds_pidfd_counters(&self) -> Option<PidfdCounters> {
        self.listeners.iter().find_map(|l| match l {
            Listener::Uds(u) => Some(u.pidfd_counters()),
            Listener::Udp(_) => None,
        })
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

    pub fn agent(&self, pid: u32) -> Option<AgentView> {
        self.gates.tracker.get(pid)
    }

    pub fn agents(&self) -> impl Iterator<Item = AgentView> + '_ {
        self.gates.tracker.iter()
    }

    /// Pids removed from the tracker since the last call. Their secure
    /// replay state is kept on purpose (`secure::replay`, "Lifetime").
    pub fn take_removed(&mut self, out: &mut Vec<u32>) {
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
                    bump(&mut self.gates.counters.io_errors);
                    self.gates.bucket.charge(now);
                    out.push(Event::Io {
                        error: Cow::Owned(format!("receive failed: {e}")),
                        errno: e.raw_os_error(),
                        observer_ns: now,
                    });
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

#[cfg(test)]
mod tests {
    use super::*;

    fn dgram(data: &[u8], creds: Option<PeerCred>, ctrunc: bool) -> Datagram<'_> {
        Datagram {
            data,
            overlong: data.len() > FRAME_LEN,
            creds,
            ctrunc,
            fds_closed: 0,
            pidfd: SenderPidfd::NotRequested,
        }
    }

    #[test]
    fn uds_checks_in_order() {
        let f = [0u8; 32];
        let me = Some(PeerCred {
            pid: 42,
            uid: 1000,
            gid: 1000,
        });
        assert!(matches!(
            classify_uds(dgram(&f, None, true), 1000),
            Received::CtrlTruncated
        ));
        assert!(matches!(
            classify_uds(dgram(&f[..31], me, false), 1000),
            Received::Truncated
        ));
        assert!(matches!(
            classify_uds(dgram(&[0u8; 33], me, false), 1000),
            Received::Truncated
        ));
        assert!(matches!(
            classify_uds(dgram(&f, None, false), 1000),
            Received::Refused { errno: None, error } if error.contains("credentials")
        ));
        assert!(matches!(
            classify_uds(dgram(&f, me, false), 0),
            Received::Refused {
                errno: Some(libc::EACCES),
                ..
            }
        ));
        assert!(matches!(
            classify_uds(dgram(&f, me, false), 1000),
            Received::Frame {
                peer: Peer {
                    kernel_pid: Some(42),
                    origin: BeatOrigin::KernelAttested,
                    local: true
                },
                ..
            }
        ));
        let unmapped = Some(PeerCred {
            pid: 0,
            uid: 5,
            gid: 5,
        });
        assert!(matches!(
            classify_uds(dgram(&f, unmapped, false), 1000),
            Received::Frame {
                peer: Peer {
                    kernel_pid: None,
                    origin: BeatOrigin::SocketModeOnly,
                    ..
                },
                ..
            }
        ));
    }

    #[test]
    fn bucket_refills_lazily_in_milli_tokens() {
        let mut b = TokenBucket::new(1000, 2, 0); // 1 token per ms, capacity 2
        assert!(b.take(0));
        assert!(b.take(0));
        assert!(!b.take(0));
        assert!(!b.take(500_000)); // half a token
        assert!(b.take(1_000_000));
        assert!(!b.take(1_000_000));
        b.charge(50_000_000); // refilled to 2, charged 1
        assert!(b.take(50_000_000));
        assert!(!b.take(50_000_000));
        let mut off = TokenBucket::new(0, 10, 0);
        for _ in 0..100 {
            assert!(off.take(0));
        }
    }

    #[test]
    fn bucket_does_not_lose_fractions_to_frequent_refills() {
        let mut b = TokenBucket::new(3, 1, 0); // one token per 333.3 ms
        assert!(b.take(0));
        let mut t = 0;
        let mut got = 0;
        while t < 3_000_000_000 {
            t += 1_000_000; // refill attempts every ms
            if b.take(t) {
                got += 1;
            }
        }
        assert!((8..=9).contains(&got), "{got}");
    }
}
