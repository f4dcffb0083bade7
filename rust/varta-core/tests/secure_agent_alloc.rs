//! `docs/agent.md#threads-closing-and-allocation`, `docs/agent.md#crash-hooks` for the secure transport: after connect, secure
//! beats (shared and master key) allocate nothing, and neither does firing a
//! secure crash emitter (shared, master, and the master path of a pid other
//! than the installing one, i.e. a forked child's first crash).

use std::net::UdpSocket;
use varta_core::agent::{Agent, BeatOutcome};
use varta_core::frame::{Frame, NONCE_TERMINAL};
use varta_core::panic::{Emitter, Fire, TerminalSealer, MAX_WIRE_LEN};
use varta_core::panic_secure::MasterPanicSealer;
use varta_core::secure::Key;
use varta_core::Status;

mod common;

use common::allocs;

#[global_allocator]
static GLOBAL: common::Counting = common::Counting;

fn rx(len: usize) -> (UdpSocket, impl FnMut() -> u32) {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_nonblocking(true).unwrap();
    let c = s.try_clone().unwrap();
    let drain = move || {
        let mut buf = [0u8; 128];
        let mut n = 0;
        while let Ok(got) = c.recv(&mut buf) {
            assert_eq!(got, len);
            n += 1;
        }
        n
    };
    (s, drain)
}

#[test]
fn secure_beats_allocate_nothing() {
    for master in [false, true] {
        let (sock, mut drain) = rx(if master { 64 } else { 60 });
        let addr = sock.local_addr().unwrap();
        let key = Key::from_bytes([master as u8 + 1; 32]);
        let mut agent = if master {
            Agent::connect_secure_udp_with_master(addr, key).unwrap()
        } else {
            Agent::connect_secure_udp(addr, key).unwrap()
        };
        let mut sent = 0u32;
        let mut received = 0u32;
        let before = allocs();
        for i in 0..10_000u32 {
            if agent.beat(Status::Ok, i) == BeatOutcome::Sent {
                sent += 1;
            }
            received += drain();
        }
        let _ = agent.send_terminal();
        let after = allocs();
        received += drain();
        assert_eq!(after - before, 0, "secure beat allocated (master={master})");
        assert_eq!(sent, 10_000);
        assert_eq!(received, 10_001);
        let boxed = std::hint::black_box(Box::new(7u64));
        assert_eq!(allocs(), after + 1, "the counter counts on this thread");
        drop(boxed);
    }
}

#[test]
fn secure_crash_firing_allocates_nothing() {
    let key = Key::from_bytes([9; 32]);
    let (s1, mut d1) = rx(60);
    let (s2, mut d2) = rx(64);
    let shared = Emitter::connect_secure_udp_resolve(s1.local_addr().unwrap(), &key).unwrap();
    let master =
        Emitter::connect_secure_udp_master_resolve(s2.local_addr().unwrap(), &key).unwrap();
    let other_pid = MasterPanicSealer::new(&key).unwrap();
    let frame = Frame {
        status: Status::Critical,
        pid: std::process::id() + 1,
        timestamp: 7,
        nonce: NONCE_TERMINAL,
        payload: 0,
    };
    let before = allocs();
    for _ in 0..1000 {
        assert_eq!(shared.fire(), Fire::Sent);
        assert_eq!(master.fire(), Fire::Sent);
        let mut out = [0u8; MAX_WIRE_LEN];
        assert_eq!(other_pid.seal(&frame, &mut out), Some(64));
        d1();
        d2();
    }
    assert_eq!(allocs() - before, 0, "secure crash firing allocated");
}
