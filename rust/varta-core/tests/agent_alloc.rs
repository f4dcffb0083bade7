//! `agent.md` §12: after connect, `beat()` performs no heap allocation.
//!
//! A counting global allocator counts allocations made by the measuring
//! thread while armed (other test-harness threads are ignored). The receiver
//! is drained between beats with `recv` into a stack buffer, so every beat is
//! a real successful send.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicU64, Ordering};
use varta_core::agent::{Agent, BeatOutcome};
use varta_core::Status;

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
}

fn note() {
    if ARMED.with(Cell::get) {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: forwards to the system allocator; the counter has no side effects.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Run `f` with allocation counting armed on this thread; return the count.
fn count_allocs(f: impl FnOnce()) -> u64 {
    let before = ALLOCS.load(Ordering::Relaxed);
    ARMED.with(|a| a.set(true));
    f();
    ARMED.with(|a| a.set(false));
    ALLOCS.load(Ordering::Relaxed) - before
}

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
