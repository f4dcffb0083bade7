//! [`ForkSafeMutex`]: the lock the Python binding puts around an
//! [`crate::agent::Agent`] so many threads can share one agent (held from
//! nonce choice to commit, so wire order equals nonce order) and a forked
//! child never deadlocks on a lock another thread held at fork time
//! (`docs/agent.md#fork-safety`).

use crate::fork::{self, incarnation};
use std::cell::UnsafeCell;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, Ordering};

/// A mutex that a forked child can always take.
///
/// The lock word holds a tag of the process that locked it (0 = free): its
/// [`incarnation`] token, or `fork_epoch + 1` where tokens are unavailable.
/// The tag differs in every process of a lineage, so a word written with
/// another tag was left behind by a thread of an ancestor that does not exist
/// in this process: the lock is taken over instead of deadlocking. The data it guarded may have
/// been mid-update in the ancestor; the agent's fork check (pid + epoch
/// changed) resets the session and rebuilds the transport on the first beat,
/// which is exactly the state a torn update could have touched.
///
/// Uncontended lock/unlock is one CAS and one store. Contention only happens
/// when the holder runs Python code (custom transports) or on free-threaded
/// builds; waiters spin briefly, then yield, then sleep 50 µs at a time.
pub struct ForkSafeMutex<T> {
    word: AtomicU64,
    data: UnsafeCell<T>,
}

// SAFETY: access to `data` is serialised by `word` exactly like a mutex.
unsafe impl<T: Send> Send for ForkSafeMutex<T> {}
unsafe impl<T: Send> Sync for ForkSafeMutex<T> {}

impl<T> ForkSafeMutex<T> {
    pub fn new(value: T) -> Self {
        // Fork tracking must be live for stale-lock detection to work.
        let _ = fork::register();
        incarnation::init();
        ForkSafeMutex {
            word: AtomicU64::new(0),
            data: UnsafeCell::new(value),
        }
    }

    /// Differs in every process of a lineage: the incarnation token where
    /// available (catches every fork), else the fork epoch + 1 (catches forks
    /// that run `pthread_atfork` handlers). Never 0.
    #[inline]
    fn tag() -> u64 {
        match incarnation::current() {
            Some(token) => token,
            None => fork::current().wrapping_add(1).max(1),
        }
    }

    /// Take the lock if it is free or was left behind by an ancestor process.
    #[inline]
    pub fn try_lock(&self) -> Option<ForkSafeGuard<'_, T>> {
        let tag = Self::tag();
        match self
            .word
            .compare_exchange(0, tag, Ordering::Acquire, Ordering::Relaxed)
        {
            Ok(_) => Some(ForkSafeGuard { lock: self }),
            Err(held) if held != tag => self
                .word
                .compare_exchange(held, tag, Ordering::Acquire, Ordering::Relaxed)
                .ok()
                .map(|_| ForkSafeGuard { lock: self }),
            Err(_) => None,
        }
    }

    /// Block until the lock is ours.
    pub fn lock(&self) -> ForkSafeGuard<'_, T> {
        let mut spins = 0u32;
        loop {
            if let Some(g) = self.try_lock() {
                return g;
            }
            spins = spins.saturating_add(1);
            if spins < 64 {
                std::hint::spin_loop();
            } else if spins < 128 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(std::time::Duration::from_micros(50));
            }
        }
    }

    /// Exclusive access without locking (we hold `&mut`).
    pub fn get_mut(&mut self) -> &mut T {
        self.data.get_mut()
    }

    pub fn into_inner(self) -> T {
        self.data.into_inner()
    }
}

/// Holds a [`ForkSafeMutex`]; unlocks on drop.
pub struct ForkSafeGuard<'a, T> {
    lock: &'a ForkSafeMutex<T>,
}

impl<T> Deref for ForkSafeGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard proves exclusive access.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T> DerefMut for ForkSafeGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard proves exclusive access.
        unsafe { &mut *self.lock.data.get() }
    }
}

impl<T> Drop for ForkSafeGuard<'_, T> {
    fn drop(&mut self) {
        self.lock.word.store(0, Ordering::Release);
    }
}
