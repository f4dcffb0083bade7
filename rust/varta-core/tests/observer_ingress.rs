//! Observer core: ingress gates in the spec's order (fake clock, frames
//! injected as a kernel-attested local peer) and the real Unix socket
//! (credentials, lengths, passed descriptors, control truncation, waiting).

use std::io::IoSlice;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use varta_core::frame::{Frame, Status, NONCE_TERMINAL};
use varta_core::observer::clock::{ClockSource, FakeClock, MonotonicClock};
use varta_core::observer::ingress::{expire_for_test, inject_for_test};
use varta_core::observer::{BeatOrigin, Event, Observer, ObserverConfig};

const MS: u64 = 1_000_000;

fn me() -> u32 {
    std::process::id()
}

fn frame(pid: u32, nonce: u64) -> [u8; 32] {
    Frame {
        status: Status::Ok,
        pid,
        timestamp: nonce,
        nonce,
        payload: 7,
    }
    .encode()
}

fn fake_observer(cfg: ObserverConfig) -> (Observer, FakeClock) {
    let clock = FakeClock::new(1_000 * MS);
    let obs = Observer::new(cfg, Box::new(clock.clone())).unwrap();
    (obs, clock)
}

fn counter(obs: &Observer, key: &str) -> u64 {
    use varta_core::observer::CounterValue;
    match obs.counters().into_iter().find(|(k, _)| *k == key) {
        Some((_, CounterValue::Int(n))) => n,
        other => panic!("no int counter {key}: {other:?}"),
    }
}

fn labelled(obs: &Observer, key: &str, label: &str) -> u64 {
    use varta_core::observer::CounterValue;
    match obs.counters().into_iter().find(|(k, _)| *k == key) {
        Some((_, CounterValue::Labels(ls))) => ls.iter().find(|(l, _)| *l == label).unwrap().1,
        other => panic!("no labelled counter {key}: {other:?}"),
    }
}

#[test]
fn auth_failure_leaves_the_tracker_untouched() {
    let (mut obs, _) = fake_observer(ObserverConfig::new(None, 100 * MS));
    let mut out = Vec::new();
    inject_for_test(&mut obs, &frame(me() + 1, 1), Some(me()), &mut out);
    assert!(matches!(out[..], [Event::AuthFailure { claimed_pid, .. }] if claimed_pid == me() + 1));
    assert_eq!(obs.agents().count(), 0);
    assert_eq!(counter(&obs, "frame_auth_failures"), 1);
    assert_eq!(counter(&obs, "beats"), 0);
}

#[test]
fn accepted_beat_is_kernel_attested_with_proc_identity() {
    let (mut obs, _) = fake_observer(ObserverConfig::new(None, 100 * MS));
    let mut out = Vec::new();
    inject_for_test(&mut obs, &frame(me(), 1), Some(me()), &mut out);
    let [Event::Beat {
        pid,
        origin,
        pid_ns_inode,
        payload,
        ..
    }] = out[..]
    else {
        panic!("{out:?}")
    };
    assert_eq!(
        (pid, origin, payload),
        (me(), BeatOrigin::KernelAttested, 7)
    );
    assert!(pid_ns_inode.is_some());
    let a = obs.agent(me()).unwrap();
    assert!(a.generation.is_some());
    assert_eq!(a.pid_ns_inode, pid_ns_inode);
}

#[test]
fn unidentifiable_first_contact_is_socket_mode_only() {
    // A pid that does not exist here: /proc has nothing, so the first
    // contact cannot be kernel-attested.
    let ghost = 4_000_000;
    let (mut obs, _) = fake_observer(ObserverConfig::new(None, 100 * MS));
    let mut out = Vec::new();
    inject_for_test(&mut obs, &frame(ghost, 1), Some(ghost), &mut out);
    assert!(
        matches!(
            out[..],
            [Event::Beat {
                origin: BeatOrigin::SocketModeOnly,
                pid_ns_inode: None,
                ..
            }]
        ),
        "{out:?}"
    );
}

#[test]
fn every_decode_error_is_counted_by_kind() {
    let (mut obs, _) = fake_observer(ObserverConfig::new(None, 100 * MS));
    let mut out = Vec::new();
    let mut bad_magic = frame(me(), 1);
    bad_magic[0] = 0;
    inject_for_test(&mut obs, &bad_magic, Some(me()), &mut out);
    let mut bad_crc = frame(me(), 1);
    bad_crc[28] ^= 1;
    inject_for_test(&mut obs, &bad_crc, Some(me()), &mut out);
    assert_eq!(out.len(), 2);
    assert!(out.iter().all(|e| matches!(e, Event::Decode { .. })));
    assert_eq!(labelled(&obs, "decode_errors", "bad_magic"), 1);
    assert_eq!(labelled(&obs, "decode_errors", "bad_crc"), 1);
    assert_eq!(labelled(&obs, "decode_errors", "bad_pid"), 0);
}

#[test]
fn per_pid_rate_limit_drops_fast_beats_but_not_a_first_terminal() {
    let mut cfg = ObserverConfig::new(None, 1_000 * MS);
    cfg.max_beat_rate = 100; // 10 ms
    let (mut obs, clock) = fake_observer(cfg);
    let mut out = Vec::new();
    inject_for_test(&mut obs, &frame(me(), 1), Some(me()), &mut out);
    clock.advance(MS);
    inject_for_test(&mut obs, &frame(me(), 2), Some(me()), &mut out);
    assert_eq!(labelled(&obs, "rate_limited", "per_pid"), 1);
    let terminal = Frame {
        status: Status::Critical,
        pid: me(),
        timestamp: 5,
        nonce: NONCE_TERMINAL,
        payload: 0,
    }
    .encode();
    inject_for_test(&mut obs, &terminal, Some(me()), &mut out);
    assert_eq!(labelled(&obs, "rate_limited", "per_pid"), 1);
    clock.advance(10 * MS);
    inject_for_test(&mut obs, &frame(me(), 3), Some(me()), &mut out);
    assert_eq!(counter(&obs, "beats"), 3);
    assert_eq!(obs.agent(me()).unwrap().beats, 3);
}

#[test]
fn global_bucket_refuses_past_the_burst() {
    let mut cfg = ObserverConfig::new(None, 1_000 * MS);
    cfg.max_beat_rate = 0;
    cfg.global_beat_rate = 1;
    cfg.global_beat_burst = 2;
    let (mut obs, clock) = fake_observer(cfg);
    let mut out = Vec::new();
    for n in 1..=3 {
        inject_for_test(&mut obs, &frame(me(), n), Some(me()), &mut out);
    }
    assert_eq!(counter(&obs, "beats"), 2);
    assert_eq!(labelled(&obs, "rate_limited", "global"), 1);
    clock.advance(1_000 * MS);
    inject_for_test(&mut obs, &frame(me(), 4), Some(me()), &mut out);
    assert_eq!(counter(&obs, "beats"), 3);
}

#[test]
fn pid_max_gate_applies_only_to_unverified_senders() {
    let (mut obs, _) = fake_observer(ObserverConfig::new(None, 100 * MS));
    let pid_max = counter(&obs, "pid_max_current") as u32;
    let mut out = Vec::new();
    inject_for_test(&mut obs, &frame(pid_max + 1, 1), None, &mut out);
    assert!(out.is_empty());
    assert_eq!(counter(&obs, "frame_rejected_pid_above_max"), 1);
    inject_for_test(&mut obs, &frame(pid_max, 1), None, &mut out);
    assert_eq!(counter(&obs, "beats"), 1);
}

#[test]
fn one_stall_per_silence_then_rearm() {
    let mut cfg = ObserverConfig::new(None, 100 * MS);
    cfg.emit_beats = false;
    let (mut obs, clock) = fake_observer(cfg);
    let mut out = Vec::new();
    inject_for_test(&mut obs, &frame(me(), 1), Some(me()), &mut out);
    assert!(out.is_empty(), "emit_beats=false: counted, not emitted");
    assert_eq!(obs.agent(me()).unwrap().beats, 1);
    clock.advance(99 * MS);
    expire_for_test(&mut obs, &mut out);
    assert!(out.is_empty());
    clock.advance(MS);
    expire_for_test(&mut obs, &mut out);
    assert!(matches!(&out[..], [Event::Stall(s)] if s.pid == me() && s.last_nonce == 1));
    clock.advance(500 * MS);
    expire_for_test(&mut obs, &mut out);
    assert_eq!(out.len(), 1, "exactly one stall per silence run");
    inject_for_test(&mut obs, &frame(me(), 2), Some(me()), &mut out);
    clock.advance(100 * MS);
    expire_for_test(&mut obs, &mut out);
    assert_eq!(out.len(), 2);
    assert_eq!(obs.agent(me()).unwrap().stalls, 2);
}

// ------------------------------------------------------------ real socket

fn tmp_sock(name: &str) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!(
        "varta-obs-{}-{name}-{}",
        me(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("obs.sock");
    (dir, p)
}

fn real_observer(path: &std::path::Path, threshold_ms: u64) -> Observer {
    let mut cfg = ObserverConfig::new(Some(path.to_path_buf()), threshold_ms * MS);
    cfg.max_beat_rate = 0;
    Observer::new(
        cfg,
        Box::new(MonotonicClock::new(ClockSource::Monotonic).unwrap()),
    )
    .unwrap()
}

/// Poll until `pred` holds for one event (or 5 s pass).
fn poll_until(obs: &mut Observer, pred: impl Fn(&Event) -> bool) -> Vec<Event> {
    let end = Instant::now() + Duration::from_secs(5);
    let mut all = Vec::new();
    while Instant::now() < end {
        let mut out = Vec::new();
        obs.poll(Some(Duration::from_millis(200)), &mut out)
            .unwrap();
        let hit = out.iter().any(&pred);
        all.extend(out);
        if hit {
            return all;
        }
    }
    panic!("condition not met; events: {all:?}")
}

#[test]
fn socket_lengths_credentials_and_stall_wakeup() {
    let (dir, p) = tmp_sock("socket");
    let mut obs = real_observer(&p, 50);
    let tx = UnixDatagram::unbound().unwrap();
    tx.send_to(&[0u8; 31], &p).unwrap();
    tx.send_to(&[0u8; 33], &p).unwrap();
    tx.send_to(&[0u8; 4096], &p).unwrap();
    tx.send_to(&frame(me(), 1), &p).unwrap();
    let events = poll_until(&mut obs, |e| matches!(e, Event::Beat { .. }));
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(counter(&obs, "truncated_datagrams"), 3);
    // The wait ends at the stall deadline by itself (no new datagrams).
    let events = poll_until(&mut obs, |e| matches!(e, Event::Stall(_)));
    let Event::Stall(s) = &events[0] else {
        panic!("{events:?}")
    };
    assert!(s.observer_ns - s.last_ns >= 50 * MS);
    obs.close();
    assert!(!p.exists());
    std::fs::remove_dir_all(dir).unwrap();
}

fn send_with_fds(tx: &UnixDatagram, path: &std::path::Path, data: &[u8], fds: &[RawFd]) {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixAddr};
    let addr = UnixAddr::new(path).unwrap();
    let iov = [IoSlice::new(data)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    sendmsg(tx.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), Some(&addr)).unwrap();
}

#[test]
fn passed_descriptors_are_closed_and_ctrunc_is_reported() {
    let (dir, p) = tmp_sock("fds");
    let mut obs = real_observer(&p, 10_000);
    let tx = UnixDatagram::unbound().unwrap();

    // Pass the only other write end of a pipe: once the observer closes
    // it, the read end sees EOF.
    let (r, w) = nix::unistd::pipe().unwrap();
    send_with_fds(&tx, &p, &frame(me(), 1), &[w.as_raw_fd()]);
    drop(w);
    let events = poll_until(&mut obs, |e| matches!(e, Event::Beat { .. }));
    assert_eq!(events.len(), 1);
    let mut buf = [0u8; 1];
    assert_eq!(nix::unistd::read(r.as_raw_fd(), &mut buf).unwrap(), 0);

    // More descriptors than the control buffer holds → MSG_CTRUNC.
    let pipes: Vec<_> = (0..20).map(|_| nix::unistd::pipe().unwrap()).collect();
    let raw: Vec<RawFd> = pipes.iter().map(|(_, w)| w.as_raw_fd()).collect();
    send_with_fds(&tx, &p, &frame(me(), 2), &raw);
    let events = poll_until(&mut obs, |e| matches!(e, Event::CtrlTruncated { .. }));
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(counter(&obs, "ctrl_truncated"), 1);
    for (r, w) in pipes {
        drop(w);
        assert_eq!(nix::unistd::read(r.as_raw_fd(), &mut buf).unwrap(), 0);
    }
    assert_eq!(
        obs.agent(me()).unwrap().beats,
        1,
        "a truncated datagram is discarded"
    );
    drop(obs);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_burst_is_drained_in_batches() {
    let (dir, p) = tmp_sock("burst");
    let mut obs = real_observer(&p, 10_000);
    let tx = UnixDatagram::unbound().unwrap();
    let sender = std::thread::spawn({
        let p = p.clone();
        move || {
            for n in 1..=500u64 {
                // Blocking send: waits while the observer's queue is full.
                tx.send_to(&frame(me(), n), &p).unwrap();
            }
        }
    });
    let end = Instant::now() + Duration::from_secs(10);
    let mut beats = 0;
    while beats < 500 && Instant::now() < end {
        let mut out = Vec::new();
        obs.poll(Some(Duration::from_millis(100)), &mut out)
            .unwrap();
        beats += out
            .iter()
            .filter(|e| matches!(e, Event::Beat { .. }))
            .count();
    }
    sender.join().unwrap();
    assert_eq!(beats, 500);
    assert_eq!(obs.agent(me()).unwrap().last_nonce, 500);
    drop(obs);
    std::fs::remove_dir_all(dir).unwrap();
}

// ------------------------------------------------------------ pidfd identity

/// Fork a child that sends one frame carrying its own pid and exits; wait
/// for the exit before returning (reaping it unless `keep_zombie`), so the
/// sender is gone before the observer receives.
fn send_from_exited_child(path: &std::path::Path, keep_zombie: bool) -> u32 {
    let tx = UnixDatagram::unbound().unwrap();
    let addr = nix::sys::socket::UnixAddr::new(path).unwrap();
    // SAFETY: the child only encodes into a stack buffer, sends and exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // SAFETY: getpid cannot fail.
        let me = unsafe { libc::getpid() } as u32;
        let f = frame(me, 1);
        let ok = nix::sys::socket::sendto(
            tx.as_raw_fd(),
            &f,
            &addr,
            nix::sys::socket::MsgFlags::empty(),
        )
        .is_ok();
        // SAFETY: leave at once, without running the parent's destructors.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    if keep_zombie {
        // SAFETY: WNOWAIT leaves the child a zombie; `info` is written.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        assert_eq!(rc, 0);
        return pid as u32;
    }
    reap(pid as u32);
    pid as u32
}

fn reap(pid: u32) {
    let mut status = 0;
    // SAFETY: our own child.
    assert_eq!(
        unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) },
        pid as libc::pid_t
    );
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
}

#[test]
fn live_sender_identity_is_vouched_for_by_its_pidfd() {
    let (dir, p) = tmp_sock("pidfd-live");
    let mut obs = real_observer(&p, 10_000);
    let pidfd_mode = obs.uds_pidfd_mode().unwrap();
    let tx = UnixDatagram::unbound().unwrap();
    for n in 1..=3 {
        tx.send_to(&frame(me(), n), &p).unwrap();
    }
    let events = poll_until(&mut obs, |e| matches!(e, Event::Beat { nonce: 3, .. }));
    assert!(
        events.iter().all(|e| matches!(
            e,
            Event::Beat {
                origin: BeatOrigin::KernelAttested,
                pid_ns_inode: Some(_),
                ..
            }
        )),
        "{events:?}"
    );
    assert!(obs.agent(me()).unwrap().generation.is_some());
    let c = obs.ingress_counters();
    // First contact reads /proc; the continuation beats reuse the slot.
    assert_eq!(c.identity_pidfd_verified, u64::from(pidfd_mode));
    assert_eq!(c.identity_sender_exited, 0);
    let pc = obs.uds_pidfd_counters().unwrap();
    assert_eq!(pc.received, if pidfd_mode { 3 } else { 0 });
    // Recent pidfds stay open while traffic flows; an idle wait closes them.
    settle(&mut obs);
    let pc = obs.uds_pidfd_counters().unwrap();
    assert_eq!(pc.closed, pc.received, "every pidfd closed once idle");
    drop(obs);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_sender_reaped_before_the_read_gets_no_trusted_identity() {
    let (dir, p) = tmp_sock("pidfd-reaped");
    let mut obs = real_observer(&p, 10_000);
    let child = send_from_exited_child(&p, false);
    let events = poll_until(&mut obs, |e| matches!(e, Event::Beat { .. }));
    // docs/observer.md#ingress step 8: a first-contact UDS peer without a trusted identity is
    // SocketModeOnly; the slot pins no namespace and no generation.
    assert!(
        matches!(
            events[..],
            [Event::Beat {
                pid,
                origin: BeatOrigin::SocketModeOnly,
                pid_ns_inode: None,
                ..
            }] if pid == child
        ),
        "{events:?}"
    );
    let a = obs.agent(child).unwrap();
    assert_eq!((a.generation, a.pid_ns_inode), (None, None));
    if obs.uds_pidfd_mode().unwrap() {
        // Refused on the pidfd's word, whoever holds the pid by now.
        assert_eq!(obs.ingress_counters().identity_sender_exited, 1);
        assert_eq!(obs.ingress_counters().identity_pidfd_verified, 0);
    }
    settle(&mut obs);
    let pc = obs.uds_pidfd_counters().unwrap();
    assert_eq!(pc.closed, pc.received);
    drop(obs);
    std::fs::remove_dir_all(dir).unwrap();
}

/// One idle wait slice with nothing arriving (the observer then closes the
/// pidfds it kept from past batches).
fn settle(obs: &mut Observer) {
    let mut out = Vec::new();
    obs.poll(Some(Duration::from_millis(60)), &mut out).unwrap();
    assert!(out.is_empty(), "{out:?}");
}

#[test]
fn an_exited_sender_is_not_vouched_for_even_while_proc_still_answers() {
    let (dir, p) = tmp_sock("pidfd-zombie");
    let mut obs = real_observer(&p, 10_000);
    if !obs.uds_pidfd_mode().unwrap() {
        eprintln!("kernel without SO_PASSPIDFD: nothing to check");
        return;
    }
    // A zombie still has /proc/<pid>/stat and ns/pid, so a read without the
    // pidfd would pin it as KernelAttested; its pid is free for reuse the
    // moment it is reaped, so docs/observer.md#namespaces-and-generations does not trust it.
    let child = send_from_exited_child(&p, true);
    assert!(varta_core::observer::procfs::start_time(child).is_some());
    let events = poll_until(&mut obs, |e| matches!(e, Event::Beat { .. }));
    reap(child);
    assert!(
        matches!(
            events[..],
            [Event::Beat {
                pid,
                origin: BeatOrigin::SocketModeOnly,
                pid_ns_inode: None,
                ..
            }] if pid == child
        ),
        "{events:?}"
    );
    assert_eq!(obs.agent(child).unwrap().generation, None);
    assert_eq!(obs.ingress_counters().identity_sender_exited, 1);
    drop(obs);
    std::fs::remove_dir_all(dir).unwrap();
}
