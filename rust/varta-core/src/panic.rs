//! Crash-terminal frames (`docs/agent.md#crash-hooks`, `docs/agent.md#beyond-the-upstream-client` gaps 2–3).
//!
//! A dying process sends one terminal frame — `Critical`, `pid = getpid()` at
//! fire time, `nonce = NONCE_TERMINAL`, `payload = 0`, timestamp claimed from
//! the process-wide mark in [`crate::terminal`] — through a socket that was
//! created, connected and set non-blocking when the hook was installed.
//!
//! | piece | job |
//! |---|---|
//! | [`Emitter`] | one pre-bound socket plus a [`Wire`] that turns the frame into wire bytes |
//! | [`install`] / [`fire`] | the process-global active emitter (re-install replaces it and closes the old socket) |
//! | [`install_fatal_signal_handlers`] | `sigaction` handlers for SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT |
//!
//! # Async-signal safety
//!
//! [`Emitter::fire`] and [`fire`] do only atomics, `clock_gettime` (via
//! `Instant`), `getpid`, pure computation on stack buffers and one `send(2)`.
//! No allocation, no locks, no `std::io` buffering. They may be called from a
//! signal handler, from any thread, and in a forked child.
//!
//! # Secure variants
//!
//! [`Wire::Sealed`] takes a [`TerminalSealer`]: the secure-transport code
//! implements it (claim its counter, derive the panic IV prefix, seal in
//! place into the fixed output buffer) and builds an emitter with
//! [`Emitter::new`]. Nothing else here changes.

use crate::frame::{Frame, Status, FRAME_LEN, NONCE_TERMINAL};
use crate::{fork, terminal};
use std::io;
use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::ptr;
use std::sync::atomic::{AtomicPtr, AtomicU8, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Largest wire form any emitter produces (master-key secure frame: 64 bytes).
pub const MAX_WIRE_LEN: usize = 64;

/// Turns a terminal [`Frame`] into sealed wire bytes. Implemented by the
/// secure transport.
///
/// Contract: `seal` runs inside signal handlers and crashing threads, so it
/// must be async-signal-safe — no allocation, no locks, no entropy reads,
/// no panics. Return the number of bytes written to `out`, or `None` to drop
/// the frame (e.g. the per-install counter is exhausted).
pub trait TerminalSealer: Send + Sync {
    fn seal(&self, frame: &Frame, out: &mut [u8; MAX_WIRE_LEN]) -> Option<usize>;
}

/// How an emitter puts the 32-byte terminal frame on the wire.
pub enum Wire {
    /// The bare 32-byte frame (Unix datagram, plaintext UDP).
    Plain,
    /// An AEAD-wrapped frame (secure UDP, 60 or 64 bytes).
    Sealed(Box<dyn TerminalSealer>),
}

impl Wire {
    /// Build the wire bytes for `frame` into `out`; `None` drops the frame.
    #[inline]
    pub fn build(&self, frame: &Frame, out: &mut [u8; MAX_WIRE_LEN]) -> Option<usize> {
        match self {
            Wire::Plain => {
                let mut plain = [0u8; FRAME_LEN];
                frame.encode_into(&mut plain);
                out[..FRAME_LEN].copy_from_slice(&plain);
                Some(FRAME_LEN)
            }
            Wire::Sealed(sealer) => sealer.seal(frame, out).filter(|&n| n <= MAX_WIRE_LEN),
        }
    }
}

impl std::fmt::Debug for Wire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Wire::Plain => "Plain",
            Wire::Sealed(_) => "Sealed",
        })
    }
}

/// What one firing did. Hooks ignore it (a crashing process has nobody to
/// tell); tests and `varta.panic.fire()` report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fire {
    /// One datagram went out.
    Sent,
    /// No emitter is installed.
    NoEmitter,
    /// Dropped before sending: the terminal timestamp mark (or a secure
    /// sealer's counter) is exhausted.
    Exhausted,
    /// Dropped before sending: the current pid is 0 or 1, which the wire
    /// reserves (a container's init process cannot be an agent).
    InvalidPid,
    /// `send(2)` failed with this errno (observer gone, queue full, …).
    SendFailed(i32),
}

/// A pre-bound crash-frame sender: a connected, non-blocking datagram socket
/// and the [`Wire`] form it sends.
#[derive(Debug)]
pub struct Emitter {
    sock: OwnedFd,
    wire: Wire,
}

#[cfg(any(target_os = "linux", target_os = "android"))]
const SEND_FLAGS: libc::c_int = libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const SEND_FLAGS: libc::c_int = libc::MSG_DONTWAIT;

impl Emitter {
    /// Wrap an already connected datagram socket. The socket is switched to
    /// non-blocking mode here (sends use `MSG_DONTWAIT` as well).
    pub fn new(sock: OwnedFd, wire: Wire) -> io::Result<Emitter> {
        set_nonblocking(sock.as_raw_fd())?;
        // Initialise the terminal clock origin and warm the CRC's CPU-feature
        // detection now, so the first firing (maybe in a signal handler)
        // takes no first-use path.
        terminal::init_origin();
        let _ = Frame {
            status: Status::Critical,
            pid: 2,
            timestamp: 1,
            nonce: NONCE_TERMINAL,
            payload: 0,
        }
        .encode();
        Ok(Emitter { sock, wire })
    }

    /// A plaintext emitter connected to the Unix datagram socket at `path`.
    pub fn connect_uds(path: impl AsRef<Path>) -> io::Result<Emitter> {
        let sock = UnixDatagram::unbound()?;
        sock.connect(path)?;
        Emitter::new(sock.into(), Wire::Plain)
    }

    /// A plaintext emitter connected to a UDP address (bound to an ephemeral
    /// port of the matching family).
    pub fn connect_udp(addr: SocketAddr) -> io::Result<Emitter> {
        Emitter::new(udp_connected(addr)?.into(), Wire::Plain)
    }

    /// Resolve `addr` (at install time, never in the hook) and connect to the
    /// first address that accepts a UDP `connect`.
    pub fn connect_udp_resolve<A: ToSocketAddrs>(addr: A) -> io::Result<Emitter> {
        Emitter::new(udp_connected_resolve(addr)?.into(), Wire::Plain)
    }

    /// The socket's descriptor (for tests and diagnostics).
    pub fn raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    pub fn wire(&self) -> &Wire {
        &self.wire
    }

    /// Send one terminal frame with payload 0 (a crash, as upstream sends
    /// it). Allocation-free and async-signal-safe; every error is reported,
    /// never raised.
    pub fn fire(&self) -> Fire {
        self.fire_with(0)
    }

    /// [`Emitter::fire`] with `payload` as the terminal cause
    /// ([`crate::cause::TerminalCause`]).
    pub fn fire_with(&self, payload: u32) -> Fire {
        let pid = fork::getpid();
        if pid <= 1 {
            return Fire::InvalidPid;
        }
        let Some(timestamp) = terminal::claim() else {
            return Fire::Exhausted;
        };
        let frame = Frame {
            status: Status::Critical,
            pid,
            timestamp,
            nonce: NONCE_TERMINAL,
            payload,
        };
        let mut buf = [0u8; MAX_WIRE_LEN];
        let Some(len) = self.wire.build(&frame, &mut buf) else {
            return Fire::Exhausted;
        };
        // SAFETY: `buf[..len]` is initialised stack memory; the fd is owned
        // by `self` and stays open while `self` is borrowed.
        let rc = unsafe { libc::send(self.sock.as_raw_fd(), buf.as_ptr().cast(), len, SEND_FLAGS) };
        if rc < 0 {
            Fire::SendFailed(nix::errno::Errno::last_raw())
        } else {
            Fire::Sent
        }
    }
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: plain fcntl on a descriptor we own.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    if flags & libc::O_NONBLOCK == 0 {
        // SAFETY: as above.
        if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn udp_connected(addr: SocketAddr) -> io::Result<UdpSocket> {
    let local: SocketAddr = if addr.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(local)?;
    sock.connect(addr)?;
    Ok(sock)
}

/// Resolve and connect a UDP socket: the first address that connects wins.
pub fn udp_connected_resolve<A: ToSocketAddrs>(addr: A) -> io::Result<UdpSocket> {
    let mut last = None;
    for a in addr.to_socket_addrs()? {
        match udp_connected(a) {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, "address resolved to nothing")
    }))
}

// ---------------------------------------------------------------------------
// The process-global active emitter.
//
// `fire()` announces itself in READERS *before* loading ACTIVE; `install()`
// swaps ACTIVE and then waits for READERS to reach zero before it closes the
// old socket. A firing therefore never sends on a closed (or reused) fd.
// Readers are a handful of instructions plus one non-blocking send, so the
// wait is short; if a reader is stuck (a thread stopped by a debugger) the
// old emitter is leaked rather than closed under it.

static ACTIVE: AtomicPtr<Emitter> = AtomicPtr::new(ptr::null_mut());
static READERS: AtomicUsize = AtomicUsize::new(0);
static ATFORK: OnceLock<Result<(), i32>> = OnceLock::new();

/// How long `install` waits for in-flight firings before leaking the old
/// emitter instead of closing it.
const RETIRE_WAIT: Duration = Duration::from_millis(200);

extern "C" fn reset_in_child() {
    // Only the forking thread survives a fork, and it was not inside
    // `fire()` or an install; state held by vanished threads must not block
    // the child. (A half-finished signal install is redone: dispositions
    // already ours are recognised and never recorded as "previous".)
    READERS.store(0, Ordering::SeqCst);
    let _ = SIGNAL_STATE.compare_exchange(SIG_BUSY, SIG_NONE, Ordering::SeqCst, Ordering::SeqCst);
}

fn register_atfork() -> io::Result<()> {
    let r = ATFORK.get_or_init(|| {
        // SAFETY: the handler only stores to an atomic.
        let rc = unsafe { libc::pthread_atfork(None, None, Some(reset_in_child)) };
        if rc == 0 {
            Ok(())
        } else {
            Err(rc)
        }
    });
    r.map_err(io::Error::from_raw_os_error)
}

/// Make `emitter` the process's active crash emitter. A previously active
/// emitter is replaced and its socket closed once no firing can still be
/// using it. Hooks and signal handlers fire whichever emitter is active, so
/// re-installing never makes them emit twice.
pub fn install(emitter: Emitter) -> io::Result<()> {
    register_atfork()?;
    let new = Box::into_raw(Box::new(emitter));
    let old = ACTIVE.swap(new, Ordering::SeqCst);
    retire(old);
    Ok(())
}

/// Remove the active emitter (closing its socket). Hooks stay installed and
/// report [`Fire::NoEmitter`] until the next [`install`].
pub fn uninstall() {
    retire(ACTIVE.swap(ptr::null_mut(), Ordering::SeqCst));
}

fn retire(old: *mut Emitter) {
    if old.is_null() {
        return;
    }
    let deadline = Instant::now() + RETIRE_WAIT;
    while READERS.load(Ordering::SeqCst) != 0 {
        if Instant::now() >= deadline {
            return; // leak rather than close a socket a reader may hold
        }
        std::thread::yield_now();
    }
    // SAFETY: `old` came from `Box::into_raw` in `install`, was swapped out
    // of ACTIVE (so no new reader can load it), and every reader that loaded
    // it before the swap has finished (READERS reached zero afterwards).
    drop(unsafe { Box::from_raw(old) });
}

/// True while an emitter is installed.
pub fn is_installed() -> bool {
    !ACTIVE.load(Ordering::SeqCst).is_null()
}

/// Fire the active emitter (payload 0: a crash). Allocation-free and
/// async-signal-safe.
pub fn fire() -> Fire {
    fire_with(0)
}

/// Fire the active emitter with `payload` as the terminal cause (e.g.
/// [`crate::cause::signal_payload`]).
pub fn fire_with(payload: u32) -> Fire {
    READERS.fetch_add(1, Ordering::SeqCst);
    let p = ACTIVE.load(Ordering::SeqCst);
    let r = if p.is_null() {
        Fire::NoEmitter
    } else {
        // SAFETY: see `retire` — `p` cannot be freed while READERS counts us.
        unsafe { (*p).fire_with(payload) }
    };
    READERS.fetch_sub(1, Ordering::SeqCst);
    r
}

// ---------------------------------------------------------------------------
// Fatal-signal handlers.
//
// Order of events when a fatal signal arrives and our handler is the one the
// kernel calls:
//   1. send the terminal frame through the active emitter;
//   2. if the handler that was installed before ours is a function (e.g.
//      Python's faulthandler, enabled earlier), call it directly so it can do
//      its job (dump a traceback);
//   3. set the disposition to SIG_DFL and re-raise the signal. The signal is
//      blocked while we run (no SA_NODEFER), so it is delivered the moment
//      the handler returns and the process dies by that signal, whatever the
//      previous handler did.
// If a handler installed *after* ours runs first (faulthandler enabled later
// restores its predecessor — us — and re-raises), we run second, and step 3
// still ends the process by the original signal.

/// The signals whose default action kills the process and that a crashing
/// program raises: handled natively, never in Python.
pub const FATAL_SIGNALS: [libc::c_int; 5] = [
    libc::SIGSEGV,
    libc::SIGBUS,
    libc::SIGILL,
    libc::SIGFPE,
    libc::SIGABRT,
];

/// The disposition each fatal signal had before ours, recorded before ours
/// went in (so a handler never sees an unset slot).
static PREV: [OnceLock<libc::sigaction>; 5] = [const { OnceLock::new() }; 5];
/// Install state of the fatal-signal handlers: [`SIG_NONE`], [`SIG_BUSY`]
/// (one thread is installing), [`SIG_DONE`]. An atomic, not a mutex, so a
/// forked child never inherits a held lock (the at-fork handler resets
/// `SIG_BUSY`).
static SIGNAL_STATE: AtomicU8 = AtomicU8::new(SIG_NONE);
const SIG_NONE: u8 = 0;
const SIG_BUSY: u8 = 1;
const SIG_DONE: u8 = 2;

/// Size of the alternate signal stack given to the installing thread when it
/// has none (so a stack overflow can still run the handler).
const ALT_STACK_LEN: usize = 64 * 1024;

extern "C" fn on_fatal_signal(
    sig: libc::c_int,
    info: *mut libc::siginfo_t,
    ctx: *mut libc::c_void,
) {
    let saved_errno = nix::errno::Errno::last_raw();
    let _ = fire_with(crate::cause::signal_payload(sig as u8));
    if let Some(i) = FATAL_SIGNALS.iter().position(|&s| s == sig) {
        if let Some(prev) = PREV[i].get() {
            chain(prev, sig, info, ctx);
        }
    }
    // SAFETY: sigaction/raise are async-signal-safe; `dfl` is a fully
    // initialised sigaction.
    unsafe {
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        libc::sigemptyset(&mut dfl.sa_mask);
        libc::sigaction(sig, &dfl, ptr::null_mut());
        libc::raise(sig);
    }
    nix::errno::Errno::set_raw(saved_errno);
}

fn chain(
    prev: &libc::sigaction,
    sig: libc::c_int,
    info: *mut libc::siginfo_t,
    ctx: *mut libc::c_void,
) {
    let h = prev.sa_sigaction;
    if h == libc::SIG_DFL || h == libc::SIG_IGN || h == on_fatal_signal as *const () as usize {
        return;
    }
    // SAFETY: `h` is the handler someone installed for this signal, with the
    // calling convention its SA_SIGINFO flag declares.
    unsafe {
        if prev.sa_flags & libc::SA_SIGINFO != 0 {
            let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                std::mem::transmute(h);
            f(sig, info, ctx);
        } else {
            let f: extern "C" fn(libc::c_int) = std::mem::transmute(h);
            f(sig);
        }
    }
}

fn ensure_alt_stack() {
    // SAFETY: querying and setting this thread's alternate stack with
    // memory we map and never unmap (the kernel may use it at any time).
    unsafe {
        let mut cur: libc::stack_t = std::mem::zeroed();
        if libc::sigaltstack(ptr::null(), &mut cur) != 0 || cur.ss_flags & libc::SS_DISABLE == 0 {
            return; // unknown, or the thread already has one (e.g. faulthandler's)
        }
        let len = ALT_STACK_LEN.max(libc::SIGSTKSZ);
        let mem = libc::mmap(
            ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if mem == libc::MAP_FAILED {
            return;
        }
        let st = libc::stack_t {
            ss_sp: mem,
            ss_flags: 0,
            ss_size: len,
        };
        if libc::sigaltstack(&st, ptr::null_mut()) != 0 {
            libc::munmap(mem, len);
        }
    }
}

/// Install the native handlers for [`FATAL_SIGNALS`], once per process
/// (later calls are no-ops, so the chain never contains us twice). They fire
/// whichever emitter is active at the time of the signal. The installing
/// thread gets an alternate signal stack if it has none.
pub fn install_fatal_signal_handlers() -> io::Result<()> {
    register_atfork()?;
    loop {
        match SIGNAL_STATE.compare_exchange(SIG_NONE, SIG_BUSY, Ordering::SeqCst, Ordering::SeqCst)
        {
            Ok(_) => break,
            Err(SIG_DONE) => return Ok(()),
            Err(_) => std::thread::yield_now(), // another thread is installing
        }
    }
    terminal::init_origin();
    ensure_alt_stack();
    for (i, &sig) in FATAL_SIGNALS.iter().enumerate() {
        // SAFETY: querying then setting a disposition with initialised structs.
        let r = unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, ptr::null(), &mut old) != 0 {
                Err(io::Error::last_os_error())
            } else {
                // A retry (after a failed or fork-interrupted install) keeps
                // the first recorded value; our own handler is never "previous".
                if old.sa_sigaction != on_fatal_signal as *const () as usize {
                    let _ = PREV[i].set(old);
                }
                let mut new: libc::sigaction = std::mem::zeroed();
                new.sa_sigaction = on_fatal_signal as *const () as usize;
                new.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
                libc::sigemptyset(&mut new.sa_mask);
                if libc::sigaction(sig, &new, ptr::null_mut()) != 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(())
                }
            }
        };
        if let Err(e) = r {
            // Roll back what we installed so far: all or nothing.
            for (j, &s) in FATAL_SIGNALS.iter().enumerate().take(i) {
                if let Some(prev) = PREV[j].get() {
                    // SAFETY: restoring a recorded disposition.
                    unsafe { libc::sigaction(s, prev, ptr::null_mut()) };
                }
            }
            SIGNAL_STATE.store(SIG_NONE, Ordering::SeqCst);
            return Err(e);
        }
    }
    SIGNAL_STATE.store(SIG_DONE, Ordering::SeqCst);
    Ok(())
}

/// True once [`install_fatal_signal_handlers`] succeeded in this process
/// (inherited by forked children).
pub fn fatal_signal_handlers_installed() -> bool {
    SIGNAL_STATE.load(Ordering::SeqCst) == SIG_DONE
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;
    use std::sync::atomic::AtomicU32;

    fn temp_sock_path(tag: &str) -> std::path::PathBuf {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        std::env::temp_dir().join(format!("varta-panic-{}-{tag}-{n}.sock", std::process::id()))
    }

    struct Receiver {
        sock: UnixDatagram,
        path: std::path::PathBuf,
    }

    impl Receiver {
        fn new(tag: &str) -> Receiver {
            let path = temp_sock_path(tag);
            let _ = std::fs::remove_file(&path);
            let sock = UnixDatagram::bind(&path).unwrap();
            sock.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            Receiver { sock, path }
        }

        fn recv_frame(&self) -> Frame {
            let mut buf = [0u8; 128];
            let n = self.sock.recv(&mut buf).unwrap();
            assert_eq!(n, FRAME_LEN);
            Frame::decode_slice(&buf[..n]).unwrap().unwrap()
        }

        /// Everything queued right now (non-blocking drain).
        fn drain(&self) -> Vec<Vec<u8>> {
            self.sock.set_nonblocking(true).unwrap();
            let mut out = Vec::new();
            let mut buf = [0u8; 128];
            while let Ok(n) = self.sock.recv(&mut buf) {
                out.push(buf[..n].to_vec());
            }
            self.sock.set_nonblocking(false).unwrap();
            out
        }
    }

    impl Drop for Receiver {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    fn assert_terminal(f: &Frame, pid: u32) {
        assert_eq!(f.status, Status::Critical);
        assert_eq!(f.nonce, NONCE_TERMINAL);
        assert_eq!(f.payload, 0);
        assert_eq!(f.pid, pid);
        assert!(f.timestamp >= 1);
    }

    #[test]
    fn emitter_fires_two_frames_with_increasing_timestamps() {
        let rx = Receiver::new("two");
        let e = Emitter::connect_uds(&rx.path).unwrap();
        assert_eq!(e.fire(), Fire::Sent);
        assert_eq!(e.fire(), Fire::Sent);
        let a = rx.recv_frame();
        let b = rx.recv_frame();
        assert_terminal(&a, std::process::id());
        assert_terminal(&b, std::process::id());
        assert!(b.timestamp > a.timestamp, "{a:?} then {b:?}");
        assert!(rx.drain().is_empty());
    }

    #[test]
    fn emitter_socket_is_nonblocking_and_errors_are_reported() {
        let (a, b) = UnixDatagram::pair().unwrap();
        let e = Emitter::new(a.into(), Wire::Plain).unwrap();
        // SAFETY: reading flags of an fd owned by `e`.
        let flags = unsafe { libc::fcntl(e.raw_fd(), libc::F_GETFL) };
        assert_ne!(flags & libc::O_NONBLOCK, 0);
        drop(b);
        assert!(matches!(e.fire(), Fire::SendFailed(_)));
    }

    #[test]
    fn emitter_never_blocks_on_a_full_queue() {
        let (a, _b) = UnixDatagram::pair().unwrap();
        let e = Emitter::new(a.into(), Wire::Plain).unwrap();
        let mut last = Fire::Sent;
        for _ in 0..100_000 {
            last = e.fire();
            if last != Fire::Sent {
                break;
            }
        }
        assert_eq!(last, Fire::SendFailed(libc::EAGAIN));
    }

    #[test]
    fn missing_path_fails_at_connect() {
        let err = Emitter::connect_uds(temp_sock_path("missing")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn udp_emitter_sends_a_plain_frame() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let e = Emitter::connect_udp_resolve(rx.local_addr().unwrap()).unwrap();
        assert_eq!(e.fire(), Fire::Sent);
        let mut buf = [0u8; 128];
        let n = rx.recv(&mut buf).unwrap();
        let f = Frame::decode_slice(&buf[..n]).unwrap().unwrap();
        assert_terminal(&f, std::process::id());
    }

    struct Fixed(u8);
    impl TerminalSealer for Fixed {
        fn seal(&self, frame: &Frame, out: &mut [u8; MAX_WIRE_LEN]) -> Option<usize> {
            if self.0 == 0 {
                return None;
            }
            let mut plain = [0u8; FRAME_LEN];
            frame.encode_into(&mut plain);
            out[..FRAME_LEN].copy_from_slice(&plain);
            out[FRAME_LEN..60].fill(self.0);
            Some(60)
        }
    }

    #[test]
    fn sealed_wire_sends_what_the_sealer_builds() {
        let (a, b) = UnixDatagram::pair().unwrap();
        let e = Emitter::new(a.into(), Wire::Sealed(Box::new(Fixed(0xAB)))).unwrap();
        assert_eq!(e.fire(), Fire::Sent);
        let mut buf = [0u8; 128];
        let n = b.recv(&mut buf).unwrap();
        assert_eq!(n, 60);
        assert!(buf[32..60].iter().all(|&x| x == 0xAB));
        let (a, _b) = UnixDatagram::pair().unwrap();
        let dropping = Emitter::new(a.into(), Wire::Sealed(Box::new(Fixed(0)))).unwrap();
        assert_eq!(dropping.fire(), Fire::Exhausted);
    }

    /// Everything touching the process-global emitter and signal handlers
    /// lives in this one test so parallel tests cannot interfere.
    #[test]
    fn global_emitter_replace_and_fatal_signals() {
        assert_eq!(fire(), Fire::NoEmitter);
        assert!(!is_installed());

        let first = Receiver::new("first");
        let second = Receiver::new("second");
        install(Emitter::connect_uds(&first.path).unwrap()).unwrap();
        assert_eq!(fire(), Fire::Sent);
        let a = first.recv_frame();

        // Re-install: the new socket gets the frame, the old one nothing.
        install(Emitter::connect_uds(&second.path).unwrap()).unwrap();
        assert_eq!(fire(), Fire::Sent);
        let b = second.recv_frame();
        assert!(b.timestamp > a.timestamp);
        assert!(first.drain().is_empty());

        // Fatal signals: a forked child raises; the frame carries its pid and
        // it dies by that very signal. The child only runs async-signal-safe
        // code (the handler, raise, _exit).
        install_fatal_signal_handlers().unwrap();
        install_fatal_signal_handlers().unwrap(); // idempotent
        assert!(fatal_signal_handlers_installed());
        for sig in [libc::SIGABRT, libc::SIGFPE, libc::SIGILL, libc::SIGBUS] {
            // SAFETY: the child calls only async-signal-safe functions.
            let child = unsafe { libc::fork() };
            assert!(child >= 0);
            if child == 0 {
                unsafe {
                    libc::raise(sig);
                    libc::_exit(99);
                }
            }
            let mut status = 0;
            // SAFETY: waiting for our own child.
            assert_eq!(unsafe { libc::waitpid(child, &mut status, 0) }, child);
            assert!(
                libc::WIFSIGNALED(status),
                "signal {sig}: status {status:#x}"
            );
            assert_eq!(libc::WTERMSIG(status), sig);
            let f = second.recv_frame();
            assert_eq!(
                f.payload,
                crate::cause::signal_payload(sig as u8),
                "the frame names the signal"
            );
            assert_terminal(&Frame { payload: 0, ..f }, child as u32);
            assert!(second.drain().is_empty(), "exactly one frame for {sig}");
        }

        uninstall();
        assert_eq!(fire(), Fire::NoEmitter);
        assert!(second.drain().is_empty());
    }
}
