//! Fork behaviour with a real `fork(2)`: the child's first beat reconnects,
//! carries the child's pid and restarts the nonce at 1; a lock held by another
//! thread at fork time does not deadlock the child.
//!
//! The children only do async-signal-safe work besides the agent's own
//! send path (socket, connect, send: no allocation), then `_exit`.

use std::os::unix::net::UnixDatagram;
use std::sync::mpsc;
use std::time::Duration;
use varta_core::agent::{Agent, ForkSafeMutex};
use varta_core::{Frame, Status};

fn wait_child(pid: libc::pid_t) -> i32 {
    let mut status = 0;
    // SAFETY: waiting for our own child.
    let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(rc, pid);
    assert!(libc::WIFEXITED(status), "child died: {status:#x}");
    libc::WEXITSTATUS(status)
}

#[test]
fn forked_child_recovers_with_its_own_pid_and_nonce_one() {
    let dir = std::env::temp_dir().join(format!("varta-fork-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("obs.sock");
    let rx = UnixDatagram::bind(&path).unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let shared = ForkSafeMutex::new(Agent::connect(&path).unwrap());
    for _ in 0..3 {
        assert!(shared.lock().beat(Status::Ok, 0).is_sent());
    }

    // A thread of the parent holds the agent's lock across the fork.
    let (locked_tx, locked_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let shared_ref = &shared;
    std::thread::scope(|s| {
        s.spawn(move || {
            let _guard = shared_ref.lock();
            locked_tx.send(()).unwrap();
            release_rx.recv().unwrap();
        });
        locked_rx.recv().unwrap();
        assert!(shared.try_lock().is_none(), "held by the other thread");

        // SAFETY: the child only touches atomics, the agent's socket path and
        // `_exit`.
        let child = unsafe { libc::fork() };
        assert!(child >= 0);
        if child == 0 {
            let code = match shared.try_lock() {
                None => 10,
                Some(mut a) => {
                    let ok = a.beat(Status::Degraded, 77).is_sent();
                    match (ok, a.fork_recoveries(), a.nonce()) {
                        (true, 1, 1) => 0,
                        (false, _, _) => 11,
                        _ => 12,
                    }
                }
            };
            // SAFETY: leave without running the parent's atexit/destructors.
            unsafe { libc::_exit(code) };
        }
        let code = wait_child(child);
        release_tx.send(()).unwrap(); // before asserting, so a failure cannot hang the scope
        assert_eq!(code, 0, "child could not lock (10) or beat (11/12)");

        let mut buf = [0u8; 64];
        let mut frames = Vec::new();
        for _ in 0..4 {
            let n = rx.recv(&mut buf).unwrap();
            frames.push(Frame::decode_slice(&buf[..n]).unwrap().unwrap());
        }
        let child_frame = frames.last().unwrap();
        assert_eq!(child_frame.pid, child as u32);
        assert_eq!((child_frame.nonce, child_frame.payload), (1, 77));
        assert_eq!(child_frame.status, Status::Degraded);
    });
    // The parent's session is untouched.
    let mut parent = shared.lock();
    assert!(parent.beat(Status::Ok, 0).is_sent());
    assert_eq!((parent.nonce(), parent.fork_recoveries()), (4, 0));
    drop(parent);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A fork that skips `pthread_atfork` handlers (a raw `clone` system call):
/// the epoch does not move, the wipe-on-fork incarnation token does.
#[cfg(target_os = "linux")]
#[test]
fn raw_clone_child_without_atfork_handlers_is_detected() {
    let dir = std::env::temp_dir().join(format!("varta-rawfork-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("obs.sock");
    let rx = UnixDatagram::bind(&path).unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let shared = ForkSafeMutex::new(Agent::connect(&path).unwrap());
    assert!(varta_core::agent::incarnation::current().is_some());
    for _ in 0..2 {
        assert!(shared.lock().beat(Status::Ok, 0).is_sent());
    }
    let epoch = varta_core::fork::current();
    // SAFETY: fork-like clone (no shared memory); the child only does atomics,
    // socket syscalls and `_exit`.
    let child = unsafe {
        libc::syscall(
            libc::SYS_clone,
            libc::SIGCHLD as libc::c_long,
            0 as libc::c_long,
            0 as libc::c_long,
            0 as libc::c_long,
            0 as libc::c_long,
        )
    } as libc::pid_t;
    assert!(child >= 0);
    if child == 0 {
        let code = if varta_core::fork::current() != epoch {
            20 // handlers ran: this would not test anything
        } else {
            let mut a = shared.lock();
            match (a.beat(Status::Critical, 5).is_sent(), a.fork_recoveries()) {
                (true, 1) => 0,
                (false, _) => 21,
                _ => 22,
            }
        };
        // SAFETY: leave without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    assert_eq!(
        wait_child(child),
        0,
        "raw-clone child (20: epoch moved, 21/22: beat)"
    );
    let mut buf = [0u8; 64];
    let mut frames = Vec::new();
    for _ in 0..3 {
        let n = rx.recv(&mut buf).unwrap();
        frames.push(Frame::decode_slice(&buf[..n]).unwrap().unwrap());
    }
    let c = frames.last().unwrap();
    assert_eq!((c.pid, c.nonce, c.payload), (child as u32, 1, 5));
    let _ = std::fs::remove_dir_all(&dir);
}
