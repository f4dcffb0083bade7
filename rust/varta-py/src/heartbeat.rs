//! `varta.Heartbeat`: a progress-gated heartbeat over the core
//! [`Heartbeat`] (`docs/agent.md#progress-heartbeats`).
//!
//! A frozen class: `progress()` is one relaxed atomic add on the core's
//! counter (no lock, no allocation, no system call). The core's beater thread
//! is pure Rust and never takes the GIL; `close()` detaches from the
//! interpreter while it waits for that thread, in bounded slices, checking
//! for signals between them.

use crate::agent::{install_forensics, Payload, Tx};
use crate::errors::Error;
use crate::pytypes::extract_status;
use crate::secure::extract_key;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple, PyType};
use std::io;
use std::path::PathBuf;
use std::time::Duration;
use varta_core::agent::Agent;
use varta_core::heartbeat::Heartbeat;
use varta_core::secure::{Key, SessionMode};
use varta_core::transport::{DgramTransport, Endpoint};
use varta_core::transport_secure::SecureUdpTransport;

// The default `interval_ms` is 500 (a literal in each signature, so that
// the runtime signature shows it): a threshold of a few seconds is typical
// (`docs/agent.md#quick-start`).
/// Upper bound of `interval_ms` (one hour).
const MAX_INTERVAL_MS: u64 = 3_600_000;
/// How long `close()` waits for the beater before it checks for signals.
const STOP_SLICE: Duration = Duration::from_millis(50);

/// A progress-gated heartbeat: beats every `interval_ms` only if `progress()`
/// was called since the last beat.
#[pyclass(name = "Heartbeat", module = "varta", frozen)]
pub struct PyHeartbeat {
    hb: Heartbeat<Tx>,
    interval_ms: u64,
}

fn check_interval(interval_ms: i64) -> PyResult<u64> {
    u64::try_from(interval_ms)
        .ok()
        .filter(|ms| (1..=MAX_INTERVAL_MS).contains(ms))
        .ok_or_else(|| {
            PyValueError::new_err(format!(
                "interval_ms must be in 1..={MAX_INTERVAL_MS}, got {interval_ms}"
            ))
        })
}

impl PyHeartbeat {
    /// The one place every constructor finishes: build the transport
    /// without the GIL, wrap it in an agent, start the beater.
    fn start(
        py: Python<'_>,
        interval_ms: i64,
        forensics: bool,
        target: String,
        open: impl FnOnce() -> io::Result<Tx> + Send,
    ) -> PyResult<Self> {
        let interval_ms = check_interval(interval_ms)?;
        let hb = py
            .detach(|| {
                varta_core::fork::register()?;
                let agent = Agent::new(open()?)?;
                Heartbeat::start(agent, Duration::from_millis(interval_ms))
            })
            .map_err(|e| PyErr::from(Error::from(e).at(target)))?;
        install_forensics(py, forensics)?;
        Ok(PyHeartbeat { hb, interval_ms })
    }

    fn connect_secure(
        py: Python<'_>,
        addr: &Bound<'_, PyTuple>,
        key: Key,
        mode: SessionMode,
        interval_ms: i64,
        forensics: bool,
    ) -> PyResult<Self> {
        let (host, port): (String, u16) = addr.extract()?;
        let target = format!("{host}:{port}");
        PyHeartbeat::start(py, interval_ms, forensics, target, move || {
            let Endpoint::Udp(sa) = Endpoint::udp(&host, port)? else {
                unreachable!("Endpoint::udp returns a UDP endpoint")
            };
            Ok(Tx::Secure(match mode {
                SessionMode::Shared => SecureUdpTransport::connect_shared(sa, key)?,
                SessionMode::Master => SecureUdpTransport::connect_master(sa, key)?,
            }))
        })
    }
}

#[pymethods]
impl PyHeartbeat {
    /// Connect to the observer's Unix datagram socket at `path` and start
    /// beating every `interval_ms` while progress is made.
    #[classmethod]
    #[pyo3(signature = (path, *, interval_ms = 500, forensics = true))]
    fn connect(
        _cls: &Bound<'_, PyType>,
        py: Python<'_>,
        path: PathBuf,
        interval_ms: i64,
        forensics: bool,
    ) -> PyResult<Self> {
        let target = path.to_string_lossy().into_owned();
        PyHeartbeat::start(py, interval_ms, forensics, target, move || {
            DgramTransport::connect(Endpoint::unix(&path)?).map(Tx::Dgram)
        })
    }

    /// As `connect`, over plaintext UDP; `addr` is `(host, port)`.
    #[classmethod]
    #[pyo3(signature = (addr, *, interval_ms = 500, forensics = true))]
    fn connect_udp(
        _cls: &Bound<'_, PyType>,
        py: Python<'_>,
        addr: &Bound<'_, PyTuple>,
        interval_ms: i64,
        forensics: bool,
    ) -> PyResult<Self> {
        let (host, port): (String, u16) = addr.extract()?;
        let target = format!("{host}:{port}");
        PyHeartbeat::start(py, interval_ms, forensics, target, move || {
            DgramTransport::connect(Endpoint::udp(&host, port)?).map(Tx::Dgram)
        })
    }

    /// As `connect`, over secure UDP with a shared key.
    #[classmethod]
    #[pyo3(signature = (addr, key, *, interval_ms = 500, forensics = true))]
    fn connect_secure_udp(
        _cls: &Bound<'_, PyType>,
        py: Python<'_>,
        addr: &Bound<'_, PyTuple>,
        key: &Bound<'_, PyAny>,
        interval_ms: i64,
        forensics: bool,
    ) -> PyResult<Self> {
        let key = extract_key(key)?;
        PyHeartbeat::connect_secure(py, addr, key, SessionMode::Shared, interval_ms, forensics)
    }

    /// As `connect`, over secure UDP with a master key.
    #[classmethod]
    #[pyo3(signature = (addr, master_key, *, interval_ms = 500, forensics = true))]
    fn connect_secure_udp_with_master(
        _cls: &Bound<'_, PyType>,
        py: Python<'_>,
        addr: &Bound<'_, PyTuple>,
        master_key: &Bound<'_, PyAny>,
        interval_ms: i64,
        forensics: bool,
    ) -> PyResult<Self> {
        let key = extract_key(master_key)?;
        PyHeartbeat::connect_secure(py, addr, key, SessionMode::Master, interval_ms, forensics)
    }

    /// Record one unit of progress: the next tick beats. The hot-loop call.
    #[inline]
    fn progress(&self) {
        self.hb.progress();
    }

    /// The status (and payload) of the next beats, until set again. No
    /// payload: beats carry the progress count. `set_status()` restores
    /// `OK` with the progress count. Raises `ValueError` for `STALL` or an
    /// unknown status.
    #[pyo3(signature = (status = None, payload = None), text_signature = "($self, status=..., payload=None)")]
    fn set_status(
        &self,
        status: Option<&Bound<'_, PyAny>>,
        payload: Option<Payload>,
    ) -> PyResult<()> {
        let status = match status {
            Some(s) => extract_status(s)?,
            None => varta_core::frame::Status::Ok,
        };
        self.hb
            .set_status(status, payload.map(|p| p.0))
            .map_err(|e| PyValueError::new_err(format!("set_status: {e}")))
    }

    /// Progress calls so far.
    #[getter]
    fn progress_count(&self) -> u64 {
        self.hb.progress_count()
    }

    #[getter]
    fn interval_ms(&self) -> u64 {
        self.interval_ms
    }

    /// The beater thread runs (False after `close()` and in a forked child).
    #[getter]
    fn beating(&self) -> bool {
        self.hb.is_beating()
    }

    /// True after `close()`.
    #[getter]
    fn closed(&self, py: Python<'_>) -> bool {
        py.detach(|| self.hb.is_closed())
    }

    /// `{"sent", "dropped", "failed", "idle"}`: every tick is one of them
    /// (`idle`: no progress, nothing sent).
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.hb.stats();
        let d = PyDict::new(py);
        d.set_item("sent", s.sent)?;
        d.set_item("dropped", s.dropped)?;
        d.set_item("failed", s.failed)?;
        d.set_item("idle", s.idle)?;
        Ok(d)
    }

    /// Stop the beater and close the socket (idempotent). `final=True` first
    /// sends the clean-exit terminal frame, as `Varta.close(final=True)`.
    #[pyo3(signature = (r#final = false), text_signature = "($self, final=False)")]
    fn close(&self, py: Python<'_>, r#final: bool) -> PyResult<()> {
        while !py.detach(|| self.hb.stop(STOP_SLICE)) {
            py.check_signals()?;
        }
        py.detach(|| self.hb.finish(r#final));
        Ok(())
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    /// As `Varta`: leaving the block normally signs off with the clean-exit
    /// terminal frame; leaving it by an exception only closes.
    #[pyo3(signature = (*exc))]
    fn __exit__(&self, py: Python<'_>, exc: &Bound<'_, PyTuple>) -> PyResult<bool> {
        let clean = exc.iter().next().is_none_or(|t| t.is_none());
        self.close(py, clean)?;
        Ok(false)
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        let described = py.detach(|| {
            let a = self.hb.agent().lock();
            a.transport().map(|t| (t.describe(), a.nonce()))
        });
        match described {
            None => "<varta.Heartbeat closed>".to_owned(),
            Some((t, nonce)) => format!(
                "<varta.Heartbeat {t} interval_ms={} progress={} nonce={nonce}{}>",
                self.interval_ms,
                self.hb.progress_count(),
                if self.hb.is_beating() {
                    ""
                } else {
                    " not beating"
                }
            ),
        }
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyHeartbeat>()?;
    Ok(())
}
