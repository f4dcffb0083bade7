//! Process-wide fork epoch (`docs/agent.md#fork-safety`).
//!
//! A `pthread_atfork` child handler bumps an atomic; senders compare both the
//! pid *and* this epoch before each frame, because pid alone misses a
//! descendant that was handed its ancestor's recycled pid.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

static EPOCH: AtomicU64 = AtomicU64::new(0);
static REGISTERED: OnceLock<Result<(), i32>> = OnceLock::new();

extern "C" fn on_fork_child() {
    // Async-signal-safe: one relaxed atomic add, no allocation, no locks.
    EPOCH.fetch_add(1, Ordering::Relaxed);
}

/// Register the at-fork handler once per process. Constructors call this and
/// fail if it fails (never fall back to pid-only detection).
pub fn register() -> std::io::Result<u64> {
    let r = REGISTERED.get_or_init(|| {
        // SAFETY: registering a handler that only touches an atomic.
        let rc = unsafe { libc::pthread_atfork(None, None, Some(on_fork_child)) };
        if rc == 0 {
            Ok(())
        } else {
            Err(rc)
        }
    });
    match r {
        Ok(()) => Ok(current()),
        Err(rc) => Err(std::io::Error::from_raw_os_error(*rc)),
    }
}

/// The current epoch (number of forks this process's lineage went through
/// since registration, as seen in this process).
#[inline]
pub fn current() -> u64 {
    EPOCH.load(Ordering::Relaxed)
}

/// `getpid()` without caching (Rust's std does not cache it either).
#[inline]
pub fn getpid() -> u32 {
    std::process::id()
}
