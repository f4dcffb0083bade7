//! The daemon's stop signals (`docs/observer.md#signals-and-shutdown`, `--signal-handler-mode`):
//! SIGINT/SIGTERM set a process-wide latch that the poll loop reads.
//!
//! * `direct` (Linux x86_64/aarch64): the handler is installed with the raw
//!   `rt_sigaction` syscall, read back from the kernel and checked, and a
//!   SIGUSR1 self-test proves a handler installed this way actually runs.
//!   It does not depend on the C library's `sigaction` wrapper.
//! * `libc`: `sigaction(3)`. Also used for `direct` on other platforms.
//!
//! The handler only stores the signal number (async-signal-safe). A signal
//! interrupts whichever thread it is delivered to; `Observer.poll` checks
//! the latch between its ≤ 50 ms wait slices, so the loop sees it promptly.

use std::io;
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};

static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);
static SELF_TEST_RUNS: AtomicU32 = AtomicU32::new(0);

extern "C" fn on_stop(sig: libc::c_int) {
    STOP_SIGNAL.store(sig, Ordering::SeqCst);
}

extern "C" fn on_self_test(_sig: libc::c_int) {
    SELF_TEST_RUNS.fetch_add(1, Ordering::SeqCst);
}

/// How handlers are installed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandlerMode {
    Direct,
    Libc,
}

impl HandlerMode {
    /// `"direct"` / `"libc"`.
    pub fn from_name(name: &str) -> Option<HandlerMode> {
        match name {
            "direct" => Some(HandlerMode::Direct),
            "libc" => Some(HandlerMode::Libc),
            _ => None,
        }
    }
}

/// The stop signal received since the last [`clear_stop_signal`], if any.
pub fn stop_signal() -> Option<i32> {
    match STOP_SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        sig => Some(sig),
    }
}

pub fn clear_stop_signal() {
    STOP_SIGNAL.store(0, Ordering::SeqCst);
}

/// Install the latch handler for each of `signals` (SA_RESTART). `Direct`
/// first runs the SIGUSR1 self-test; an error names what failed.
pub fn install_stop_handlers(mode: HandlerMode, signals: &[libc::c_int]) -> io::Result<()> {
    match mode {
        HandlerMode::Direct if raw::SUPPORTED => {
            raw::self_test()?;
            for &sig in signals {
                raw::install(sig, on_stop as *const () as usize)
                    .map_err(|e| annotate(e, &format!("rt_sigaction({sig})")))?;
            }
            Ok(())
        }
        _ => {
            for &sig in signals {
                libc_install(sig, on_stop as *const () as usize)
                    .map_err(|e| annotate(e, &format!("sigaction({sig})")))?;
            }
            Ok(())
        }
    }
}

fn annotate(e: io::Error, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

fn libc_install(sig: libc::c_int, handler: usize) -> io::Result<()> {
    // SAFETY: a zeroed sigaction is valid; the handler is an `extern "C"
    // fn(c_int)` that only touches atomics.
    unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = handler;
        act.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut act.sa_mask);
        if libc::sigaction(sig, &act, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
mod raw {
    use super::{on_self_test, SELF_TEST_RUNS};
    use std::io;
    use std::sync::atomic::Ordering;

    pub const SUPPORTED: bool = true;
    const SA_RESTART: u64 = 0x1000_0000;
    /// x86_64 needs a userspace `rt_sigreturn` trampoline (the C library
    /// normally supplies it); aarch64 returns through the vDSO.
    #[cfg(target_arch = "x86_64")]
    const SA_RESTORER: u64 = 0x0400_0000;
    /// The kernel's sigset is 64 bits on these architectures.
    const KERNEL_SIGSET_BYTES: usize = 8;

    /// `struct kernel_sigaction` (not the C library's `struct sigaction`).
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct KernelSigaction {
        handler: usize,
        flags: u64,
        restorer: usize,
        mask: u64,
    }

    #[cfg(target_arch = "x86_64")]
    core::arch::global_asm!(
        ".pushsection .text.varta_core_rt_sigreturn,\"ax\",@progbits",
        ".p2align 4",
        ".hidden varta_core_rt_sigreturn",
        ".globl varta_core_rt_sigreturn",
        "varta_core_rt_sigreturn:",
        "mov rax, 15", // __NR_rt_sigreturn
        "syscall",
        "ud2",
        ".popsection",
    );

    #[cfg(target_arch = "x86_64")]
    extern "C" {
        fn varta_core_rt_sigreturn();
    }

    fn action(handler: usize) -> KernelSigaction {
        #[cfg(target_arch = "x86_64")]
        return KernelSigaction {
            handler,
            flags: SA_RESTART | SA_RESTORER,
            restorer: varta_core_rt_sigreturn as *const () as usize,
            mask: 0,
        };
        #[cfg(not(target_arch = "x86_64"))]
        KernelSigaction {
            handler,
            flags: SA_RESTART,
            restorer: 0,
            mask: 0,
        }
    }

    fn rt_sigaction(
        sig: libc::c_int,
        new: Option<&KernelSigaction>,
        old: Option<&mut KernelSigaction>,
    ) -> io::Result<()> {
        let new = new.map_or(std::ptr::null(), |a| a as *const KernelSigaction);
        let old = old.map_or(std::ptr::null_mut(), |a| a as *mut KernelSigaction);
        // SAFETY: both pointers are null or point at live, correctly laid
        // out kernel_sigaction structs; the size argument matches.
        let rc =
            unsafe { libc::syscall(libc::SYS_rt_sigaction, sig, new, old, KERNEL_SIGSET_BYTES) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Install `handler` for `sig`, then read the action back and check it.
    pub fn install(sig: libc::c_int, handler: usize) -> io::Result<()> {
        let want = action(handler);
        rt_sigaction(sig, Some(&want), None)?;
        let mut got = KernelSigaction::default();
        rt_sigaction(sig, None, Some(&mut got))?;
        if got.handler != want.handler || got.flags & SA_RESTART == 0 {
            return Err(io::Error::other("handler did not read back"));
        }
        Ok(())
    }

    /// Install a counting handler for SIGUSR1, raise it on this thread, check
    /// it ran, then put the previous SIGUSR1 action back.
    pub fn self_test() -> io::Result<()> {
        let mut prev = KernelSigaction::default();
        rt_sigaction(libc::SIGUSR1, None, Some(&mut prev))?;
        let before = SELF_TEST_RUNS.load(Ordering::SeqCst);
        let result = install(libc::SIGUSR1, on_self_test as *const () as usize).and_then(|()| {
            // SAFETY: raise is safe to call; the handler only bumps an atomic.
            if unsafe { libc::raise(libc::SIGUSR1) } != 0 {
                return Err(io::Error::last_os_error());
            }
            if SELF_TEST_RUNS.load(Ordering::SeqCst) == before {
                return Err(io::Error::other(
                    "handler did not run (is SIGUSR1 blocked on this thread?)",
                ));
            }
            Ok(())
        });
        rt_sigaction(libc::SIGUSR1, Some(&prev), None)?;
        result.map_err(|e| super::annotate(e, "SIGUSR1 self-test"))
    }
}

#[cfg(not(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
)))]
mod raw {
    use std::io;
    pub const SUPPORTED: bool = false;
    pub fn install(_sig: libc::c_int, _handler: usize) -> io::Result<()> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
    pub fn self_test() -> io::Result<()> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
}
