//! Session rules of the agent (`docs/agent.md#beating`, `docs/protocol.md#sender-rules`) against a
//! scripted fake transport and an injectable clock/pid/fork epoch.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use varta_core::agent::{
    classify_send_error, Agent, BeatError, BeatOutcome, DropReason, FailKind, Host, TIMESTAMP_MAX,
};
use varta_core::transport::Transport;
use varta_core::{Frame, Status, FRAME_LEN, NONCE_TERMINAL};

// --- fakes -------------------------------------------------------------------

#[derive(Default)]
struct Wire {
    /// Every frame handed to `send`, whatever the result.
    attempts: Vec<[u8; FRAME_LEN]>,
    /// Results to return from `send`, in order; empty = `Ok(expected_len)`.
    script: VecDeque<io::Result<usize>>,
    /// Results for `prepare_reconnect`; empty = success.
    reconnect_script: VecDeque<io::Result<()>>,
    reconnects: u32,
    commits: u32,
    /// Socket generation: bumped by each committed reconnect.
    generation: u32,
    /// (generation, frame) of every send that the transport accepted.
    accepted: Vec<(u32, [u8; FRAME_LEN])>,
}

#[derive(Clone)]
struct Fake {
    wire: Arc<Mutex<Wire>>,
    expected: usize,
}

impl Fake {
    fn new() -> Self {
        Fake {
            wire: Arc::default(),
            expected: FRAME_LEN,
        }
    }
    fn push(&self, r: io::Result<usize>) {
        self.wire.lock().unwrap().script.push_back(r);
    }
    fn push_errno(&self, errno: i32, times: usize) {
        for _ in 0..times {
            self.push(Err(io::Error::from_raw_os_error(errno)));
        }
    }
    fn fail_reconnect(&self, errno: i32) {
        self.wire
            .lock()
            .unwrap()
            .reconnect_script
            .push_back(Err(io::Error::from_raw_os_error(errno)));
    }
    fn w(&self) -> std::sync::MutexGuard<'_, Wire> {
        self.wire.lock().unwrap()
    }
    fn frames(&self) -> Vec<Frame> {
        self.w()
            .accepted
            .iter()
            .map(|(_, b)| Frame::decode(b).expect("valid frame"))
            .collect()
    }
    fn nonces(&self) -> Vec<u64> {
        self.frames().iter().map(|f| f.nonce).collect()
    }
}

impl Transport for Fake {
    type Pending = u32;

    fn send(&mut self, frame: &[u8; FRAME_LEN]) -> io::Result<usize> {
        let mut w = self.wire.lock().unwrap();
        w.attempts.push(*frame);
        let r = w.script.pop_front().unwrap_or(Ok(self.expected));
        if matches!(r, Ok(n) if n == self.expected) {
            let g = w.generation;
            w.accepted.push((g, *frame));
        }
        r
    }

    fn expected_send_len(&self) -> usize {
        self.expected
    }

    fn prepare_reconnect(&self) -> io::Result<u32> {
        let mut w = self.wire.lock().unwrap();
        w.reconnect_script.pop_front().unwrap_or(Ok(()))?;
        Ok(w.generation + 1)
    }

    fn commit_reconnect(&mut self, generation: u32) {
        let mut w = self.wire.lock().unwrap();
        w.generation = generation;
        w.reconnects += 1;
    }

    fn commit_sent(&mut self) {
        self.wire.lock().unwrap().commits += 1;
    }
}

#[derive(Clone)]
struct FakeHost {
    now: Arc<AtomicU64>,
    pid: Arc<AtomicU32>,
    epoch: Arc<AtomicU64>,
    /// 0 = no incarnation tokens on this "platform".
    incarnation: Arc<AtomicU64>,
    pid_reads: Arc<AtomicU64>,
}

impl FakeHost {
    fn new() -> Self {
        FakeHost {
            now: Arc::new(AtomicU64::new(1_000)),
            pid: Arc::new(AtomicU32::new(4242)),
            epoch: Arc::new(AtomicU64::new(0)),
            incarnation: Arc::new(AtomicU64::new(0)),
            pid_reads: Arc::new(AtomicU64::new(0)),
        }
    }
    fn with_incarnation(token: u64) -> Self {
        let h = FakeHost::new();
        h.incarnation.store(token, Ordering::SeqCst);
        h
    }
    fn pid_reads(&self) -> u64 {
        self.pid_reads.load(Ordering::SeqCst)
    }
    fn set_now(&self, ns: u64) {
        self.now.store(ns, Ordering::SeqCst);
    }
    fn set_pid(&self, pid: u32) {
        self.pid.store(pid, Ordering::SeqCst);
    }
    fn bump_epoch(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }
}

impl Host for FakeHost {
    fn now_ns(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }
    fn pid(&self) -> u32 {
        self.pid_reads.fetch_add(1, Ordering::SeqCst);
        self.pid.load(Ordering::SeqCst)
    }
    fn fork_epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }
    fn incarnation(&self) -> Option<u64> {
        match self.incarnation.load(Ordering::SeqCst) {
            0 => None,
            t => Some(t),
        }
    }
}

fn agent() -> (Agent<Fake, FakeHost>, Fake, FakeHost) {
    let fake = Fake::new();
    let host = FakeHost::new();
    let a = Agent::with_host(fake.clone(), host.clone()).unwrap();
    (a, fake, host)
}

const KQF: BeatOutcome = BeatOutcome::Dropped(DropReason::KernelQueueFull);
const NOOBS: BeatOutcome = BeatOutcome::Dropped(DropReason::NoObserver);

// --- nonce and frame contents --------------------------------------------------

#[test]
fn first_nonce_is_one_and_fields_are_encoded() {
    let (mut a, fake, host) = agent();
    host.set_now(1_500);
    assert_eq!(a.beat(Status::Ok, 7), BeatOutcome::Sent);
    host.set_now(2_000);
    assert_eq!(a.beat(Status::Degraded, 0xFFFF_FFFF), BeatOutcome::Sent);
    assert_eq!(a.beat(Status::Critical, 0), BeatOutcome::Sent);
    let f = fake.frames();
    assert_eq!(fake.nonces(), vec![1, 2, 3]);
    assert_eq!(
        f[0],
        Frame {
            status: Status::Ok,
            pid: 4242,
            timestamp: 500,
            nonce: 1,
            payload: 7
        }
    );
    assert_eq!(
        (f[1].status, f[1].timestamp, f[1].payload),
        (Status::Degraded, 1_000, u32::MAX)
    );
    assert_eq!(f[2].status, Status::Critical);
    assert_eq!(a.nonce(), 3);
    assert_eq!(fake.w().commits, 3);
}

#[test]
fn pid_is_read_on_every_beat() {
    let (mut a, fake, host) = agent();
    a.beat(Status::Ok, 0);
    // Same fork epoch, different pid → that is a fork (pid change) too, so
    // check the pid lands in the frame after the recovery.
    host.set_pid(5151);
    a.beat(Status::Ok, 0);
    let pids: Vec<u32> = fake.frames().iter().map(|f| f.pid).collect();
    assert_eq!(pids, vec![4242, 5151]);
}

#[test]
fn dropped_and_failed_beats_commit_nothing() {
    let (mut a, fake, _) = agent();
    assert!(a.beat(Status::Ok, 0).is_sent()); // nonce 1
    fake.push_errno(libc::EAGAIN, 1);
    assert_eq!(a.beat(Status::Ok, 0), KQF);
    fake.push_errno(libc::EPERM, 1);
    assert_eq!(
        a.beat(Status::Ok, 0),
        BeatOutcome::Failed(BeatError::os(libc::EPERM))
    );
    fake.push(Ok(31));
    assert_eq!(
        a.beat(Status::Ok, 0),
        BeatOutcome::Failed(BeatError::WRITE_ZERO)
    );
    assert_eq!(a.nonce(), 1);
    assert!(a.beat(Status::Ok, 0).is_sent());
    // Every failed attempt carried candidate nonce 2; the wire has no gap.
    let attempted: Vec<u64> = fake
        .w()
        .attempts
        .iter()
        .map(|b| u64::from_le_bytes(b[16..24].try_into().unwrap()))
        .collect();
    assert_eq!(attempted, vec![1, 2, 2, 2, 2]);
    assert_eq!(fake.nonces(), vec![1, 2]);
    assert_eq!(fake.w().commits, 2, "commit_sent only after Sent");
}

#[test]
fn nonce_wraps_to_zero_before_the_terminal_sentinel() {
    let (mut a, fake, _) = agent();
    a.set_nonce_for_test(NONCE_TERMINAL - 2);
    assert!(a.beat(Status::Ok, 0).is_sent());
    assert_eq!(a.nonce(), NONCE_TERMINAL - 1);
    // A dropped wrap attempt does not commit the wrap.
    fake.push_errno(libc::ENOBUFS, 1);
    assert_eq!(a.beat(Status::Ok, 0), KQF);
    assert_eq!(a.nonce(), NONCE_TERMINAL - 1);
    assert!(a.beat(Status::Ok, 0).is_sent());
    assert_eq!(a.nonce(), 0);
    assert!(a.beat(Status::Ok, 0).is_sent());
    assert_eq!(fake.nonces(), vec![NONCE_TERMINAL - 1, 0, 1]);
    assert!(fake
        .w()
        .attempts
        .iter()
        .all(|b| u64::from_le_bytes(b[16..24].try_into().unwrap()) != NONCE_TERMINAL));
}

// --- timestamps ----------------------------------------------------------------

#[test]
fn timestamp_is_clamped_monotonic_and_regressions_are_counted() {
    let (mut a, fake, host) = agent(); // start = 1_000
    host.set_now(5_000);
    a.beat(Status::Ok, 0); // ts 4_000
    host.set_now(3_000); // clock went back
    a.beat(Status::Ok, 0); // raw 2_000 < 4_000 → repeated 4_000
    assert_eq!(a.clock_regressions(), 1);
    host.set_now(500); // below the start instant: raw saturates to 0
    a.beat(Status::Ok, 0);
    assert_eq!(a.clock_regressions(), 2);
    host.set_now(9_000);
    a.beat(Status::Ok, 0);
    let ts: Vec<u64> = fake.frames().iter().map(|f| f.timestamp).collect();
    assert_eq!(ts, vec![4_000, 4_000, 4_000, 8_000]);
    assert_eq!(a.clock_regressions(), 2);
}

#[test]
fn dropped_beat_does_not_commit_its_timestamp() {
    let (mut a, fake, host) = agent();
    host.set_now(10_000);
    fake.push_errno(libc::EAGAIN, 1);
    assert_eq!(a.beat(Status::Ok, 0), KQF);
    assert_eq!(a.last_timestamp(), 0);
    host.set_now(5_000); // earlier than the dropped candidate: not a regression
    assert!(a.beat(Status::Ok, 0).is_sent());
    assert_eq!(a.clock_regressions(), 0);
    assert_eq!(fake.frames()[0].timestamp, 4_000);
}

#[test]
fn timestamp_saturates_below_the_reserved_value() {
    let fake = Fake::new();
    let host = FakeHost::new();
    host.set_now(0);
    let mut a = Agent::with_host(fake.clone(), host.clone()).unwrap();
    host.set_now(u64::MAX); // ~584 years after connect

    assert!(a.beat(Status::Ok, 0).is_sent());
    assert_eq!(fake.frames()[0].timestamp, TIMESTAMP_MAX);
    assert!(a.beat(Status::Ok, 0).is_sent());
    assert_eq!(fake.frames()[1].timestamp, TIMESTAMP_MAX);
    assert_eq!(a.clock_regressions(), 0);
}

// --- invalid input, closed -----------------------------------------------------

#[test]
fn stall_and_reserved_pids_fail_with_invalid_input_and_send_nothing() {
    let (mut a, fake, host) = agent();
    a.set_reconnect_after(5);
    fake.push_errno(libc::EAGAIN, 1);
    assert_eq!(a.beat(Status::Ok, 0), KQF);
    assert_eq!(a.consecutive_dropped(), 1);
    let invalid = BeatOutcome::Failed(BeatError::INVALID_INPUT);
    assert_eq!(a.beat(Status::Stall, 0), invalid);
    assert_eq!(
        a.consecutive_dropped(),
        0,
        "InvalidInput resets the drop run"
    );
    for pid in [0, 1] {
        host.set_pid(pid);
        assert_eq!(a.beat(Status::Ok, 0), invalid);
        assert_eq!(a.send_terminal(), invalid);
    }
    assert_eq!(fake.w().attempts.len(), 1);
    assert_eq!(
        fake.w().reconnects,
        0,
        "no fork recovery for a reserved pid"
    );
    assert_eq!(a.fork_recoveries(), 0);
    if let BeatOutcome::Failed(e) = invalid {
        assert_eq!((e.errno(), e.kind()), (0, FailKind::InvalidInput));
    }
}

#[test]
fn closed_agent_fails_with_closed_and_reconnect_is_ebadf() {
    let (mut a, fake, _) = agent();
    a.close();
    a.close(); // idempotent
    assert!(a.is_closed());
    assert_eq!(
        a.beat(Status::Ok, 0),
        BeatOutcome::Failed(BeatError::CLOSED)
    );
    assert_eq!(a.send_terminal(), BeatOutcome::Failed(BeatError::CLOSED));
    assert_eq!(a.reconnect().unwrap_err().raw_os_error(), Some(libc::EBADF));
    assert!(fake.w().attempts.is_empty());
}

// --- fork ----------------------------------------------------------------------

#[test]
fn pid_change_resets_the_session_after_reconnecting() {
    let (mut a, fake, host) = agent();
    host.set_now(2_000);
    a.beat(Status::Ok, 0);
    a.beat(Status::Ok, 0);
    fake.push_errno(libc::EAGAIN, 1);
    a.set_reconnect_after(9);
    a.beat(Status::Ok, 0);
    assert_eq!(a.consecutive_dropped(), 1);
    host.set_pid(7777);
    host.set_now(50_000);
    let regressions = a.clock_regressions();
    assert!(a.beat(Status::Ok, 0).is_sent());
    assert_eq!(a.fork_recoveries(), 1);
    assert_eq!(a.consecutive_dropped(), 0);
    assert_eq!(a.clock_regressions(), regressions);
    let w = fake.w();
    assert_eq!(w.reconnects, 1);
    // The child's frame went out on the new socket with nonce 1 and a
    // timestamp restarted from the reset (0 ns after it).
    let (gen, last) = *w.accepted.last().unwrap();
    drop(w);
    let f = Frame::decode(&last).unwrap();
    assert_eq!((gen, f.pid, f.nonce, f.timestamp), (1, 7777, 1, 0));
    host.set_now(50_100);
    a.beat(Status::Ok, 0);
    assert_eq!(fake.frames().last().unwrap().nonce, 2);
    assert_eq!(fake.frames().last().unwrap().timestamp, 100);
    assert_eq!(a.fork_recoveries(), 1);
}

#[test]
fn epoch_change_with_the_same_pid_is_a_fork_too() {
    // A descendant handed its ancestor's recycled pid.
    let (mut a, fake, host) = agent();
    a.beat(Status::Ok, 0);
    a.beat(Status::Ok, 0);
    host.bump_epoch();
    assert!(a.beat(Status::Ok, 0).is_sent());
    assert_eq!(a.fork_recoveries(), 1);
    assert_eq!(fake.nonces(), vec![1, 2, 1]);
    assert_eq!(fake.w().reconnects, 1);
    a.beat(Status::Ok, 0);
    assert_eq!(a.fork_recoveries(), 1, "epoch is refreshed after recovery");
}

#[test]
fn failed_fork_reconnect_sends_nothing_and_touches_nothing() {
    let (mut a, fake, host) = agent();
    a.beat(Status::Ok, 0);
    host.set_pid(9000);
    fake.fail_reconnect(libc::ENOENT);
    assert_eq!(
        a.beat(Status::Ok, 0),
        BeatOutcome::Failed(BeatError::os(libc::ENOENT))
    );
    assert_eq!(a.fork_recoveries(), 0);
    assert_eq!(a.nonce(), 1);
    assert_eq!(fake.w().attempts.len(), 1);
    // The next beat retries the recovery.
    assert!(a.beat(Status::Ok, 0).is_sent());
    assert_eq!(a.fork_recoveries(), 1);
    assert_eq!(fake.nonces(), vec![1, 1]);
}

#[test]
fn fork_counter_survives_reconnects() {
    let (mut a, _fake, host) = agent();
    host.set_pid(11);
    a.beat(Status::Ok, 0);
    a.reconnect().unwrap();
    host.bump_epoch();
    a.beat(Status::Ok, 0);
    assert_eq!(a.fork_recoveries(), 2);
}

#[test]
fn without_incarnation_tokens_the_pid_is_read_on_every_beat() {
    let (mut a, _fake, host) = agent();
    let before = host.pid_reads();
    for _ in 0..5 {
        a.beat(Status::Ok, 0);
    }
    assert!(host.pid_reads() - before >= 5);
}

#[test]
fn an_unchanged_incarnation_token_stands_in_for_getpid() {
    let fake = Fake::new();
    let host = FakeHost::with_incarnation(7);
    let mut a = Agent::with_host(fake.clone(), host.clone()).unwrap();
    let before = host.pid_reads();
    for _ in 0..5 {
        assert!(a.beat(Status::Ok, 0).is_sent());
    }
    assert_eq!(host.pid_reads(), before, "no getpid while the token holds");
    assert!(fake.frames().iter().all(|f| f.pid == 4242));
}

#[test]
fn a_new_incarnation_token_is_a_fork_even_with_same_pid_and_epoch() {
    // A child forked without running pthread_atfork handlers (raw clone,
    // glibc _Fork) that was handed its ancestor's recycled pid.
    let fake = Fake::new();
    let host = FakeHost::with_incarnation(7);
    let mut a = Agent::with_host(fake.clone(), host.clone()).unwrap();
    a.beat(Status::Ok, 0);
    a.beat(Status::Ok, 0);
    host.incarnation.store(8, Ordering::SeqCst);
    assert!(a.beat(Status::Ok, 0).is_sent());
    assert_eq!(a.fork_recoveries(), 1);
    assert_eq!(fake.nonces(), vec![1, 2, 1]);
    assert_eq!(fake.w().reconnects, 1);
    // The child's pid is read after the token changed.
    host.incarnation.store(9, Ordering::SeqCst);
    host.set_pid(999);
    a.beat(Status::Ok, 0);
    assert_eq!(fake.frames().last().unwrap().pid, 999);
    assert_eq!(a.fork_recoveries(), 2);
}

// --- reconnect ------------------------------------------------------------------

#[test]
fn reconnect_keeps_nonce_and_clock_and_is_transactional() {
    let (mut a, fake, host) = agent();
    host.set_now(3_000);
    a.beat(Status::Ok, 0);
    a.beat(Status::Ok, 0);
    a.reconnect().unwrap();
    host.set_now(4_000);
    a.beat(Status::Ok, 0);
    let f = fake.frames();
    assert_eq!((f[2].nonce, f[2].timestamp), (3, 3_000));
    assert_eq!(fake.w().accepted[2].0, 1, "sent on the new socket");
    // A failing reconnect raises and leaves the old socket in place.
    fake.fail_reconnect(libc::ECONNREFUSED);
    assert_eq!(
        a.reconnect().unwrap_err().raw_os_error(),
        Some(libc::ECONNREFUSED)
    );
    a.beat(Status::Ok, 0);
    let w = fake.w();
    assert_eq!(w.accepted.last().unwrap().0, 1);
    assert_eq!(w.reconnects, 1);
}

#[test]
fn manual_reconnect_refreshes_the_fork_snapshot() {
    let (mut a, fake, host) = agent();
    a.beat(Status::Ok, 0);
    host.set_pid(31337);
    host.bump_epoch();
    a.reconnect().unwrap();
    a.beat(Status::Ok, 0);
    assert_eq!(a.fork_recoveries(), 0);
    assert_eq!(fake.nonces(), vec![1, 2]);
}

// --- auto-reconnect (docs/agent.md#auto-reconnect, Rust contract) --------------------------------------

#[test]
fn auto_reconnect_after_n_drops_resends_the_same_frame() {
    let (mut a, fake, _) = agent();
    a.set_reconnect_after(3);
    a.beat(Status::Ok, 0); // nonce 1
    fake.push_errno(libc::ECONNREFUSED, 3);
    assert_eq!(a.beat(Status::Ok, 0), NOOBS);
    assert_eq!(a.beat(Status::Ok, 0), NOOBS);
    assert_eq!(fake.w().reconnects, 0);
    // Third drop: reconnect, resend the same plaintext, return the retry.
    assert_eq!(a.beat(Status::Degraded, 5), BeatOutcome::Sent);
    let w = fake.w();
    assert_eq!(w.reconnects, 1);
    let n = w.attempts.len();
    assert_eq!(w.attempts[n - 1], w.attempts[n - 2], "same 32 bytes resent");
    assert_eq!(w.accepted.last().unwrap().0, 1);
    drop(w);
    assert_eq!(a.nonce(), 2);
    assert_eq!(a.consecutive_dropped(), 0);
}

#[test]
fn failed_auto_reconnect_keeps_the_count_so_the_next_drop_retries() {
    let (mut a, fake, _) = agent();
    a.set_reconnect_after(2);
    fake.push_errno(libc::ECONNREFUSED, 4);
    assert_eq!(a.beat(Status::Ok, 0), NOOBS);
    fake.fail_reconnect(libc::ENOENT);
    assert_eq!(a.beat(Status::Ok, 0), NOOBS, "original drop returned");
    assert_eq!(a.consecutive_dropped(), 2, "count stays at n");
    assert_eq!(fake.w().reconnects, 0);
    // Next drop reconnects immediately; the retry drops too → counts as one.
    assert_eq!(a.beat(Status::Ok, 0), NOOBS);
    assert_eq!(fake.w().reconnects, 1);
    assert_eq!(a.consecutive_dropped(), 1);
    assert_eq!(fake.w().attempts.len(), 4);
    // No second reconnect in one call; a later Sent resets the count.
    assert!(a.beat(Status::Ok, 0).is_sent());
    assert_eq!(a.consecutive_dropped(), 0);
    assert_eq!(fake.nonces(), vec![1]);
}

#[test]
fn sent_and_failed_reset_the_drop_count_and_zero_disables() {
    let (mut a, fake, _) = agent();
    a.set_reconnect_after(2);
    fake.push_errno(libc::EAGAIN, 1);
    a.beat(Status::Ok, 0);
    a.beat(Status::Ok, 0); // sent
    fake.push_errno(libc::EAGAIN, 1);
    a.beat(Status::Ok, 0);
    fake.push_errno(libc::EACCES, 1);
    assert!(a.beat(Status::Ok, 0).is_failed());
    assert_eq!(a.consecutive_dropped(), 0);
    fake.push_errno(libc::EAGAIN, 1);
    a.beat(Status::Ok, 0);
    a.set_reconnect_after(2); // setting resets the count
    assert_eq!(a.consecutive_dropped(), 0);
    fake.push_errno(libc::EAGAIN, 1);
    a.beat(Status::Ok, 0);
    assert_eq!(fake.w().reconnects, 0);

    a.set_reconnect_after(0);
    fake.push_errno(libc::EAGAIN, 10);
    for _ in 0..10 {
        assert_eq!(a.beat(Status::Ok, 0), KQF);
    }
    assert_eq!(fake.w().reconnects, 0);
    assert_eq!(a.consecutive_dropped(), 10);
}

// --- expected length, terminal ---------------------------------------------------

#[test]
fn sent_requires_the_transports_expected_length() {
    let fake = Fake {
        expected: 60,
        ..Fake::new()
    };
    let mut a = Agent::with_host(fake.clone(), FakeHost::new()).unwrap();
    assert!(a.beat(Status::Ok, 0).is_sent());
    fake.push(Ok(32));
    assert_eq!(
        a.beat(Status::Ok, 0),
        BeatOutcome::Failed(BeatError::WRITE_ZERO)
    );
    assert_eq!(a.nonce(), 1);
}

#[test]
fn send_terminal_emits_critical_terminal_frames_without_touching_the_session() {
    let (mut a, fake, _) = agent();
    a.beat(Status::Ok, 0);
    assert!(a.send_terminal().is_sent());
    assert!(a.send_terminal().is_sent());
    assert!(a.beat(Status::Ok, 0).is_sent());
    let f = fake.frames();
    assert!(
        f[1].is_terminal()
            && f[1].status == Status::Critical
            && f[1].payload == varta_core::cause::PAYLOAD_CLEAN_EXIT
    );
    assert!(f[1].timestamp >= 1 && f[2].timestamp > f[1].timestamp);
    assert_eq!(f[3].nonce, 2, "regular nonce unaffected");
    assert_eq!(fake.w().commits, 4);
    fake.push_errno(libc::EAGAIN, 1);
    assert_eq!(a.send_terminal(), KQF);
    assert_eq!(fake.w().commits, 4);
}

// --- classifier ------------------------------------------------------------------

#[test]
fn classifier_table_uses_platform_errno_constants() {
    use DropReason::*;
    let cases = [
        (libc::ENOBUFS, BeatOutcome::Dropped(KernelQueueFull)),
        (libc::ENOSPC, BeatOutcome::Dropped(StorageFull)),
        (libc::EAGAIN, BeatOutcome::Dropped(KernelQueueFull)),
        (libc::EWOULDBLOCK, BeatOutcome::Dropped(KernelQueueFull)),
        (libc::ECONNREFUSED, BeatOutcome::Dropped(NoObserver)),
        (libc::ENOENT, BeatOutcome::Dropped(NoObserver)),
        (libc::ECONNRESET, BeatOutcome::Dropped(PeerGone)),
        (libc::ENOTCONN, BeatOutcome::Dropped(PeerGone)),
        (libc::EPIPE, BeatOutcome::Dropped(PeerGone)),
        (libc::EPERM, BeatOutcome::Failed(BeatError::os(libc::EPERM))),
        (
            libc::EACCES,
            BeatOutcome::Failed(BeatError::os(libc::EACCES)),
        ),
    ];
    for (errno, want) in cases {
        let got = classify_send_error(&io::Error::from_raw_os_error(errno));
        assert_eq!(got, want, "errno {errno}");
    }
    #[cfg(target_os = "linux")]
    {
        assert_eq!(libc::ENOBUFS, 105);
        // 111 is ECONNREFUSED on Linux, never "ENOBUFS".
        assert_eq!(
            classify_send_error(&io::Error::from_raw_os_error(111)),
            BeatOutcome::Dropped(NoObserver)
        );
    }
    // Errors without an errno: matched by kind.
    let by_kind = |k| classify_send_error(&io::Error::from(k));
    assert_eq!(
        by_kind(io::ErrorKind::WouldBlock),
        BeatOutcome::Dropped(KernelQueueFull)
    );
    assert_eq!(
        by_kind(io::ErrorKind::BrokenPipe),
        BeatOutcome::Dropped(PeerGone)
    );
    assert_eq!(
        by_kind(io::ErrorKind::InvalidData),
        BeatOutcome::Failed(BeatError::synthetic(FailKind::Other))
    );
}

#[test]
fn outcome_display_matches_the_spec() {
    assert_eq!(BeatOutcome::Sent.to_string(), "sent");
    assert_eq!(KQF.to_string(), "dropped: kernel queue full");
    assert_eq!(
        BeatOutcome::Failed(BeatError::INVALID_INPUT).to_string(),
        "failed: send failed: InvalidInput (errno=0)"
    );
    assert_eq!(
        BeatError::os(libc::EPERM).to_io_error().raw_os_error(),
        Some(libc::EPERM)
    );
    assert_eq!(BeatError::CLOSED.io_kind(), io::ErrorKind::NotConnected);
}
