//! Fork detection (`docs/agent.md#fork-safety`): the process-wide fork
//! epoch below and the wipe-on-fork [`incarnation`] token.
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

pub mod incarnation {
    //! Syscall-free fork detection: a "process incarnation" token kept in a
    //! page the kernel zeroes in every child (`MADV_WIPEONFORK`, Linux ≥ 4.14).
    //!
    //! A pid can only change by forking, and every fork — including ones that
    //! skip `pthread_atfork` handlers (raw `clone`, glibc `_Fork`) — wipes the
    //! page. So while the token an agent saw at connect is still in the page,
    //! the process is the one that connected and its pid is unchanged: the
    //! beat can use the remembered pid instead of a `getpid()` system call
    //! (which costs as much as a quarter of the `send` on virtualised hosts).
    //! Tokens come from a counter in ordinary (copied) memory, so they only
    //! grow along a process lineage and a descendant never re-creates a token
    //! an inherited agent remembers — not even with a recycled pid.

    use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
    use std::sync::Once;

    static PAGE: AtomicPtr<AtomicU64> = AtomicPtr::new(std::ptr::null_mut());
    static NEXT: AtomicU64 = AtomicU64::new(1);
    static INIT: Once = Once::new();

    /// Map the wipe-on-fork page (once per process lineage). Idempotent.
    pub fn init() {
        INIT.call_once(|| {
            if let Some(page) = map_wipe_page() {
                page.store(NEXT.fetch_add(1, Ordering::Relaxed), Ordering::Relaxed);
                PAGE.store(
                    page as *const AtomicU64 as *mut AtomicU64,
                    Ordering::Release,
                );
            }
        });
    }

    /// This process's token; `None` if the platform has no wipe-on-fork
    /// memory (or [`init`] was never called). In a fresh child the page reads
    /// 0 and the first caller claims a new token.
    #[inline]
    pub fn current() -> Option<u64> {
        let page = PAGE.load(Ordering::Acquire);
        if page.is_null() {
            return None;
        }
        // SAFETY: the page is mapped for the life of the process (never unmapped).
        let word = unsafe { &*page };
        match word.load(Ordering::Acquire) {
            0 => Some(claim(word)),
            token => Some(token),
        }
    }

    #[cold]
    fn claim(word: &AtomicU64) -> u64 {
        let fresh = NEXT.fetch_add(1, Ordering::Relaxed);
        match word.compare_exchange(0, fresh, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => fresh,
            Err(other) => other,
        }
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn map_wipe_page() -> Option<&'static AtomicU64> {
        // SAFETY: a fresh private anonymous mapping, never unmapped on success.
        unsafe {
            let len = 4096;
            let p = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            if p == libc::MAP_FAILED {
                return None;
            }
            if libc::madvise(p, len, libc::MADV_WIPEONFORK) != 0 {
                libc::munmap(p, len);
                return None;
            }
            Some(&*(p as *const AtomicU64))
        }
    }

    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    fn map_wipe_page() -> Option<&'static AtomicU64> {
        None
    }
}
