//! The crash-frame emit path allocates nothing (`docs/agent.md#crash-hooks` "safety"):
//! a counting global allocator sees zero allocations on the firing thread
//! over 10,000 firings, both while the observer's queue has room and once
//! it is full (the send then fails with EAGAIN, also without allocating).

use std::os::unix::net::UnixDatagram;
use varta_core::frame::{Frame, NONCE_TERMINAL};
use varta_core::panic::{self, Emitter, Fire};

mod common;

use common::allocs;

#[global_allocator]
static GLOBAL: common::Counting = common::Counting;

#[test]
fn firing_never_allocates() {
    let dir = std::env::temp_dir().join(format!("varta-panic-noalloc-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("rx.sock");
    let rx = UnixDatagram::bind(&path).unwrap();
    panic::install(Emitter::connect_uds(&path).unwrap()).unwrap();
    let direct = Emitter::connect_uds(&path).unwrap();

    let mut sent = 0usize;
    let mut failed = 0usize;
    let before = allocs();
    for _ in 0..10_000 {
        for r in [panic::fire(), direct.fire()] {
            match r {
                Fire::Sent => sent += 1,
                Fire::SendFailed(_) => failed += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    let after = allocs();
    assert_eq!(after - before, 0, "the emit path allocated");
    // The counter does count on this thread.
    let boxed = std::hint::black_box(Box::new(7u64));
    assert_eq!(allocs(), after + 1);
    drop(boxed);
    assert!(sent > 0, "some frames must have gone out");
    assert!(
        failed > 0,
        "the queue should have filled up (both paths exercised)"
    );

    let mut buf = [0u8; 64];
    let n = rx.recv(&mut buf).unwrap();
    let f = Frame::decode_slice(&buf[..n]).unwrap().unwrap();
    assert_eq!(f.nonce, NONCE_TERMINAL);
    panic::uninstall();
    let _ = std::fs::remove_dir_all(&dir);
}
