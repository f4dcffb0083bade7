//! Native half of `varta.panic`: connect a crash emitter at install time,
//! activate it (optionally with the fatal-signal handlers), fire it from the
//! Python hooks. The hook policy (chaining, dedupe, signals) lives in
//! `python/varta/panic.py`.

use crate::errors::Error;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use std::io;
use std::path::PathBuf;
use std::sync::Mutex;
use varta_core::panic::{self as core_panic, udp_connected_resolve, Emitter, Fire, Wire};
use varta_core::panic_secure::{MasterPanicSealer, SharedPanicSealer};

/// A connected, not yet active crash emitter. `activate()` makes it the
/// process's active emitter (once); dropping it unused closes its socket.
#[pyclass(name = "_PanicEmitter", module = "varta._varta", frozen)]
pub struct PyPanicEmitter {
    inner: Mutex<Option<Emitter>>,
}

impl PyPanicEmitter {
    fn wrap(e: Emitter) -> Self {
        PyPanicEmitter {
            inner: Mutex::new(Some(e)),
        }
    }
}

#[pymethods]
impl PyPanicEmitter {
    /// Make this the active emitter (replacing and closing any previous one).
    /// With `fatal_signals`, first install the native SIGSEGV/SIGBUS/SIGILL/
    /// SIGFPE/SIGABRT handlers (once per process); if that fails nothing
    /// changes and this emitter stays unused.
    #[pyo3(signature = (fatal_signals))]
    fn activate(&self, fatal_signals: bool) -> PyResult<()> {
        let mut slot = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            return Err(PyRuntimeError::new_err(
                "this crash emitter was already activated",
            ));
        }
        if fatal_signals {
            core_panic::install_fatal_signal_handlers().map_err(|e| {
                PyRuntimeError::new_err(format!("cannot install fatal-signal handlers: {e}"))
            })?;
        }
        let e = slot.take().expect("checked above");
        core_panic::install(e)
            .map_err(|e| PyRuntimeError::new_err(format!("cannot register the crash emitter: {e}")))
    }

    fn __repr__(&self) -> String {
        let slot = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match slot.as_ref() {
            Some(e) => format!(
                "<varta crash emitter fd={} wire={:?}>",
                e.raw_fd(),
                e.wire()
            ),
            None => "<varta crash emitter (activated)>".to_owned(),
        }
    }
}

/// Connect a plaintext crash emitter to the Unix datagram socket at `path`.
#[pyfunction]
fn _panic_connect_uds(py: Python<'_>, path: PathBuf) -> PyResult<PyPanicEmitter> {
    let e = py
        .detach(|| Emitter::connect_uds(&path))
        .map_err(|e| Error::from(e).at(path.to_string_lossy()))?;
    Ok(PyPanicEmitter::wrap(e))
}

/// Resolve `(host, port)` now and connect a plaintext UDP crash emitter.
#[pyfunction]
fn _panic_connect_udp(py: Python<'_>, host: String, port: u16) -> PyResult<PyPanicEmitter> {
    let e = py
        .detach(|| Emitter::connect_udp_resolve((host.as_str(), port)))
        .map_err(|e| Error::from(e).at(format!("{host}:{port}")))?;
    Ok(PyPanicEmitter::wrap(e))
}

/// Build a secure UDP crash emitter: fork salt first (failure →
/// `RuntimeError` starting with "entropy unavailable", which `varta.panic`
/// turns into `EntropyUnavailable`), then resolve and connect (`OSError`).
fn connect_secure(
    py: Python<'_>,
    host: String,
    port: u16,
    key: &Bound<'_, PyAny>,
    master: bool,
) -> PyResult<PyPanicEmitter> {
    let key = crate::secure::extract_key(key)?;
    let wire = py
        .detach(|| -> io::Result<Wire> {
            Ok(if master {
                Wire::Sealed(Box::new(MasterPanicSealer::new(&key)?))
            } else {
                Wire::Sealed(Box::new(SharedPanicSealer::new(&key)?))
            })
        })
        .map_err(|e| PyRuntimeError::new_err(format!("entropy unavailable: {e}")))?;
    let e = py
        .detach(|| Emitter::new(udp_connected_resolve((host.as_str(), port))?.into(), wire))
        .map_err(|e| Error::from(e).at(format!("{host}:{port}")))?;
    Ok(PyPanicEmitter::wrap(e))
}

/// Secure UDP crash emitter, shared key (60-byte frames).
#[pyfunction]
fn _panic_connect_secure_udp(
    py: Python<'_>,
    host: String,
    port: u16,
    key: &Bound<'_, PyAny>,
) -> PyResult<PyPanicEmitter> {
    connect_secure(py, host, port, key, false)
}

/// Secure UDP crash emitter, master key (64-byte frames, `K_agent` per pid).
#[pyfunction]
fn _panic_connect_secure_udp_master(
    py: Python<'_>,
    host: String,
    port: u16,
    master_key: &Bound<'_, PyAny>,
) -> PyResult<PyPanicEmitter> {
    connect_secure(py, host, port, master_key, true)
}

/// Fire the active emitter once; `signum` names the signal the hook ran
/// for (its terminal cause), else the frame reports a crash. True if a
/// datagram went out.
#[pyfunction]
#[pyo3(signature = (signum=None))]
fn _panic_fire(signum: Option<u8>) -> bool {
    let payload = signum.map_or(0, varta_core::cause::signal_payload);
    core_panic::fire_with(payload) == Fire::Sent
}

/// True while a crash emitter is active.
#[pyfunction]
fn _panic_active() -> bool {
    core_panic::is_installed()
}

/// True once the native fatal-signal handlers are installed in this process.
#[pyfunction]
fn _panic_fatal_signals_installed() -> bool {
    core_panic::fatal_signal_handlers_installed()
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyPanicEmitter>()?;
    m.add_function(wrap_pyfunction!(_panic_connect_uds, m)?)?;
    m.add_function(wrap_pyfunction!(_panic_connect_udp, m)?)?;
    m.add_function(wrap_pyfunction!(_panic_connect_secure_udp, m)?)?;
    m.add_function(wrap_pyfunction!(_panic_connect_secure_udp_master, m)?)?;
    m.add_function(wrap_pyfunction!(_panic_fire, m)?)?;
    m.add_function(wrap_pyfunction!(_panic_active, m)?)?;
    m.add_function(wrap_pyfunction!(_panic_fatal_signals_installed, m)?)?;
    Ok(())
}
