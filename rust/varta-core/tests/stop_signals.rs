//! Stop-signal latch (`--signal-handler-mode`). Its own test binary: signal
//! dispositions are process-wide. One test function, so nothing runs in
//! parallel with it.
use varta_core::observer::signals::{
    clear_stop_signal, install_stop_handlers, stop_signal, HandlerMode,
};

fn raise_and_read(sig: libc::c_int) -> Option<i32> {
    clear_stop_signal();
    // SAFETY: raise delivers to this thread; the handler only stores an atomic.
    assert_eq!(unsafe { libc::raise(sig) }, 0);
    stop_signal()
}

#[test]
fn both_modes_latch_the_signal_and_survive_a_restartable_syscall() {
    assert_eq!(HandlerMode::from_name("direct"), Some(HandlerMode::Direct));
    assert_eq!(HandlerMode::from_name("libc"), Some(HandlerMode::Libc));
    assert_eq!(HandlerMode::from_name("disabled"), None);
    for mode in [HandlerMode::Direct, HandlerMode::Libc] {
        install_stop_handlers(mode, &[libc::SIGUSR2, libc::SIGWINCH]).unwrap();
        assert_eq!(
            raise_and_read(libc::SIGUSR2),
            Some(libc::SIGUSR2),
            "{mode:?}"
        );
        assert_eq!(
            raise_and_read(libc::SIGWINCH),
            Some(libc::SIGWINCH),
            "{mode:?}"
        );
        clear_stop_signal();
        assert_eq!(stop_signal(), None);
        // The handler returned normally (sigreturn worked) and the process
        // keeps running: a syscall after the handler still succeeds.
        assert!(std::fs::metadata("/").is_ok());
    }
    // The self-test left SIGUSR1 as it was (default: terminate), i.e. it did
    // not leave its counting handler behind.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: reading the current action into a valid struct.
    assert_eq!(
        unsafe { libc::sigaction(libc::SIGUSR1, std::ptr::null(), &mut old) },
        0
    );
    assert_eq!(old.sa_sigaction, libc::SIG_DFL);
}
