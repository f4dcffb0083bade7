//! `varta.Varta`: the Python agent over the core [`Agent`].
//!
//! One frozen class with the core agent behind a [`ForkSafeMutex`], held from
//! nonce choice to commit (wire order == nonce order, `docs/agent.md#threads-closing-and-allocation`). The
//! beat path keeps the GIL: it is one non-blocking `send(2)` (≈1 µs), and
//! releasing and re-taking the GIL would cost more than the send itself.
//! If the lock is contended (only when a custom Python transport runs Python
//! code while holding it), the waiter detaches from the interpreter first.
//!
//! Outcomes are the cached `varta._types._SENT` / `_DROPPED[reason]`
//! singletons; only `Failed` builds new objects.

use crate::errors::Error;
use crate::pytypes::{agent_types, extract_status};
use crate::secure::extract_key;
use pyo3::exceptions::{PyBlockingIOError, PyOSError, PyOverflowError, PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyInt, PyString, PyTuple, PyType};
use std::cell::Cell;
use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use varta_core::agent::{
    classify_send_error as core_classify_send_error, Agent, BeatOutcome, FailKind, ForkSafeGuard,
    ForkSafeMutex,
};
use varta_core::frame::{Status, FRAME_LEN};
use varta_core::secure::{Key, SessionMode};
use varta_core::transport::{DgramTransport, Endpoint, Transport};
use varta_core::transport_secure::{SecurePending, SecureUdpTransport};

// ---------------------------------------------------------------------------
// Transports the binding can drive
// ---------------------------------------------------------------------------

/// Every transport a `Varta` can sit on. (The secure stream adds its
/// transport as one more variant.) `varta.Heartbeat` drives the socket
/// variants from its beater thread, which never takes the GIL.
pub(crate) enum Tx {
    Dgram(DgramTransport),
    Secure(SecureUdpTransport),
    Py(PyTransport),
}

pub(crate) enum TxPending {
    Dgram(OwnedFd),
    Secure(SecurePending),
    Py,
}

impl Transport for Tx {
    type Pending = TxPending;

    #[inline]
    fn send(&mut self, frame: &[u8; FRAME_LEN]) -> io::Result<usize> {
        match self {
            Tx::Dgram(t) => t.send(frame),
            Tx::Secure(t) => t.send(frame),
            Tx::Py(t) => t.send(frame),
        }
    }

    #[inline]
    fn expected_send_len(&self) -> usize {
        match self {
            Tx::Dgram(t) => t.expected_send_len(),
            Tx::Secure(t) => t.expected_send_len(),
            Tx::Py(t) => t.expected,
        }
    }

    fn prepare_reconnect(&self) -> io::Result<TxPending> {
        match self {
            Tx::Dgram(t) => t.prepare_reconnect().map(TxPending::Dgram),
            Tx::Secure(t) => t.prepare_reconnect().map(TxPending::Secure),
            // A Python transport's reconnect() is itself transactional
            // (upstream's BeatTransport contract); it runs here.
            Tx::Py(t) => t.reconnect_now().map(|()| TxPending::Py),
        }
    }

    fn commit_reconnect(&mut self, pending: TxPending) {
        match (self, pending) {
            (Tx::Dgram(t), TxPending::Dgram(fd)) => t.commit_reconnect(fd),
            (Tx::Secure(t), TxPending::Secure(p)) => t.commit_reconnect(p),
            (Tx::Py(_), TxPending::Py) => {}
            _ => unreachable!("pending state from another transport kind"),
        }
    }

    #[inline]
    fn commit_sent(&mut self) {
        match self {
            Tx::Dgram(t) => t.commit_sent(),
            Tx::Secure(t) => t.commit_sent(),
            Tx::Py(_) => {}
        }
    }
}

impl Tx {
    pub(crate) fn describe(&self) -> String {
        match self {
            Tx::Dgram(t) => match t.endpoint() {
                Endpoint::Unix(u) => format!("uds={:?}", u.path().to_string_lossy()),
                Endpoint::Udp(a) => format!("udp={a}"),
            },
            Tx::Secure(t) => {
                let mode = match t.mode() {
                    SessionMode::Shared => "shared",
                    SessionMode::Master => "master",
                };
                format!("secure_udp={} key={mode}", t.endpoint())
            }
            Tx::Py(t) => Python::attach(|py| {
                let obj = t.obj.bind(py);
                match obj.get_type().name() {
                    Ok(n) => format!("transport={n}"),
                    Err(_) => "transport=?".to_owned(),
                }
            }),
        }
    }

    /// The Python exception a custom transport raised during the last call.
    fn take_py_error(&mut self) -> Option<PyErr> {
        match self {
            Tx::Py(t) => t.error.take(),
            Tx::Dgram(_) | Tx::Secure(_) => None,
        }
    }
}

/// The `io::Error` the core classifies for a Python exception: an
/// `OSError`'s errno, `WouldBlock` for a `BlockingIOError` without one;
/// `None` when the errno alone would lose what the exception says.
fn io_error_of(py: Python<'_>, e: &PyErr) -> Option<io::Error> {
    let v = e.value(py);
    if !v.is_instance_of::<PyOSError>() {
        return None;
    }
    let errno = v
        .getattr(intern!(py, "errno"))
        .ok()
        .and_then(|n| n.extract::<i32>().ok())
        .filter(|&n| n != 0);
    match errno {
        Some(code) => Some(io::Error::from_raw_os_error(code)),
        None if v.is_instance_of::<PyBlockingIOError>() => Some(io::ErrorKind::WouldBlock.into()),
        None => None,
    }
}

/// `varta.classify_send_error`: the outcome a send `OSError` stands for,
/// by the core's rules (docs/agent.md#outcomes), so a custom transport's
/// exceptions and the agent's own send errors are judged alike.
#[pyfunction]
fn classify_send_error(py: Python<'_>, exc: Bound<'_, PyOSError>) -> PyResult<Py<PyAny>> {
    let err = PyErr::from_value(exc.into_any());
    match io_error_of(py, &err) {
        Some(io) => PyVarta::outcome(py, core_classify_send_error(&io), None),
        None => {
            let other = core_classify_send_error(&io::Error::other("no errno"));
            PyVarta::outcome(py, other, Some(err))
        }
    }
}

/// A user object with upstream's `BeatTransport` shape: `send(buf) -> int`,
/// `reconnect()`, optional `close()` and `expected_send_len`. Forgoes the
/// zero-allocation guarantee (each send builds a `bytes`).
pub(crate) struct PyTransport {
    obj: Py<PyAny>,
    expected: usize,
    /// The exception from the last `send`/`reconnect` that had no errno to
    /// classify (an `OSError` without errno, or any other exception). A
    /// `Cell` because `prepare_reconnect` takes `&self`; it is only touched
    /// under the agent lock.
    error: Cell<Option<PyErr>>,
}

impl PyTransport {
    fn new(obj: &Bound<'_, PyAny>) -> PyResult<PyTransport> {
        let py = obj.py();
        if !obj.getattr(intern!(py, "send"))?.is_callable() {
            return Err(PyTypeError::new_err("transport.send must be callable"));
        }
        let expected = match obj.getattr_opt(intern!(py, "expected_send_len"))? {
            None => FRAME_LEN,
            Some(v) if v.is_callable() => v.call0()?.extract()?,
            Some(v) if v.is_none() => FRAME_LEN,
            Some(v) => v.extract()?,
        };
        Ok(PyTransport {
            obj: obj.clone().unbind(),
            expected,
            error: Cell::new(None),
        })
    }

    /// Turn a Python exception into an `io::Error` the core can classify;
    /// keep the exception when the errno alone would lose it.
    fn convert(&self, py: Python<'_>, e: PyErr) -> io::Error {
        if let Some(io) = io_error_of(py, &e) {
            return io;
        }
        self.error.set(Some(e));
        io::Error::other("custom transport raised")
    }

    fn send(&mut self, frame: &[u8; FRAME_LEN]) -> io::Result<usize> {
        Python::attach(|py| {
            let buf = PyBytes::new(py, frame);
            match self.obj.bind(py).call_method1(intern!(py, "send"), (buf,)) {
                // A non-int return is "not a full frame" (WriteZero), as upstream.
                Ok(n) => Ok(n.extract::<usize>().unwrap_or(0)),
                Err(e) => Err(self.convert(py, e)),
            }
        })
    }

    fn reconnect_now(&self) -> io::Result<()> {
        Python::attach(|py| {
            self.obj
                .bind(py)
                .call_method0(intern!(py, "reconnect"))
                .map(drop)
                .map_err(|e| self.convert(py, e))
        })
    }
}

/// Call a custom transport's optional `close()`.
fn close_custom(obj: &Bound<'_, PyAny>) -> PyResult<()> {
    if let Some(close) = obj.getattr_opt(intern!(obj.py(), "close"))? {
        close.call0()?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Argument types
// ---------------------------------------------------------------------------

/// `status`: a `Status`, int or case-insensitive name. Anything unusable is
/// not an exception but a `Failed(InvalidInput)` outcome (upstream).
struct StatusArg(Option<Status>);

impl StatusArg {
    const OK: StatusArg = StatusArg(Some(Status::Ok));
}

impl<'a, 'py> FromPyObject<'a, 'py> for StatusArg {
    type Error = PyErr;

    /// `pytypes::extract_status`, with a bad status kept as `None` (it is a
    /// `Failed(InvalidInput)` outcome, not an exception).
    #[inline]
    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        Ok(StatusArg(extract_status(&obj).ok()))
    }
}

/// `payload`: an int in `0..=0xFFFF_FFFF`; `TypeError` / `ValueError`
/// otherwise, raised before anything is sent (`docs/agent.md#beating` step 1).
pub(crate) struct Payload(pub(crate) u32);

impl<'a, 'py> FromPyObject<'a, 'py> for Payload {
    type Error = PyErr;

    #[inline]
    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        match obj.extract::<u32>() {
            Ok(v) => Ok(Payload(v)),
            Err(e) => {
                let py = obj.py();
                if obj.is_instance_of::<PyInt>() || e.is_instance_of::<PyOverflowError>(py) {
                    Err(PyValueError::new_err(format!(
                        "payload {} is outside 0..=4294967295",
                        obj.repr()?
                    )))
                } else {
                    Err(PyTypeError::new_err(format!(
                        "payload must be an int, not {}",
                        obj.get_type().name()?
                    )))
                }
            }
        }
    }
}

/// Set up the process's hang-forensics channel (`varta._forensics`,
/// `docs/finding-hangs.md#the-sdk-channel`) unless the caller opted out.
/// Idempotent; a failure to set it up (no memfd, no free signal) leaves the
/// agent as it is, without the channel.
pub(crate) fn install_forensics(py: Python<'_>, wanted: bool) -> PyResult<()> {
    if !wanted {
        return Ok(());
    }
    match py
        .import(intern!(py, "varta._forensics"))?
        .call_method0(intern!(py, "install"))
    {
        Ok(_) => Ok(()),
        Err(e) if e.is_instance_of::<PyOSError>(py) => Ok(()),
        Err(e) => Err(e),
    }
}

/// `EBADF`: the same number on every Unix.
const EBADF: i32 = 9;

// ---------------------------------------------------------------------------
// Varta
// ---------------------------------------------------------------------------

/// A heartbeat agent: one transport, one session. Thread-safe and fork-safe.
#[pyclass(name = "Varta", module = "varta", frozen)]
pub struct PyVarta {
    inner: ForkSafeMutex<Agent<Tx>>,
}

impl PyVarta {
    fn from_tx(tx: Tx) -> io::Result<PyVarta> {
        Ok(PyVarta {
            inner: ForkSafeMutex::new(Agent::new(tx)?),
        })
    }

    fn connect_secure(
        py: Python<'_>,
        addr: &Bound<'_, PyTuple>,
        key: Key,
        mode: SessionMode,
    ) -> PyResult<Self> {
        let (host, port): (String, u16) = addr.extract()?;
        let target = format!("{host}:{port}");
        py.detach(|| {
            varta_core::fork::register()?;
            let Endpoint::Udp(sa) = Endpoint::udp(&host, port)? else {
                unreachable!("Endpoint::udp returns a UDP endpoint")
            };
            let t = match mode {
                SessionMode::Shared => SecureUdpTransport::connect_shared(sa, key)?,
                SessionMode::Master => SecureUdpTransport::connect_master(sa, key)?,
            };
            PyVarta::from_tx(Tx::Secure(t))
        })
        .map_err(|e| Error::from(e).at(target).into())
    }

    /// Take the agent lock without blocking while attached to the
    /// interpreter (the holder may need the GIL to finish).
    #[inline]
    fn lock(&self, py: Python<'_>) -> ForkSafeGuard<'_, Agent<Tx>> {
        match self.inner.try_lock() {
            Some(g) => g,
            None => py.detach(|| self.inner.lock()),
        }
    }

    /// Convert a core outcome to its Python object.
    #[inline]
    fn outcome(py: Python<'_>, o: BeatOutcome, py_err: Option<PyErr>) -> PyResult<Py<PyAny>> {
        // Anything but an OSError from a custom transport (also from a
        // reconnect the agent tried on its own) is a bug there: propagate it.
        // An OSError only matters for a Failed outcome.
        let py_err = match py_err {
            Some(err) if !err.value(py).is_instance_of::<PyOSError>() => return Err(err),
            Some(err) if o.is_failed() => Some(err),
            _ => None,
        };
        let t = agent_types(py)?;
        match o {
            BeatOutcome::Sent => Ok(t.sent.clone_ref(py)),
            BeatOutcome::Dropped(r) => Ok(t.dropped[r as usize].clone_ref(py)),
            BeatOutcome::Failed(e) => {
                if let Some(err) = py_err {
                    // A custom transport's OSError without errno becomes
                    // BeatError.from_oserror (upstream).
                    let v = err.value(py);
                    let types = py.import(intern!(py, "varta._types"))?;
                    let be = types
                        .getattr(intern!(py, "BeatError"))?
                        .call_method1(intern!(py, "from_oserror"), (v,))?;
                    return Ok(t.failed.bind(py).call1((be,))?.unbind());
                }
                let kind = match e.kind().synthetic_name() {
                    Some(name) if e.kind() != FailKind::Other => PyString::new(py, name).into_any(),
                    _ if e.errno() != 0 => t.errno_name.bind(py).call1((e.errno(),))?,
                    _ => PyString::new(py, "Other").into_any(),
                };
                let be = crate::pytypes::types(py)?
                    .beat_error
                    .bind(py)
                    .call1((e.errno(), kind))?;
                Ok(t.failed.bind(py).call1((be,))?.unbind())
            }
        }
    }
}

#[pymethods]
impl PyVarta {
    /// Wrap a custom transport object (upstream's `Varta(transport)`).
    #[new]
    fn new(transport: &Bound<'_, PyAny>) -> PyResult<Self> {
        let tx = Tx::Py(PyTransport::new(transport)?);
        PyVarta::from_tx(tx).map_err(|e| Error::from(e).at("fork epoch registration").into())
    }

    /// Connect to the observer's Unix datagram socket at `path`.
    /// `forensics=False` opts out of the hang-forensics channel
    /// (`docs/agent.md#hang-forensics`).
    #[classmethod]
    #[pyo3(signature = (path, *, forensics = true))]
    fn connect(
        _cls: &Bound<'_, PyType>,
        py: Python<'_>,
        path: PathBuf,
        forensics: bool,
    ) -> PyResult<Self> {
        let target = path.to_string_lossy().into_owned();
        let agent = py
            .detach(|| {
                varta_core::fork::register()?;
                DgramTransport::connect(Endpoint::unix(&path)?)
                    .and_then(|t| PyVarta::from_tx(Tx::Dgram(t)))
            })
            .map_err(|e| PyErr::from(Error::from(e).at(target)))?;
        install_forensics(py, forensics)?;
        Ok(agent)
    }

    /// Connect to the observer over plaintext UDP; `addr` is `(host, port)`.
    #[classmethod]
    #[pyo3(signature = (addr, *, forensics = true))]
    fn connect_udp(
        _cls: &Bound<'_, PyType>,
        py: Python<'_>,
        addr: &Bound<'_, PyTuple>,
        forensics: bool,
    ) -> PyResult<Self> {
        let (host, port): (String, u16) = addr.extract()?;
        let target = format!("{host}:{port}");
        let agent = py
            .detach(|| {
                varta_core::fork::register()?;
                DgramTransport::connect(Endpoint::udp(&host, port)?)
                    .and_then(|t| PyVarta::from_tx(Tx::Dgram(t)))
            })
            .map_err(|e| PyErr::from(Error::from(e).at(target)))?;
        install_forensics(py, forensics)?;
        Ok(agent)
    }

    /// Secure UDP with a shared key (`varta.Key` or 32 bytes): 60-byte
    /// ChaCha20-Poly1305 frames; fresh session salt from OS entropy.
    #[classmethod]
    #[pyo3(signature = (addr, key, *, forensics = true))]
    fn connect_secure_udp(
        _cls: &Bound<'_, PyType>,
        py: Python<'_>,
        addr: &Bound<'_, PyTuple>,
        key: &Bound<'_, PyAny>,
        forensics: bool,
    ) -> PyResult<Self> {
        let key = extract_key(key)?;
        let agent = PyVarta::connect_secure(py, addr, key, SessionMode::Shared)?;
        install_forensics(py, forensics)?;
        Ok(agent)
    }

    /// Secure UDP with a master key: 64-byte frames sealed with
    /// `K_agent = HKDF(master, pid)`, re-derived on reconnect and fork.
    #[classmethod]
    #[pyo3(signature = (addr, master_key, *, forensics = true))]
    fn connect_secure_udp_with_master(
        _cls: &Bound<'_, PyType>,
        py: Python<'_>,
        addr: &Bound<'_, PyTuple>,
        master_key: &Bound<'_, PyAny>,
        forensics: bool,
    ) -> PyResult<Self> {
        let key = extract_key(master_key)?;
        let agent = PyVarta::connect_secure(py, addr, key, SessionMode::Master)?;
        install_forensics(py, forensics)?;
        Ok(agent)
    }

    /// Emit one frame and return its `BeatOutcome`. Raises only for a bad
    /// payload (`TypeError` / `ValueError`).
    #[pyo3(signature = (status = StatusArg::OK, payload = Payload(0)), text_signature = "($self, status=..., payload=0)")]
    #[inline]
    fn beat(&self, py: Python<'_>, status: StatusArg, payload: Payload) -> PyResult<Py<PyAny>> {
        let (o, err) = {
            let mut a = self.lock(py);
            let o = match status.0 {
                Some(s) => a.beat(s, payload.0),
                None => a.reject_invalid_input(),
            };
            (o, a.transport_mut().and_then(Tx::take_py_error))
        };
        PyVarta::outcome(py, o, err)
    }

    /// Send the clean-exit terminal frame (`Critical`, `NONCE_TERMINAL`).
    fn send_terminal(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let (o, err) = {
            let mut a = self.lock(py);
            let o = a.send_terminal();
            (o, a.transport_mut().and_then(Tx::take_py_error))
        };
        PyVarta::outcome(py, o, err)
    }

    /// Rebuild the transport (keeps the nonce and session clock). Raises
    /// `OSError` on failure; the old socket stays usable.
    fn reconnect(&self, py: Python<'_>) -> PyResult<()> {
        let mut a = self.lock(py);
        if a.is_closed() {
            // Keep the core's bookkeeping (drop run reset) consistent.
            let _ = a.reconnect();
            return Err(Error::os(Some(EBADF), "Varta.reconnect: Closed").into());
        }
        match a.reconnect() {
            Ok(()) => Ok(()),
            Err(e) => {
                let tx = a.transport_mut().expect("not closed");
                if let Some(pe) = tx.take_py_error() {
                    return Err(pe);
                }
                Err(Error::from(e).at(tx.describe()).into())
            }
        }
    }

    /// Auto-reconnect after `n` consecutive drops; `0`/`None` disables.
    #[pyo3(signature = (n))]
    fn set_reconnect_after(&self, py: Python<'_>, n: Option<i64>) -> PyResult<()> {
        let n = n.unwrap_or(0);
        let n = u32::try_from(n).map_err(|_| {
            PyValueError::new_err(format!(
                "reconnect_after must be in 0..=4294967295, got {n}"
            ))
        })?;
        self.lock(py).set_reconnect_after(n);
        Ok(())
    }

    /// Times the raw clock went backwards (saturating).
    fn clock_regressions(&self, py: Python<'_>) -> u64 {
        self.lock(py).clock_regressions()
    }

    /// Fork-triggered session resets (saturating).
    fn fork_recoveries(&self, py: Python<'_>) -> u64 {
        self.lock(py).fork_recoveries()
    }

    /// True after `close()`.
    #[getter]
    fn closed(&self, py: Python<'_>) -> bool {
        self.lock(py).is_closed()
    }

    /// Close the transport (idempotent). `final=True` first sends the
    /// terminal frame (`send_terminal()`), marking the exit as clean.
    #[pyo3(signature = (r#final = false), text_signature = "($self, final=False)")]
    fn close(&self, py: Python<'_>, r#final: bool) -> PyResult<()> {
        let mut a = self.lock(py);
        if a.is_closed() {
            return Ok(());
        }
        if r#final {
            let _ = a.send_terminal();
            let _ = a.transport_mut().and_then(Tx::take_py_error);
        }
        let custom = match a.transport() {
            Some(Tx::Py(t)) => Some(t.obj.clone_ref(py)),
            _ => None,
        };
        a.close();
        drop(a);
        if let Some(obj) = custom {
            close_custom(obj.bind(py))?;
        }
        Ok(())
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    /// Leaving the block normally is a clean exit: the agent signs off with
    /// the clean-exit terminal frame, so an observer reports `exited`
    /// instead of a stall (`docs/verdicts.md`). Leaving it by an exception
    /// only closes: the crash hook, if installed, speaks for a crash.
    #[pyo3(signature = (*exc))]
    fn __exit__(&self, py: Python<'_>, exc: &Bound<'_, PyTuple>) -> PyResult<bool> {
        let clean = exc.iter().next().is_none_or(|t| t.is_none());
        let signed_off = self.lock(py).signed_off();
        self.close(py, clean && !signed_off)?;
        Ok(false)
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        let a = self.lock(py);
        match a.transport() {
            None => "<varta.Varta closed>".to_owned(),
            Some(t) => format!(
                "<varta.Varta {} nonce={} fork_recoveries={}>",
                t.describe(),
                a.nonce(),
                a.fork_recoveries()
            ),
        }
    }
}

// Test hooks (`varta._varta._testing`; upstream's `_set_*_for_test`).

/// Set the nonce of the agent's next beat.
#[pyfunction]
fn set_nonce(agent: &Bound<'_, PyVarta>, value: u64) {
    agent.get().lock(agent.py()).set_nonce_for_test(value);
}

/// Pretend the agent connected from `pid` (as if it had forked since).
#[pyfunction]
fn set_connect_pid(agent: &Bound<'_, PyVarta>, pid: u32) {
    agent.get().lock(agent.py()).set_connect_pid_for_test(pid);
}

/// Pretend the agent connected in fork epoch `epoch`.
#[pyfunction]
fn set_connect_fork_epoch(agent: &Bound<'_, PyVarta>, epoch: u64) {
    agent
        .get()
        .lock(agent.py())
        .set_connect_fork_epoch_for_test(epoch);
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyVarta>()?;
    m.add_function(wrap_pyfunction!(classify_send_error, m)?)?;
    Ok(())
}

pub fn register_testing(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(set_nonce, m)?)?;
    m.add_function(wrap_pyfunction!(set_connect_pid, m)?)?;
    m.add_function(wrap_pyfunction!(set_connect_fork_epoch, m)?)?;
    Ok(())
}
