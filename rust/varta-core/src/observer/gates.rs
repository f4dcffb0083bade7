//! The ingress gates (`docs/observer.md#ingress`, `docs/observer.md#peer-authentication`):
//! what every listener hands over ([`Received`] from a [`Peer`], judged with
//! a [`RecvCtx`]), the Unix listener's own credential checks, the global
//! [`TokenBucket`], and [`Gates`]: decode, pid and namespace checks, rate
//! limits, `/proc` identity, the tracker, stall expiry with verdicts, the
//! exit watch and blind intervals. Counted in [`IngressCounters`].

use super::config::ObserverConfig;
use super::event::Event;
use super::exitwatch::ExitWatch;
use super::identity::ProcIdentity;
use super::listener::{Datagram, PeerCred, SenderPidfd, UdsListener};
use super::procfs;
use super::tracker::{
    AgentView, BeatOrigin, ExitOutcome, NetPeer, RecordOutcome, StallDecision, Tracker,
};
use super::verdict::{self, Liveness};
use crate::frame::{DecodeError, Frame, FRAME_LEN};
use std::borrow::Cow;
use std::sync::Arc;

/// `pid_max` is re-read at most this often (observer ns).
pub const PID_MAX_REFRESH_NS: u64 = 60_000_000_000;

const NS_PER_SEC: u64 = 1_000_000_000;

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
    /// A network sender: its agents are (sender, pid), apart from equal
    /// pids elsewhere (docs/observer.md#agent-identity). `None` = the Unix socket.
    pub net: Option<NetPeer>,
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

pub(super) fn uds_received(l: &UdsListener, i: usize, own_uid: u32) -> Received<'_> {
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
            net: None,
        }
    } else {
        Peer {
            kernel_pid: Some(pid),
            origin: BeatOrigin::KernelAttested,
            local: true,
            net: None,
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

pub(super) fn bump(c: &mut u64) {
    *c = c.saturating_add(1);
}

fn decode_label_index(e: &DecodeError) -> usize {
    let label = e.metric_label();
    DecodeError::ALL_LABELS
        .iter()
        .position(|l| *l == label)
        .unwrap_or(0)
}

/// Global token bucket in milli-tokens with lazy refill (docs/configuration.md#rate-limits).
#[derive(Clone, Copy, Debug)]
pub(super) struct TokenBucket {
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
    pub(super) fn charge(&mut self, now_ns: u64) {
        if self.enabled() {
            self.refill(now_ns);
            self.milli = self.milli.saturating_sub(1000);
        }
    }
}

/// Gate state shared by every listener.
pub(super) struct Gates {
    pub(super) tracker: Tracker,
    pub(super) counters: IngressCounters,
    pub(super) bucket: TokenBucket,
    /// Per-pid minimum gap between accepted beats (0 = off).
    pub(super) min_interval_ns: u64,
    pub(super) own_ns: Option<u64>,
    pub(super) own_uid: u32,
    pub(super) pid_max: u32,
    pub(super) pid_max_read_ns: u64,
    pub(super) allow_cross_namespace: bool,
    pub(super) emit_beats: bool,
    pub(super) threshold_ns: u64,
    /// Pidfd exit watch; `None` when off or epoll is unavailable.
    pub(super) exits: Option<ExitWatch>,
    /// Scratch for [`Gates::reap_exits`] (kept to avoid allocating).
    pub(super) exited: Vec<(u32, u64, super::procfs::Comm)>,
    pub(super) blind_intervals: u64,
    pub(super) blind_ns: u64,
}

impl Gates {
    /// The gates of `cfg` around `tracker`, at observer time `now`.
    pub(super) fn new(
        cfg: &ObserverConfig,
        tracker: Tracker,
        exits: Option<ExitWatch>,
        now: u64,
    ) -> Gates {
        let min_interval_ns = if cfg.max_beat_rate == 0 {
            0
        } else {
            NS_PER_SEC / u64::from(cfg.max_beat_rate)
        };
        Gates {
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
        }
    }

    /// A datagram refused, or a receive that failed: an `Io` event, counted
    /// in `io_errors` and charged to the global bucket.
    pub(super) fn refused(
        &mut self,
        error: Cow<'static, str>,
        errno: Option<i32>,
        now: u64,
        out: &mut Vec<Event>,
    ) {
        bump(&mut self.counters.io_errors);
        self.bucket.charge(now);
        out.push(Event::Io {
            error,
            errno,
            observer_ns: now,
        });
    }

    pub(super) fn handle(
        &mut self,
        r: Received<'_>,
        pidfd: SenderPidfd,
        now: u64,
        out: &mut Vec<Event>,
    ) {
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
            Received::Refused { error, errno } => {
                self.refused(Cow::Borrowed(error), errno, now, out)
            }
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
        let slot = self.tracker.get_at(peer.net.as_ref(), frame.pid);
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
        // (10) Tracker: a network sender's agent is (sender, pid).
        let outcome = match peer.net {
            Some(net) => self.tracker.record_net(&frame, origin, net, now),
            None => self
                .tracker
                .record(&frame, origin, ns_inode, generation, now),
        };
        match outcome {
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
                        self.read_identity(frame.pid, gen, pidfd);
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

    /// Read what the OS says about a new attested process — once per
    /// process, never per beat (docs/observer.md#agent-identity) — and pin
    /// it on its slot. Like the namespace and start time, a read is kept
    /// only if the sender's pidfd (when there is one) shows it still alive
    /// afterwards, so a reused pid's identity is never pinned.
    fn read_identity(&mut self, pid: u32, generation: u64, pidfd: SenderPidfd) {
        let id = ProcIdentity::read(pid);
        let vouched = match pidfd {
            SenderPidfd::Fd(fd) => !procfs::pidfd_exited(fd),
            _ => procfs::start_time(pid) == Some(generation),
        };
        if vouched {
            self.tracker.set_identity(pid, generation, Arc::new(id));
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
    pub(super) fn expire(&mut self, now: u64, out: &mut Vec<Event>) {
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
            let comm = s.comm.or_else(|| match (exits, s.generation) {
                (Some(w), Some(g)) => w.comm(s.pid, g),
                _ => None,
            });
            out.push(Event::Stall(Box::new(super::tracker::StallInfo {
                verdict: v,
                comm,
                ..s.clone()
            })));
            if v.process_gone() {
                StallDecision::EmitAndRetire(v)
            } else {
                StallDecision::Emit(v)
            }
        });
    }

    /// Processes the exit watch saw end: report each (unless its stall was
    /// already reported) and retire its slot.
    pub(super) fn reap_exits(&mut self, now: u64, out: &mut Vec<Event>) {
        let Some(exits) = self.exits.as_mut() else {
            return;
        };
        self.exited.clear();
        exits.take_exited(&mut self.exited);
        for i in 0..self.exited.len() {
            let (pid, generation, comm) = self.exited[i];
            if let ExitOutcome::Reported(mut info) = self.tracker.take_exit(pid, generation, now) {
                info.comm = info.comm.or(Some(comm));
                out.push(Event::Stall(Box::new(info)));
            }
        }
    }

    /// The observer was blind from `from_ns` to `to_ns`: extend every armed
    /// deadline by that much and say so.
    pub(super) fn blind(&mut self, from_ns: u64, to_ns: u64, out: &mut Vec<Event>) {
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

    pub(super) fn refresh_pid_max(&mut self, now: u64) {
        if now.saturating_sub(self.pid_max_read_ns) >= PID_MAX_REFRESH_NS {
            self.pid_max = procfs::pid_max();
            self.pid_max_read_ns = now;
        }
    }
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
                    local: true,
                    net: None,
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
