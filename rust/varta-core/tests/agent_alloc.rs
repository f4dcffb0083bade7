//! `docs/agent.md#threads-closing-and-allocation`: after connect, `beat()` performs no heap allocation.
//!
//! A counting global allocator counts allocations made by the measuring
//! thread while armed (other test-harness threads are ignored). The receiver
//! is drained between beats with `recv` into a stack buffer, so every beat is
//! a real successful send.

use std::os::unix::net::UnixDatagram;
use varta_core::agent::{Agent, BeatOutcome};
use varta_core::Status;

mod common;

use common::count_allocs;

#[global_allocator]
static GLOBAL: common::Counting = common::Counting;

#[test]
fn ten_thousand_uds_beats_allocate_nothing() {
    let dir = std::env::temp_dir().join(format!("varta-alloc-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("obs.sock");
    let rx = UnixDatagram::bind(&path).unwrap();
    rx.set_nonblocking(true).unwrap();
    let mut agent = Agent::connect(&path).unwrap();

    // Sanity: the counter does see allocations on this thread.
    assert!(count_allocs(|| drop(std::hint::black_box(vec![1u8; 64]))) >= 1);

    let statuses = [Status::Ok, Status::Degraded, Status::Critical];
    let mut sent = 0u32;
    let mut received = 0u32;
    let mut buf = [0u8; 64];
    let allocs = count_allocs(|| {
        for i in 0..10_000u32 {
            if agent.beat(statuses[(i % 3) as usize], i) == BeatOutcome::Sent {
                sent += 1;
            }
            while let Ok(n) = rx.recv(&mut buf) {
                assert_eq!(n, 32);
                received += 1;
            }
        }
        // The cold-ish paths a long-running agent also takes.
        let _ = agent.send_terminal();
        while rx.recv(&mut buf).is_ok() {}
    });
    assert_eq!(sent, 10_000, "every beat was a real send");
    assert_eq!(received, 10_000);
    assert_eq!(allocs, 0, "beat() allocated {allocs} times");
    assert_eq!(agent.nonce(), 10_000);

    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
}
