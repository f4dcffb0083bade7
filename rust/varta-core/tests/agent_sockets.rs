//! The agent over real sockets: UDS connect errors, frames on the wire,
//! observer restarts, transactional reconnect, UDP.

use std::net::UdpSocket;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use varta_core::agent::{Agent, BeatOutcome, DropReason};
use varta_core::transport::Endpoint;
use varta_core::{Frame, Status};

/// A fresh private directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "varta-agent-{tag}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    fn sock(&self) -> PathBuf {
        self.0.join("obs.sock")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn listener(path: &PathBuf) -> UnixDatagram {
    let rx = UnixDatagram::bind(path).unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    rx
}

fn recv_frame(rx: &UnixDatagram) -> Frame {
    let mut buf = [0u8; 64];
    let n = rx.recv(&mut buf).unwrap();
    assert_eq!(n, 32);
    Frame::decode_slice(&buf[..n]).unwrap().unwrap()
}

#[test]
fn connect_to_a_missing_path_is_enoent() {
    let dir = TempDir::new("missing");
    let err = Agent::connect(dir.sock()).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
}

#[test]
fn connect_to_a_path_nobody_listens_on_is_econnrefused() {
    let dir = TempDir::new("refused");
    drop(UnixDatagram::bind(dir.sock()).unwrap()); // leaves the file behind
    let err = Agent::connect(dir.sock()).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ECONNREFUSED));
}

#[test]
fn too_long_a_path_is_enametoolong() {
    let long = PathBuf::from(format!("/tmp/{}", "x".repeat(200)));
    let err = Agent::connect(long).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENAMETOOLONG));
}

#[test]
fn beats_arrive_as_decodable_frames_with_consecutive_nonces() {
    let dir = TempDir::new("wire");
    let rx = listener(&dir.sock());
    let mut a = Agent::connect(dir.sock()).unwrap();
    for (i, status) in [Status::Ok, Status::Degraded, Status::Critical]
        .into_iter()
        .enumerate()
    {
        assert_eq!(a.beat(status, 100 + i as u32), BeatOutcome::Sent);
    }
    let mut last_ts = 0;
    for (i, status) in [Status::Ok, Status::Degraded, Status::Critical]
        .into_iter()
        .enumerate()
    {
        let f = recv_frame(&rx);
        assert_eq!(f.status, status);
        assert_eq!(f.pid, std::process::id());
        assert_eq!(f.nonce, i as u64 + 1);
        assert_eq!(f.payload, 100 + i as u32);
        assert!(f.timestamp >= last_ts);
        last_ts = f.timestamp;
    }
    assert!(a.send_terminal().is_sent());
    let t = recv_frame(&rx);
    assert!(t.is_terminal() && t.status == Status::Critical);
}

#[test]
fn full_receiver_queue_is_kernel_queue_full_and_nothing_is_lost() {
    let dir = TempDir::new("full");
    let rx = listener(&dir.sock());
    let mut a = Agent::connect(dir.sock()).unwrap();
    let mut sent = 0u64;
    let outcome = loop {
        match a.beat(Status::Ok, 0) {
            BeatOutcome::Sent => sent += 1,
            other => break other,
        }
        assert!(sent < 1_000_000, "the queue never filled");
    };
    assert_eq!(outcome, BeatOutcome::Dropped(DropReason::KernelQueueFull));
    assert_eq!(a.nonce(), sent);
    // Drain, then the next beat carries the next nonce: no gap on the wire.
    for n in 1..=sent {
        assert_eq!(recv_frame(&rx).nonce, n);
    }
    assert!(a.beat(Status::Ok, 0).is_sent());
    assert_eq!(recv_frame(&rx).nonce, sent + 1);
}

#[test]
fn observer_restart_is_no_observer_until_reconnect() {
    let dir = TempDir::new("restart");
    let rx = listener(&dir.sock());
    let mut a = Agent::connect(dir.sock()).unwrap();
    assert!(a.beat(Status::Ok, 0).is_sent());
    recv_frame(&rx);
    drop(rx);
    std::fs::remove_file(dir.sock()).unwrap();
    assert_eq!(
        a.beat(Status::Ok, 0),
        BeatOutcome::Dropped(DropReason::NoObserver)
    );
    // Reconnect with nothing bound fails and keeps the old socket.
    assert_eq!(
        a.reconnect().unwrap_err().raw_os_error(),
        Some(libc::ENOENT)
    );
    let rx = listener(&dir.sock());
    a.reconnect().unwrap();
    assert!(a.beat(Status::Ok, 0).is_sent());
    let f = recv_frame(&rx);
    assert_eq!(f.nonce, 2, "reconnect keeps the session");
}

#[test]
fn failed_reconnect_leaves_the_old_socket_working() {
    let dir = TempDir::new("txn");
    let rx = listener(&dir.sock());
    let mut a = Agent::connect(dir.sock()).unwrap();
    // The observer is still alive but its path is gone: a new socket cannot
    // connect, the old one still reaches it.
    std::fs::remove_file(dir.sock()).unwrap();
    assert_eq!(
        a.reconnect().unwrap_err().raw_os_error(),
        Some(libc::ENOENT)
    );
    assert!(a.beat(Status::Ok, 9).is_sent());
    assert_eq!(recv_frame(&rx).payload, 9);
}

#[test]
fn auto_reconnect_follows_a_restarted_observer() {
    let dir = TempDir::new("auto");
    let rx = listener(&dir.sock());
    let mut a = Agent::connect(dir.sock()).unwrap();
    a.set_reconnect_after(1);
    assert!(a.beat(Status::Ok, 0).is_sent());
    recv_frame(&rx);
    drop(rx);
    std::fs::remove_file(dir.sock()).unwrap();
    let rx = listener(&dir.sock());
    // The old socket's peer is gone: the send drops, the agent reconnects
    // and the retry reaches the new observer.
    assert_eq!(a.beat(Status::Degraded, 3), BeatOutcome::Sent);
    let f = recv_frame(&rx);
    assert_eq!((f.nonce, f.status, f.payload), (2, Status::Degraded, 3));
}

#[cfg(target_os = "linux")]
#[test]
fn abstract_unix_names_work() {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("varta-agent-test-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let rx = UnixDatagram::bind_addr(&addr).unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut path = vec![0u8];
    path.extend_from_slice(name.as_bytes());
    let path =
        PathBuf::from(<std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(path));
    let mut a = Agent::connect(path).unwrap();
    assert!(a.beat(Status::Ok, 1).is_sent());
    assert_eq!(recv_frame(&rx).payload, 1);
}

#[test]
fn udp_beats_arrive_and_a_closed_port_becomes_no_observer() {
    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let addr = rx.local_addr().unwrap();
    let mut a = Agent::connect_udp(addr).unwrap();
    assert!(a.beat(Status::Ok, 5).is_sent());
    let mut buf = [0u8; 64];
    let (n, from) = rx.recv_from(&mut buf).unwrap();
    assert_eq!(n, 32);
    assert!(from.ip().is_unspecified() || from.ip().is_loopback());
    let f = Frame::decode_slice(&buf[..n]).unwrap().unwrap();
    assert_eq!((f.nonce, f.payload, f.pid), (1, 5, std::process::id()));

    // Nobody listens any more: beats are Sent (no liveness check) until the
    // ICMP port-unreachable surfaces as ECONNREFUSED → NoObserver.
    drop(rx);
    let deadline = Instant::now() + Duration::from_secs(10);
    let seen = loop {
        match a.beat(Status::Ok, 0) {
            BeatOutcome::Sent => {}
            other => break other,
        }
        assert!(Instant::now() < deadline, "no ICMP error surfaced");
        std::thread::yield_now();
    };
    assert_eq!(seen, BeatOutcome::Dropped(DropReason::NoObserver));
}

#[test]
fn udp_endpoint_family_follows_the_host_text() {
    let Endpoint::Udp(v4) = Endpoint::udp("127.0.0.1", 9).unwrap() else {
        panic!("not udp")
    };
    assert!(v4.is_ipv4());
    let Endpoint::Udp(v6) = Endpoint::udp("::1", 9).unwrap() else {
        panic!("not udp")
    };
    assert!(v6.is_ipv6());
    let Endpoint::Udp(bracketed) = Endpoint::udp("[::1]", 9).unwrap() else {
        panic!("not udp")
    };
    assert_eq!(bracketed, v6);
    assert!(Endpoint::udp("not a host name..", 9).is_err());
}
