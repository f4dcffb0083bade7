//! The heartbeat sender (`docs/agent.md#the-varta-object`, `docs/agent.md#threads-closing-and-allocation`; `docs/protocol.md#sender-rules`).
//!
//! [`Agent`] owns one [`Transport`] and one session: the committed nonce, the
//! session clock, fork detection and the auto-reconnect window.
//!
//! Fork detection compares the pid, the `pthread_atfork` epoch and (Linux) an
//! [`incarnation`] token kept in wipe-on-fork memory. The token changes in
//! every child, however it was forked, so while it is unchanged the pid is
//! known without a `getpid()` system call; without tokens the pid is read on
//! every beat. After connect,
//! [`Agent::beat`] performs no heap allocation: the frame is built in a fixed
//! scratch buffer, errors are `Copy` values, and the one-time wrap warning is
//! static text.
//!
//! `Agent` is `Send`, not `Sync` (`beat(&mut self)`). [`ForkSafeMutex`] is the
//! lock the Python binding puts around it so many threads can share one agent
//! (held from nonce choice to commit, so wire order equals nonce order) and a
//! forked child never deadlocks on a lock another thread held at fork time.

use crate::fork;
pub use crate::fork::incarnation;
use crate::frame::{Frame, Status, FRAME_LEN, NONCE_TERMINAL, TIMESTAMP_RESERVED};
pub use crate::sync::{ForkSafeGuard, ForkSafeMutex};
use crate::terminal;
use crate::transport::{DgramTransport, Endpoint, Transport};
use core::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

// ---------------------------------------------------------------------------
// Outcomes
// ---------------------------------------------------------------------------

/// Why a beat was dropped (`docs/agent.md#outcomes`). Transient: the next beat retries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DropReason {
    KernelQueueFull = 0,
    NoObserver = 1,
    PeerGone = 2,
    StorageFull = 3,
}

impl DropReason {
    pub const ALL: [DropReason; 4] = [
        DropReason::KernelQueueFull,
        DropReason::NoObserver,
        DropReason::PeerGone,
        DropReason::StorageFull,
    ];

    /// Display text, equal to the Python `DropReason` value.
    pub const fn as_str(self) -> &'static str {
        match self {
            DropReason::KernelQueueFull => "kernel queue full",
            DropReason::NoObserver => "no observer",
            DropReason::PeerGone => "peer gone",
            DropReason::StorageFull => "storage full",
        }
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What kind of failure a [`BeatError`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailKind {
    /// An OS error; `errno` carries the code.
    Os,
    /// Bad status, `Stall`, or a reserved current pid (0/1). Nothing was sent.
    InvalidInput,
    /// The kernel accepted a different number of bytes than one frame.
    WriteZero,
    /// The agent was closed.
    Closed,
    /// A non-OS error from a custom transport.
    Other,
}

impl FailKind {
    /// Synthetic-kind name (`"InvalidInput"`…); `None` for [`FailKind::Os`],
    /// whose name is the symbolic errno.
    pub const fn synthetic_name(self) -> Option<&'static str> {
        match self {
            FailKind::Os => None,
            FailKind::InvalidInput => Some("InvalidInput"),
            FailKind::WriteZero => Some("WriteZero"),
            FailKind::Closed => Some("Closed"),
            FailKind::Other => Some("Other"),
        }
    }
}

/// Why a beat failed: errno (0 = unknown/synthetic) plus a kind. `Copy`, no
/// allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BeatError {
    errno: i32,
    kind: FailKind,
}

impl BeatError {
    pub const INVALID_INPUT: BeatError = BeatError::synthetic(FailKind::InvalidInput);
    pub const WRITE_ZERO: BeatError = BeatError::synthetic(FailKind::WriteZero);
    pub const CLOSED: BeatError = BeatError::synthetic(FailKind::Closed);

    pub const fn synthetic(kind: FailKind) -> BeatError {
        BeatError { errno: 0, kind }
    }

    pub const fn os(errno: i32) -> BeatError {
        BeatError {
            errno,
            kind: FailKind::Os,
        }
    }

    /// From any I/O error: its raw errno when it has one, else `Other`.
    pub fn from_io(err: &io::Error) -> BeatError {
        match err.raw_os_error() {
            Some(code) => BeatError::os(code),
            None => BeatError::synthetic(FailKind::Other),
        }
    }

    pub const fn errno(&self) -> i32 {
        self.errno
    }

    pub const fn kind(&self) -> FailKind {
        self.kind
    }

    /// The closest `io::ErrorKind`.
    pub fn io_kind(&self) -> io::ErrorKind {
        match self.kind {
            FailKind::Os => io::Error::from_raw_os_error(self.errno).kind(),
            FailKind::InvalidInput => io::ErrorKind::InvalidInput,
            FailKind::WriteZero => io::ErrorKind::WriteZero,
            FailKind::Closed => io::ErrorKind::NotConnected,
            FailKind::Other => io::ErrorKind::Other,
        }
    }

    pub fn to_io_error(&self) -> io::Error {
        match self.kind {
            FailKind::Os => io::Error::from_raw_os_error(self.errno),
            _ => io::Error::from(self.io_kind()),
        }
    }
}

impl fmt::Display for BeatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind.synthetic_name() {
            Some(name) => write!(f, "send failed: {name} (errno={})", self.errno),
            None => write!(
                f,
                "send failed: {} (errno={})",
                io::Error::from_raw_os_error(self.errno),
                self.errno
            ),
        }
    }
}

/// Result of one beat: exactly one of sent, dropped, failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BeatOutcome {
    Sent,
    Dropped(DropReason),
    Failed(BeatError),
}

impl BeatOutcome {
    pub const fn is_sent(&self) -> bool {
        matches!(self, BeatOutcome::Sent)
    }
    pub const fn is_dropped(&self) -> bool {
        matches!(self, BeatOutcome::Dropped(_))
    }
    pub const fn is_failed(&self) -> bool {
        matches!(self, BeatOutcome::Failed(_))
    }
}

impl fmt::Display for BeatOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BeatOutcome::Sent => f.write_str("sent"),
            BeatOutcome::Dropped(r) => write!(f, "dropped: {r}"),
            BeatOutcome::Failed(e) => write!(f, "failed: {e}"),
        }
    }
}

/// Map a send error to an outcome (`docs/agent.md#outcomes`, first match wins). Uses the
/// platform's errno constants. Errors without an errno (custom transports)
/// are matched on their `io::ErrorKind` in the same order.
pub fn classify_send_error(err: &io::Error) -> BeatOutcome {
    use BeatOutcome::{Dropped, Failed};
    use DropReason::*;
    if let Some(code) = err.raw_os_error() {
        return match code {
            libc::ENOBUFS => Dropped(KernelQueueFull),
            libc::ENOSPC => Dropped(StorageFull),
            #[allow(unreachable_patterns)] // EWOULDBLOCK == EAGAIN on most platforms
            libc::EAGAIN | libc::EWOULDBLOCK => Dropped(KernelQueueFull),
            libc::ECONNREFUSED | libc::ENOENT => Dropped(NoObserver),
            libc::ECONNRESET | libc::ENOTCONN | libc::EPIPE => Dropped(PeerGone),
            _ => Failed(BeatError::os(code)),
        };
    }
    match err.kind() {
        io::ErrorKind::WouldBlock => Dropped(KernelQueueFull),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound => Dropped(NoObserver),
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::NotConnected
        | io::ErrorKind::BrokenPipe => Dropped(PeerGone),
        _ => Failed(BeatError::synthetic(FailKind::Other)),
    }
}

// ---------------------------------------------------------------------------
// Host: clock, pid, fork epoch (injectable for tests)
// ---------------------------------------------------------------------------

/// The process facts a beat reads. [`SystemHost`] in production; tests inject
/// clocks that go backwards and pids that change.
pub trait Host: Send {
    /// Monotonic clock in ns since an arbitrary origin.
    fn now_ns(&self) -> u64;
    /// The current process id, read fresh.
    fn pid(&self) -> u32;
    /// The process-wide fork epoch ([`fork::current`]).
    fn fork_epoch(&self) -> u64;
    /// A token that is different in every forked child, readable without a
    /// system call ([`incarnation`]); `None` where the platform cannot
    /// provide one, in which case the agent reads the pid on every beat.
    fn incarnation(&self) -> Option<u64> {
        None
    }
}

/// `CLOCK_MONOTONIC`, `getpid()`, [`fork::current`], [`incarnation::current`].
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemHost;

impl Host for SystemHost {
    #[inline]
    fn now_ns(&self) -> u64 {
        monotonic_ns()
    }
    #[inline]
    fn pid(&self) -> u32 {
        fork::getpid()
    }
    #[inline]
    fn fork_epoch(&self) -> u64 {
        fork::current()
    }
    #[inline]
    fn incarnation(&self) -> Option<u64> {
        incarnation::current()
    }
}

/// `CLOCK_MONOTONIC` in ns (no allocation, vDSO on Linux).
#[inline]
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer; CLOCK_MONOTONIC always exists on our targets.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

// ---------------------------------------------------------------------------
// Agent
// ---------------------------------------------------------------------------

static WRAP_WARNED: AtomicBool = AtomicBool::new(false);
const WRAP_WARNING: &[u8] = b"[varta] nonce exhausted; wrapping to 0\n";

fn warn_nonce_wrap_once() {
    if !WRAP_WARNED.swap(true, Ordering::Relaxed) {
        // SAFETY: static buffer; a failed or short write is ignored.
        let _ = unsafe { libc::write(2, WRAP_WARNING.as_ptr().cast(), WRAP_WARNING.len()) };
    }
}

/// Largest timestamp a regular beat may carry (u64::MAX is reserved on the
/// wire, `docs/protocol.md#sender-rules`; varta saturates one below it).
pub const TIMESTAMP_MAX: u64 = TIMESTAMP_RESERVED - 1;

/// One transport + one session (`docs/agent.md#the-varta-object`).
pub struct Agent<T: Transport, H: Host = SystemHost> {
    /// `None` after [`close`](Agent::close).
    transport: Option<T>,
    host: H,
    /// Last committed nonce (0 before the first `Sent`).
    nonce: u64,
    /// Host clock reading at connect / last fork reset.
    start_ns: u64,
    last_timestamp: u64,
    clock_regressions: u64,
    consecutive_dropped: u32,
    reconnect_after: u32,
    connect_pid: u32,
    connect_fork_epoch: u64,
    /// [`Host::incarnation`] at connect / last recovery (`None`: unsupported).
    connect_incarnation: Option<u64>,
    fork_recoveries: u64,
    /// The last frame sent was a terminal frame (until the next beat).
    signed_off: bool,
    scratch: [u8; FRAME_LEN],
}

impl<T: Transport + fmt::Debug, H: Host> fmt::Debug for Agent<T, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Agent")
            .field("transport", &self.transport)
            .field("nonce", &self.nonce)
            .field("fork_recoveries", &self.fork_recoveries)
            .finish_non_exhaustive()
    }
}

impl Agent<DgramTransport> {
    /// Unix-domain agent: unbound `AF_UNIX/SOCK_DGRAM`, non-blocking,
    /// connected to `path`. Fails with the kernel's error when the path is
    /// missing (`ENOENT`) or nothing listens (`ECONNREFUSED`).
    pub fn connect(path: impl AsRef<Path>) -> io::Result<Self> {
        fork::register()?;
        Agent::new(DgramTransport::connect(Endpoint::unix(path)?)?)
    }

    /// Plain UDP agent: wildcard ephemeral bind of `addr`'s family, connect.
    /// No liveness check (`docs/agent.md#connecting`).
    pub fn connect_udp(addr: SocketAddr) -> io::Result<Self> {
        fork::register()?;
        Agent::new(DgramTransport::connect_udp(addr)?)
    }
}

impl<T: Transport> Agent<T> {
    pub fn new(transport: T) -> io::Result<Self> {
        Agent::with_host(transport, SystemHost)
    }
}

impl<T: Transport, H: Host> Agent<T, H> {
    /// Wrap a connected transport. Registers the fork epoch first; fails if
    /// that fails (never falls back to pid-only detection).
    pub fn with_host(transport: T, host: H) -> io::Result<Self> {
        fork::register()?;
        incarnation::init();
        terminal::init_origin();
        let start_ns = host.now_ns();
        let connect_pid = host.pid();
        let connect_fork_epoch = host.fork_epoch();
        let connect_incarnation = host.incarnation();
        Ok(Agent {
            transport: Some(transport),
            host,
            nonce: 0,
            start_ns,
            last_timestamp: 0,
            clock_regressions: 0,
            consecutive_dropped: 0,
            reconnect_after: 0,
            connect_pid,
            connect_fork_epoch,
            connect_incarnation,
            fork_recoveries: 0,
            signed_off: false,
            scratch: [0; FRAME_LEN],
        })
    }

    /// Emit one frame (`docs/agent.md#beating`). Never blocks, never allocates after
    /// connect (only a reconnect may), never panics.
    pub fn beat(&mut self, status: Status, payload: u32) -> BeatOutcome {
        // 1. Validate: Stall and reserved pids are programming errors.
        let pid = self.current_pid();
        if status == Status::Stall || pid <= 1 {
            self.consecutive_dropped = 0;
            return BeatOutcome::Failed(BeatError::INVALID_INPUT);
        }
        // 2. Closed?
        if self.transport.is_none() {
            self.consecutive_dropped = 0;
            return BeatOutcome::Failed(BeatError::CLOSED);
        }
        // 3. Fork check, before the frame exists.
        if let Err(e) = self.check_fork(pid) {
            return BeatOutcome::Failed(BeatError::from_io(&e));
        }
        // 4. Nonce candidate (never the terminal sentinel).
        let (nonce, wrapped) = if self.nonce < NONCE_TERMINAL - 1 {
            (self.nonce + 1, false)
        } else {
            (0, true)
        };
        // 5. Timestamp candidate.
        let timestamp = self.candidate_timestamp();
        // 6. Encode with this beat's pid; send once.
        Frame {
            status,
            pid,
            timestamp,
            nonce,
            payload,
        }
        .encode_into(&mut self.scratch);
        let outcome = self.send_scratch();
        // 7–9. Classify, commit on success, auto-reconnect on drop.
        match outcome {
            BeatOutcome::Sent => {
                self.commit(nonce, timestamp, wrapped);
                self.consecutive_dropped = 0;
                outcome
            }
            BeatOutcome::Failed(_) => {
                self.consecutive_dropped = 0;
                outcome
            }
            BeatOutcome::Dropped(_) => {
                self.consecutive_dropped = self.consecutive_dropped.saturating_add(1);
                if self.reconnect_after == 0 || self.consecutive_dropped < self.reconnect_after {
                    return outcome;
                }
                // docs/agent.md#auto-reconnect: reconnect; on failure the count stays, so the next drop
                // retries at once, and the original outcome is returned.
                if self.reconnect_inner().is_err() {
                    return outcome;
                }
                self.consecutive_dropped = 0;
                // Resend the same plaintext once; no second reconnect.
                let retry = self.send_scratch();
                match retry {
                    BeatOutcome::Sent => self.commit(nonce, timestamp, wrapped),
                    BeatOutcome::Dropped(_) => self.consecutive_dropped = 1,
                    BeatOutcome::Failed(_) => {}
                }
                retry
            }
        }
    }

    /// The outcome of a beat whose status a binding could not parse (unknown
    /// name or code): `Failed(InvalidInput)`, nothing sent, drop run reset —
    /// the same as `beat(Status::Stall, _)`.
    pub fn reject_invalid_input(&mut self) -> BeatOutcome {
        self.consecutive_dropped = 0;
        BeatOutcome::Failed(BeatError::INVALID_INPUT)
    }

    /// Emit the clean-exit terminal frame: `Critical`, `NONCE_TERMINAL`,
    /// payload `"EXIT"` (the clean-exit cause our observer turns into an
    /// `exited` verdict; upstream's ignores the payload, `docs/verdicts.md`),
    /// timestamp from the process-wide terminal mark (`docs/agent.md#fork-safety`,
    /// `docs/agent.md#beyond-the-upstream-client`).
    /// Does not touch the regular nonce/timestamp or the drop window.
    pub fn send_terminal(&mut self) -> BeatOutcome {
        let pid = self.current_pid();
        if pid <= 1 {
            return BeatOutcome::Failed(BeatError::INVALID_INPUT);
        }
        if self.transport.is_none() {
            return BeatOutcome::Failed(BeatError::CLOSED);
        }
        if let Err(e) = self.check_fork(pid) {
            return BeatOutcome::Failed(BeatError::from_io(&e));
        }
        let Some(timestamp) = terminal::claim() else {
            // The mark is exhausted: the frame must not be sent.
            return BeatOutcome::Failed(BeatError::INVALID_INPUT);
        };
        Frame {
            status: Status::Critical,
            pid,
            timestamp,
            nonce: NONCE_TERMINAL,
            payload: crate::cause::PAYLOAD_CLEAN_EXIT,
        }
        .encode_into(&mut self.scratch);
        let outcome = self.send_scratch();
        if outcome.is_sent() {
            self.signed_off = true;
            if let Some(t) = self.transport.as_mut() {
                t.commit_sent();
            }
        }
        outcome
    }

    /// The last frame sent was a terminal frame: the agent has signed off
    /// (a clean close need not send another).
    pub fn signed_off(&self) -> bool {
        self.signed_off
    }

    /// Rebuild the transport (`docs/agent.md#reconnecting`): transactional, keeps the nonce
    /// and the session clock, refreshes the connect pid and fork epoch.
    /// After `close()` fails with `EBADF`.
    pub fn reconnect(&mut self) -> io::Result<()> {
        if self.transport.is_none() {
            self.consecutive_dropped = 0;
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        }
        self.reconnect_inner()?;
        self.consecutive_dropped = 0;
        Ok(())
    }

    /// `n = 0` disables auto-reconnect (docs/agent.md#auto-reconnect). Resets the drop count.
    pub fn set_reconnect_after(&mut self, n: u32) {
        self.reconnect_after = n;
        self.consecutive_dropped = 0;
    }

    /// Close the transport (idempotent). Later beats fail with `Closed`.
    pub fn close(&mut self) {
        self.consecutive_dropped = 0;
        self.transport = None;
    }

    pub fn is_closed(&self) -> bool {
        self.transport.is_none()
    }

    pub fn clock_regressions(&self) -> u64 {
        self.clock_regressions
    }

    pub fn fork_recoveries(&self) -> u64 {
        self.fork_recoveries
    }

    /// Last committed nonce (0 before the first sent beat).
    pub fn nonce(&self) -> u64 {
        self.nonce
    }

    pub fn last_timestamp(&self) -> u64 {
        self.last_timestamp
    }

    pub fn reconnect_after(&self) -> u32 {
        self.reconnect_after
    }

    pub fn consecutive_dropped(&self) -> u32 {
        self.consecutive_dropped
    }

    pub fn transport(&self) -> Option<&T> {
        self.transport.as_ref()
    }

    pub fn transport_mut(&mut self) -> Option<&mut T> {
        self.transport.as_mut()
    }

    pub fn host(&self) -> &H {
        &self.host
    }

    /// Test hook (upstream parity): force the committed nonce.
    #[doc(hidden)]
    pub fn set_nonce_for_test(&mut self, nonce: u64) {
        self.nonce = nonce;
    }

    /// Test hook (upstream parity): pretend the connect pid was `pid`. Also
    /// forgets the incarnation token, so the next beat reads the real pid.
    #[doc(hidden)]
    pub fn set_connect_pid_for_test(&mut self, pid: u32) {
        self.connect_pid = pid;
        self.connect_incarnation = None;
    }

    /// Test hook (upstream parity): pretend the connect fork epoch was `epoch`.
    #[doc(hidden)]
    pub fn set_connect_fork_epoch_for_test(&mut self, epoch: u64) {
        self.connect_fork_epoch = epoch;
    }

    // --- internals --------------------------------------------------------

    /// docs/agent.md#beating step 3 / docs/agent.md#fork-safety: on a pid or epoch change, reconnect and reset the
    /// session. On failure nothing is touched.
    fn check_fork(&mut self, pid: u32) -> io::Result<()> {
        if pid == self.connect_pid
            && self.host.fork_epoch() == self.connect_fork_epoch
            && self.host.incarnation() == self.connect_incarnation
        {
            return Ok(());
        }
        if let Some(t) = self.transport.as_mut() {
            t.reconnect()?;
        }
        self.connect_pid = pid;
        self.connect_fork_epoch = self.host.fork_epoch();
        self.connect_incarnation = self.host.incarnation();
        self.fork_recoveries = self.fork_recoveries.saturating_add(1);
        self.nonce = 0;
        self.start_ns = self.host.now_ns();
        self.last_timestamp = 0;
        self.consecutive_dropped = 0;
        Ok(())
    }

    fn reconnect_inner(&mut self) -> io::Result<()> {
        let Some(t) = self.transport.as_mut() else {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        };
        t.reconnect()?;
        self.connect_pid = self.host.pid();
        self.connect_fork_epoch = self.host.fork_epoch();
        self.connect_incarnation = self.host.incarnation();
        Ok(())
    }

    /// The pid for this beat. While the incarnation token seen at connect is
    /// unchanged (no fork of any kind since), that is the connect pid;
    /// otherwise — or where tokens are unavailable — `getpid()` is read.
    #[inline]
    fn current_pid(&self) -> u32 {
        match self.connect_incarnation {
            Some(token)
                if self.host.incarnation() == Some(token)
                    && self.host.fork_epoch() == self.connect_fork_epoch =>
            {
                self.connect_pid
            }
            _ => self.host.pid(),
        }
    }

    /// docs/agent.md#beating step 5: ns since start, saturated below the reserved value, clamped
    /// to the last committed timestamp; a backwards raw clock is counted.
    #[inline]
    fn candidate_timestamp(&mut self) -> u64 {
        let raw = self
            .host
            .now_ns()
            .saturating_sub(self.start_ns)
            .min(TIMESTAMP_MAX);
        if raw < self.last_timestamp {
            self.clock_regressions = self.clock_regressions.saturating_add(1);
        }
        raw.max(self.last_timestamp)
    }

    #[inline]
    fn send_scratch(&mut self) -> BeatOutcome {
        let Some(t) = self.transport.as_mut() else {
            return BeatOutcome::Failed(BeatError::CLOSED);
        };
        match t.send(&self.scratch) {
            Ok(n) if n == t.expected_send_len() => BeatOutcome::Sent,
            Ok(_) => BeatOutcome::Failed(BeatError::WRITE_ZERO),
            Err(e) => classify_send_error(&e),
        }
    }

    /// docs/agent.md#commit-on-success: only a `Sent` beat commits nonce, timestamp and transport state.
    #[inline]
    fn commit(&mut self, nonce: u64, timestamp: u64, wrapped: bool) {
        self.signed_off = false;
        self.nonce = nonce;
        self.last_timestamp = timestamp;
        if let Some(t) = self.transport.as_mut() {
            t.commit_sent();
        }
        if wrapped {
            warn_nonce_wrap_once();
        }
    }
}
