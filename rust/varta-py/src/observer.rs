//! `varta.Observer` and its event classes: thin glue over
//! `varta_core::observer::Observer`.
//!
//! Ingest runs on the core's own thread ([`Pump`]): it drains the sockets,
//! runs the gates and the tracker and queues events without ever touching
//! Python. `poll()` takes from that queue with the GIL released, in slices
//! of at most 50 ms, and checks for signals between slices so Ctrl-C raises
//! `KeyboardInterrupt` promptly. Reads (`agents()`, `counters()`, …) lock the
//! observer briefly; the lock is never held while calling into Python.

use crate::pytypes::{
    decode_error_value, extract_origin, extract_status, extract_verdict, origin_obj, status_obj,
    types, verdict_obj,
};
use crate::errors::Error;
use crate::rows::PyPidRows as PidRowsPy;
use crate::secure::extract_key;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use varta_core::frame::Status;
use varta_core::observer::clock::{ClockSource, MonotonicClock};
use varta_core::observer::ingress::{CounterValue, Listener, WAIT_SLICE_NS};
use varta_core::observer::pump::{Pump, Taken, DEFAULT_QUEUE_CAPACITY};
use varta_core::observer::rows::PidRows;
use varta_core::observer::signals;
use varta_core::observer::tracker::{AgentView, EvictionPolicy, StallInfo};
use varta_core::observer::udp::{TransportTrust, UdpListener, UdpMode};
use varta_core::observer::{
    BeatOrigin, Event, Observer, ObserverConfig, ObserverError, TerminalCause, Verdict,
};
use varta_core::secure::{ReceiverConfig, SecureReceiver};

fn opt_repr(v: Option<u64>) -> String {
    v.map_or_else(|| "None".to_owned(), |v| v.to_string())
}

/// Python's repr of an optional str (ASCII names; quotes escaped).
fn py_str_repr(v: Option<&str>) -> String {
    v.map_or_else(
        || "None".to_owned(),
        |s| format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'")),
    )
}

fn status_repr(s: Status) -> String {
    format!("Status.{}", s.as_str().to_ascii_uppercase())
}

fn origin_repr(o: BeatOrigin) -> String {
    format!("BeatOrigin.{}", o.name())
}

fn py_status(v: &Bound<'_, PyAny>) -> PyResult<(Status, Py<PyAny>)> {
    let s = extract_status(v)?;
    Ok((s, status_obj(v.py(), s)?))
}

fn py_origin(v: &Bound<'_, PyAny>) -> PyResult<(BeatOrigin, Py<PyAny>)> {
    let o = extract_origin(v)?;
    Ok((o, origin_obj(v.py(), o)?))
}

// ---------------------------------------------------------------- events

/// An accepted beat (only when the observer was built with `emit_beats=True`).
#[pyclass(name = "Beat", module = "varta", frozen)]
pub struct PyBeat {
    #[pyo3(get)]
    pid: u32,
    #[pyo3(get)]
    status: Py<PyAny>,
    #[pyo3(get)]
    payload: u32,
    #[pyo3(get)]
    nonce: u64,
    #[pyo3(get)]
    origin: Py<PyAny>,
    #[pyo3(get)]
    pid_ns_inode: Option<u64>,
    #[pyo3(get)]
    observer_ns: u64,
    st: Status,
    or: BeatOrigin,
}

#[pymethods]
impl PyBeat {
    #[new]
    #[pyo3(signature = (pid, status, payload, nonce, origin, pid_ns_inode, observer_ns))]
    fn new(
        pid: u32,
        status: &Bound<'_, PyAny>,
        payload: u32,
        nonce: u64,
        origin: &Bound<'_, PyAny>,
        pid_ns_inode: Option<u64>,
        observer_ns: u64,
    ) -> PyResult<Self> {
        let (st, status) = py_status(status)?;
        let (or, origin) = py_origin(origin)?;
        Ok(PyBeat {
            pid,
            status,
            payload,
            nonce,
            origin,
            pid_ns_inode,
            observer_ns,
            st,
            or,
        })
    }

    fn __repr__(&self) -> String {
        format!(
            "Beat(pid={}, status={}, payload={}, nonce={}, origin={}, pid_ns_inode={}, observer_ns={})",
            self.pid,
            status_repr(self.st),
            self.payload,
            self.nonce,
            origin_repr(self.or),
            opt_repr(self.pid_ns_inode),
            self.observer_ns
        )
    }
}

/// A tracked pid fell silent for the threshold (once per silence run).
#[pyclass(name = "Stall", module = "varta", frozen)]
pub struct PyStall {
    #[pyo3(get)]
    pid: u32,
    #[pyo3(get)]
    last_nonce: u64,
    #[pyo3(get)]
    last_ns: u64,
    #[pyo3(get)]
    origin: Py<PyAny>,
    #[pyo3(get)]
    pid_ns_inode: Option<u64>,
    #[pyo3(get)]
    generation: Option<u64>,
    #[pyo3(get)]
    observer_ns: u64,
    /// Why the agent went silent (`varta.Verdict`).
    #[pyo3(get)]
    verdict: Py<PyAny>,
    /// The process's command name, when the observer read it.
    #[pyo3(get)]
    comm: Option<String>,
    /// The cause announced by the agent's last (terminal) frame:
    /// `"clean_exit"`, `"crash"`, a signal name such as `"SIGTERM"`, or None.
    #[pyo3(get)]
    cause: Option<String>,
    or: BeatOrigin,
    vd: Verdict,
}

#[pymethods]
impl PyStall {
    #[new]
    #[pyo3(signature = (
        pid, last_nonce, last_ns, origin, pid_ns_inode, generation, observer_ns,
        verdict=None, comm=None, cause=None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        pid: u32,
        last_nonce: u64,
        last_ns: u64,
        origin: &Bound<'_, PyAny>,
        pid_ns_inode: Option<u64>,
        generation: Option<u64>,
        observer_ns: u64,
        verdict: Option<&Bound<'_, PyAny>>,
        comm: Option<String>,
        cause: Option<String>,
    ) -> PyResult<Self> {
        let (or, origin) = py_origin(origin)?;
        let vd = verdict.map_or(Ok(Verdict::Unknown), extract_verdict)?;
        Ok(PyStall {
            pid,
            last_nonce,
            last_ns,
            origin,
            pid_ns_inode,
            generation,
            observer_ns,
            verdict: verdict_obj(py, vd)?,
            comm,
            cause,
            or,
            vd,
        })
    }

    fn __repr__(&self) -> String {
        format!(
            "Stall(pid={}, last_nonce={}, last_ns={}, origin={}, pid_ns_inode={}, generation={}, observer_ns={}, verdict=Verdict.{}, comm={}, cause={})",
            self.pid,
            self.last_nonce,
            self.last_ns,
            origin_repr(self.or),
            opt_repr(self.pid_ns_inode),
            opt_repr(self.generation),
            self.observer_ns,
            self.vd.as_str().to_ascii_uppercase(),
            py_str_repr(self.comm.as_deref()),
            py_str_repr(self.cause.as_deref()),
        )
    }
}

impl PyStall {
    fn from_core(py: Python<'_>, s: &StallInfo) -> PyResult<Self> {
        Ok(PyStall {
            pid: s.pid,
            last_nonce: s.last_nonce,
            last_ns: s.last_ns,
            origin: origin_obj(py, s.origin)?,
            pid_ns_inode: s.pid_ns_inode,
            generation: s.generation,
            observer_ns: s.observer_ns,
            verdict: verdict_obj(py, s.verdict)?,
            comm: s.comm.map(|c| c.to_string_lossy()),
            cause: s.cause.map(TerminalCause::name),
            or: s.origin,
            vd: s.verdict,
        })
    }
}

/// The observer itself could not look for `duration_ns` (its process was
/// stopped, the host stalled): every armed deadline was pushed back by that
/// much, so no agent is blamed for beats it could not receive.
#[pyclass(name = "Blind", module = "varta", frozen)]
pub struct PyBlind {
    #[pyo3(get)]
    started_ns: u64,
    #[pyo3(get)]
    duration_ns: u64,
    #[pyo3(get)]
    observer_ns: u64,
}

#[pymethods]
impl PyBlind {
    #[new]
    fn new(started_ns: u64, duration_ns: u64, observer_ns: u64) -> Self {
        PyBlind {
            started_ns,
            duration_ns,
            observer_ns,
        }
    }

    fn __repr__(&self) -> String {
        format!(
            "Blind(started_ns={}, duration_ns={}, observer_ns={})",
            self.started_ns, self.duration_ns, self.observer_ns
        )
    }
}

/// A 32-byte datagram that failed VLP decoding; `error` is a `varta.DecodeError`.
#[pyclass(name = "Decode", module = "varta", frozen)]
pub struct PyDecode {
    #[pyo3(get)]
    error: Py<PyAny>,
    #[pyo3(get)]
    observer_ns: u64,
}

#[pymethods]
impl PyDecode {
    #[new]
    fn new(py: Python<'_>, error: Bound<'_, PyAny>, observer_ns: u64) -> PyResult<Self> {
        if !error.is_instance(types(py)?.decode_error.bind(py))? {
            return Err(PyTypeError::new_err("error must be a varta.DecodeError"));
        }
        Ok(PyDecode {
            error: error.unbind(),
            observer_ns,
        })
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let e = self.error.bind(py);
        Ok(format!(
            "Decode(error=DecodeError({}, {}), observer_ns={})",
            e.getattr("kind")?.repr()?,
            e.str()?.repr()?,
            self.observer_ns
        ))
    }
}

/// The kernel-attested sender pid differs from the pid the frame claims.
#[pyclass(name = "AuthFailure", module = "varta", frozen)]
pub struct PyAuthFailure {
    #[pyo3(get)]
    claimed_pid: u32,
    #[pyo3(get)]
    observer_ns: u64,
}

#[pymethods]
impl PyAuthFailure {
    #[new]
    fn new(claimed_pid: u32, observer_ns: u64) -> Self {
        PyAuthFailure {
            claimed_pid,
            observer_ns,
        }
    }

    fn __repr__(&self) -> String {
        format!(
            "AuthFailure(claimed_pid={}, observer_ns={})",
            self.claimed_pid, self.observer_ns
        )
    }
}

/// A beat whose origin is weaker than the origin pinned on the pid's slot.
#[pyclass(name = "OriginConflict", module = "varta", frozen)]
pub struct PyOriginConflict {
    #[pyo3(get)]
    claimed_pid: u32,
    #[pyo3(get)]
    observed_origin: Py<PyAny>,
    #[pyo3(get)]
    slot_origin: Py<PyAny>,
    #[pyo3(get)]
    observer_ns: u64,
    observed: BeatOrigin,
    slot: BeatOrigin,
}

#[pymethods]
impl PyOriginConflict {
    #[new]
    fn new(
        claimed_pid: u32,
        observed_origin: &Bound<'_, PyAny>,
        slot_origin: &Bound<'_, PyAny>,
        observer_ns: u64,
    ) -> PyResult<Self> {
        let (observed, observed_origin) = py_origin(observed_origin)?;
        let (slot, slot_origin) = py_origin(slot_origin)?;
        Ok(PyOriginConflict {
            claimed_pid,
            observed_origin,
            slot_origin,
            observer_ns,
            observed,
            slot,
        })
    }

    fn __repr__(&self) -> String {
        format!(
            "OriginConflict(claimed_pid={}, observed_origin={}, slot_origin={}, observer_ns={})",
            self.claimed_pid,
            origin_repr(self.observed),
            origin_repr(self.slot),
            self.observer_ns
        )
    }
}

/// A pid-namespace refusal (ingress gate: `observer_ns_inode` is the
/// observer's own namespace; tracker first-namespace-wins: the slot's).
#[pyclass(name = "NamespaceConflict", module = "varta", frozen)]
pub struct PyNamespaceConflict {
    #[pyo3(get)]
    claimed_pid: u32,
    #[pyo3(get)]
    observed_ns_inode: Option<u64>,
    #[pyo3(get)]
    observer_ns_inode: Option<u64>,
    #[pyo3(get)]
    observer_ns: u64,
}

#[pymethods]
impl PyNamespaceConflict {
    #[new]
    fn new(
        claimed_pid: u32,
        observed_ns_inode: Option<u64>,
        observer_ns_inode: Option<u64>,
        observer_ns: u64,
    ) -> Self {
        PyNamespaceConflict {
            claimed_pid,
            observed_ns_inode,
            observer_ns_inode,
            observer_ns,
        }
    }

    fn __repr__(&self) -> String {
        format!(
            "NamespaceConflict(claimed_pid={}, observed_ns_inode={}, observer_ns_inode={}, observer_ns={})",
            self.claimed_pid,
            opt_repr(self.observed_ns_inode),
            opt_repr(self.observer_ns_inode),
            self.observer_ns
        )
    }
}

/// A receive error, missing credentials or a sender with a foreign uid.
#[pyclass(name = "Io", module = "varta", frozen)]
pub struct PyIo {
    #[pyo3(get)]
    error: String,
    #[pyo3(get)]
    errno: Option<i32>,
    #[pyo3(get)]
    observer_ns: u64,
}

#[pymethods]
impl PyIo {
    #[new]
    #[pyo3(signature = (error, errno, observer_ns))]
    fn new(error: String, errno: Option<i32>, observer_ns: u64) -> Self {
        PyIo {
            error,
            errno,
            observer_ns,
        }
    }

    fn __repr__(&self) -> String {
        format!(
            "Io(error={:?}, errno={}, observer_ns={})",
            self.error,
            self.errno
                .map_or_else(|| "None".to_owned(), |e| e.to_string()),
            self.observer_ns
        )
    }
}

/// A datagram whose control data was truncated (`MSG_CTRUNC`); discarded.
#[pyclass(name = "CtrlTruncated", module = "varta", frozen)]
pub struct PyCtrlTruncated {
    #[pyo3(get)]
    error: String,
    #[pyo3(get)]
    observer_ns: u64,
}

#[pymethods]
impl PyCtrlTruncated {
    #[new]
    fn new(error: String, observer_ns: u64) -> Self {
        PyCtrlTruncated { error, observer_ns }
    }

    fn __repr__(&self) -> String {
        format!(
            "CtrlTruncated(error={:?}, observer_ns={})",
            self.error, self.observer_ns
        )
    }
}

/// One tracked pid, as `Observer.agents()` / `Observer.agent()` report it.
/// `status` is the last accepted beat's status; `stalled` says whether a
/// stall was emitted for the current silence run.
#[pyclass(name = "AgentInfo", module = "varta", frozen)]
pub struct PyAgentInfo {
    #[pyo3(get)]
    pid: u32,
    #[pyo3(get)]
    status: Py<PyAny>,
    #[pyo3(get)]
    origin: Py<PyAny>,
    #[pyo3(get)]
    beats: u64,
    #[pyo3(get)]
    stalls: u64,
    #[pyo3(get)]
    last_nonce: u64,
    #[pyo3(get)]
    last_ns: u64,
    #[pyo3(get)]
    age_ns: u64,
    #[pyo3(get)]
    stalled: bool,
    #[pyo3(get)]
    pid_ns_inode: Option<u64>,
    #[pyo3(get)]
    generation: Option<u64>,
    /// The verdict of the current stall while `stalled`, else None.
    #[pyo3(get)]
    verdict: Option<Py<PyAny>>,
    st: Status,
    or: BeatOrigin,
}

impl PyAgentInfo {
    fn from_core(py: Python<'_>, a: &AgentView, now_ns: u64) -> PyResult<Self> {
        Ok(PyAgentInfo {
            pid: a.pid,
            status: status_obj(py, a.status)?,
            origin: origin_obj(py, a.origin)?,
            beats: a.beats,
            stalls: a.stalls,
            last_nonce: a.last_nonce,
            last_ns: a.last_ns,
            age_ns: now_ns.saturating_sub(a.last_ns),
            stalled: a.stalled,
            pid_ns_inode: a.pid_ns_inode,
            generation: a.generation,
            verdict: a.verdict.map(|v| verdict_obj(py, v)).transpose()?,
            st: a.status,
            or: a.origin,
        })
    }
}

#[pymethods]
impl PyAgentInfo {
    #[new]
    #[pyo3(signature = (
        pid, status, origin, beats, stalls, last_nonce, last_ns, age_ns, stalled,
        pid_ns_inode, generation, verdict=None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        pid: u32,
        status: &Bound<'_, PyAny>,
        origin: &Bound<'_, PyAny>,
        beats: u64,
        stalls: u64,
        last_nonce: u64,
        last_ns: u64,
        age_ns: u64,
        stalled: bool,
        pid_ns_inode: Option<u64>,
        generation: Option<u64>,
        verdict: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let (st, status) = py_status(status)?;
        let (or, origin) = py_origin(origin)?;
        let verdict = verdict
            .map(|v| verdict_obj(v.py(), extract_verdict(v)?))
            .transpose()?;
        Ok(PyAgentInfo {
            pid,
            status,
            origin,
            beats,
            stalls,
            last_nonce,
            last_ns,
            age_ns,
            stalled,
            pid_ns_inode,
            generation,
            verdict,
            st,
            or,
        })
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let verdict = match &self.verdict {
            Some(v) => v.bind(py).repr()?.to_string(),
            None => "None".to_owned(),
        };
        Ok(format!(
            "AgentInfo(pid={}, status={}, origin={}, beats={}, stalls={}, last_nonce={}, last_ns={}, age_ns={}, stalled={}, pid_ns_inode={}, generation={}, verdict={})",
            self.pid,
            status_repr(self.st),
            origin_repr(self.or),
            self.beats,
            self.stalls,
            self.last_nonce,
            self.last_ns,
            self.age_ns,
            if self.stalled { "True" } else { "False" },
            opt_repr(self.pid_ns_inode),
            opt_repr(self.generation),
            verdict
        ))
    }
}

fn event_to_py(py: Python<'_>, ev: Event) -> PyResult<Py<PyAny>> {
    Ok(match ev {
        Event::Beat {
            pid,
            status,
            payload,
            nonce,
            origin,
            pid_ns_inode,
            observer_ns,
        } => Py::new(
            py,
            PyBeat {
                pid,
                status: status_obj(py, status)?,
                payload,
                nonce,
                origin: origin_obj(py, origin)?,
                pid_ns_inode,
                observer_ns,
                st: status,
                or: origin,
            },
        )?
        .into_any(),
        Event::Stall(s) => Py::new(py, PyStall::from_core(py, &s)?)?.into_any(),
        Event::Decode { error, observer_ns } => Py::new(
            py,
            PyDecode {
                error: decode_error_value(py, &error)?,
                observer_ns,
            },
        )?
        .into_any(),
        Event::AuthFailure {
            claimed_pid,
            observer_ns,
        } => Py::new(
            py,
            PyAuthFailure {
                claimed_pid,
                observer_ns,
            },
        )?
        .into_any(),
        Event::OriginConflict {
            claimed_pid,
            observed_origin,
            slot_origin,
            observer_ns,
        } => Py::new(
            py,
            PyOriginConflict {
                claimed_pid,
                observed_origin: origin_obj(py, observed_origin)?,
                slot_origin: origin_obj(py, slot_origin)?,
                observer_ns,
                observed: observed_origin,
                slot: slot_origin,
            },
        )?
        .into_any(),
        Event::NamespaceConflict {
            claimed_pid,
            observed_ns_inode,
            observer_ns_inode,
            observer_ns,
        } => Py::new(
            py,
            PyNamespaceConflict {
                claimed_pid,
                observed_ns_inode,
                observer_ns_inode,
                observer_ns,
            },
        )?
        .into_any(),
        Event::Io {
            error,
            errno,
            observer_ns,
        } => Py::new(
            py,
            PyIo {
                error: error.into_owned(),
                errno,
                observer_ns,
            },
        )?
        .into_any(),
        Event::CtrlTruncated { error, observer_ns } => Py::new(
            py,
            PyCtrlTruncated {
                error: error.into_owned(),
                observer_ns,
            },
        )?
        .into_any(),
        Event::Blind {
            started_ns,
            duration_ns,
            observer_ns,
        } => Py::new(
            py,
            PyBlind {
                started_ns,
                duration_ns,
                observer_ns,
            },
        )?
        .into_any(),
    })
}

// -------------------------------------------------------------- observer

/// Events handed to Python per `poll()` batch at most.
const POLL_BATCH: usize = 4096;

fn closed_error() -> PyErr {
    PyValueError::new_err("operation on a closed Observer")
}

/// Validate the UDP keyword arguments into what the listener is bound
/// with: secure with any key, plaintext only when asked for, nothing
/// without a port (then no other UDP argument may be given).
#[allow(clippy::too_many_arguments)]
fn udp_setup(
    port: Option<u16>,
    bind_addr: Option<&str>,
    keys: Option<&Bound<'_, PyAny>>,
    master_key: Option<&Bound<'_, PyAny>>,
    plaintext: bool,
    trust: &str,
    threshold_ns: u64,
) -> PyResult<Option<(SocketAddr, UdpMode, TransportTrust)>> {
    let trust = match trust {
        "untrusted" => TransportTrust::Untrusted,
        "operator" => TransportTrust::Operator,
        other => {
            return Err(PyValueError::new_err(format!(
                "udp_trust must be 'untrusted' or 'operator', not {other:?}"
            )))
        }
    };
    let mut shared = Vec::new();
    if let Some(ks) = keys {
        if ks.is_instance_of::<pyo3::types::PyString>() {
            return Err(PyTypeError::new_err(
                "keys must be a sequence of varta.Key, not str",
            ));
        }
        for k in ks.try_iter()? {
            shared.push(extract_key(&k?)?);
        }
    }
    let master = master_key.map(extract_key).transpose()?;
    let secure = !shared.is_empty() || master.is_some();
    let Some(port) = port else {
        if secure || plaintext || bind_addr.is_some() || trust != TransportTrust::Untrusted {
            return Err(PyValueError::new_err(
                "keys, master_key, plaintext_udp, udp_bind_addr and udp_trust need udp_port",
            ));
        }
        return Ok(None);
    };
    if secure && plaintext {
        return Err(PyValueError::new_err(
            "plaintext_udp=True and keys are exclusive: one UDP listener is either secure or plaintext",
        ));
    }
    if !secure && !plaintext {
        return Err(PyValueError::new_err(
            "udp_port without keys or master_key needs plaintext_udp=True (unauthenticated UDP)",
        ));
    }
    let ip: IpAddr = match bind_addr {
        Some(a) => a.parse().map_err(|_| {
            PyValueError::new_err(format!("udp_bind_addr {a:?} is not an IP address"))
        })?,
        None if secure => IpAddr::V4(Ipv4Addr::LOCALHOST),
        None => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    };
    let mode = if secure {
        let rx = SecureReceiver::new(ReceiverConfig {
            shared_keys: shared,
            master_key: master,
            session_restart_gap_ns: threshold_ns,
        })
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
        UdpMode::Secure(Box::new(rx))
    } else {
        UdpMode::Plain
    };
    Ok(Some((SocketAddr::new(ip, port), mode, trust)))
}

/// Receives beats, tracks every pid and reports stalls (`varta.Observer`).
#[pyclass(name = "Observer", module = "varta", frozen)]
pub struct PyObserver {
    pump: Pump,
    socket_path: Option<String>,
    threshold_ms: u64,
    udp_address: Option<(String, u16)>,
    udp_rcvbuf_bytes: Option<u64>,
}

impl PyObserver {
    /// Run `f` on the locked core observer (brief: ingest waits for it).
    fn with_obs<R>(&self, f: impl FnOnce(&mut Observer) -> R) -> R {
        f(&mut self.pump.observer())
    }

    /// One GIL-free wait of at most one slice (50 ms) for queued events.
    fn step(&self, deadline: Option<Instant>) -> (Taken, Vec<Event>) {
        let slice = Duration::from_nanos(WAIT_SLICE_NS);
        let wait = deadline.map_or(slice, |d| {
            d.saturating_duration_since(Instant::now()).min(slice)
        });
        let mut out = Vec::new();
        let taken = self.pump.take_events(&mut out, POLL_BATCH, wait);
        (taken, out)
    }
}

#[pymethods]
impl PyObserver {
    #[new]
    #[pyo3(signature = (
        socket_path, threshold_ms, *, socket_mode=0o600, capacity=256, eviction="strict",
        eviction_scan_window=256, uds_rcvbuf_bytes=1_048_576, max_beat_rate=100,
        global_beat_rate=5000, global_beat_burst=10000, allow_cross_namespace=false,
        clock="monotonic", emit_beats=true, udp_port=None, udp_bind_addr=None, keys=None,
        master_key=None, plaintext_udp=false, udp_trust="untrusted", udp_rcvbuf_bytes=1_048_576,
        exit_watch=true, ingest_thread=true
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        socket_path: Option<PathBuf>,
        threshold_ms: u64,
        socket_mode: u32,
        capacity: usize,
        eviction: &str,
        eviction_scan_window: usize,
        uds_rcvbuf_bytes: u32,
        max_beat_rate: u32,
        global_beat_rate: u32,
        global_beat_burst: u32,
        allow_cross_namespace: bool,
        clock: &str,
        emit_beats: bool,
        udp_port: Option<u16>,
        udp_bind_addr: Option<&str>,
        keys: Option<Bound<'_, PyAny>>,
        master_key: Option<Bound<'_, PyAny>>,
        plaintext_udp: bool,
        udp_trust: &str,
        udp_rcvbuf_bytes: u32,
        exit_watch: bool,
        ingest_thread: bool,
    ) -> PyResult<Self> {
        if threshold_ms == 0 {
            return Err(PyValueError::new_err("threshold_ms must be >= 1"));
        }
        let threshold_ns = threshold_ms
            .checked_mul(1_000_000)
            .ok_or_else(|| PyValueError::new_err("threshold_ms is too large"))?;
        let eviction = EvictionPolicy::from_name(eviction).ok_or_else(|| {
            PyValueError::new_err(format!(
                "eviction must be 'strict' or 'balanced', not {eviction:?}"
            ))
        })?;
        let source = ClockSource::from_name(clock).ok_or_else(|| {
            PyValueError::new_err(format!(
                "clock must be 'monotonic' or 'boottime', not {clock:?}"
            ))
        })?;
        if udp_rcvbuf_bytes > i32::MAX as u32 {
            return Err(PyValueError::new_err(format!(
                "udp_rcvbuf_bytes {udp_rcvbuf_bytes} exceeds {}",
                i32::MAX
            )));
        }
        let udp = udp_setup(
            udp_port,
            udp_bind_addr,
            keys.as_ref(),
            master_key.as_ref(),
            plaintext_udp,
            udp_trust,
            threshold_ns,
        )?;
        let mut cfg = ObserverConfig::new(socket_path.clone(), threshold_ns);
        cfg.socket_mode = socket_mode;
        cfg.tracker.capacity = capacity;
        cfg.tracker.eviction = eviction;
        cfg.tracker.scan_window = eviction_scan_window;
        cfg.uds_rcvbuf_bytes = uds_rcvbuf_bytes;
        cfg.max_beat_rate = max_beat_rate;
        cfg.global_beat_rate = global_beat_rate;
        cfg.global_beat_burst = global_beat_burst;
        cfg.allow_cross_namespace = allow_cross_namespace;
        cfg.emit_beats = emit_beats;
        cfg.exit_watch = exit_watch;
        let obs = py
            .detach(move || -> Result<Observer, ObserverError> {
                let clock = MonotonicClock::new(source)?;
                let mut obs = Observer::new(cfg, Box::new(clock))?;
                if let Some((addr, mode, trust)) = udp {
                    let l = UdpListener::bind(addr, mode, trust, udp_rcvbuf_bytes)?;
                    obs.add_listener(Listener::Udp(l));
                }
                Ok(obs)
            })
            .map_err(Error::from)?;
        let udp_address = obs.udp_local_addr().map(|a| (a.ip().to_string(), a.port()));
        let udp_rcvbuf_bytes = obs.udp_rcvbuf_bytes();
        let pump = Pump::start(obs, DEFAULT_QUEUE_CAPACITY, ingest_thread).map_err(Error::from)?;
        Ok(PyObserver {
            pump,
            socket_path: socket_path.map(|p| p.to_string_lossy().into_owned()),
            threshold_ms,
            udp_address,
            udp_rcvbuf_bytes,
        })
    }

    /// One batch of events. Blocks (GIL released, signals checked at least
    /// every 50 ms) until at least one event is ready or `timeout` seconds
    /// elapse (`None` = no limit); then returns an iterator over the batch,
    /// empty on timeout or once the daemon's stop-signal latch is set.
    #[pyo3(signature = (timeout=None))]
    fn poll<'py>(&self, py: Python<'py>, timeout: Option<f64>) -> PyResult<Bound<'py, PyAny>> {
        let deadline = match timeout {
            None => None,
            Some(t) if t.is_nan() => return Err(PyValueError::new_err("timeout must not be NaN")),
            Some(t) if t.is_infinite() && t > 0.0 => None,
            Some(t) => {
                let d = Duration::try_from_secs_f64(t.max(0.0)).unwrap_or(Duration::MAX);
                Instant::now().checked_add(d)
            }
        };
        if self.pump.is_closed() {
            return Err(closed_error());
        }
        loop {
            match py.detach(|| self.step(deadline)) {
                (Taken::Events, events) => {
                    let items = events
                        .into_iter()
                        .map(|e| event_to_py(py, e))
                        .collect::<PyResult<Vec<_>>>()?;
                    return PyList::new(py, items)?
                        .into_any()
                        .try_iter()
                        .map(Bound::into_any);
                }
                (Taken::Closed, _) => return Err(closed_error()),
                (Taken::Timeout, _) => {
                    if deadline.is_some_and(|d| Instant::now() >= d)
                        || signals::stop_signal().is_some()
                    {
                        return PyList::empty(py).into_any().try_iter().map(Bound::into_any);
                    }
                    py.check_signals()?;
                }
            }
        }
    }

    /// Every tracked pid.
    fn agents(&self, py: Python<'_>) -> PyResult<Vec<PyAgentInfo>> {
        let (views, now): (Vec<AgentView>, u64) =
            self.with_obs(|o| (o.agents().collect(), o.now_ns()));
        views
            .iter()
            .map(|a| PyAgentInfo::from_core(py, a, now))
            .collect()
    }

    /// Exporter rows of every tracked pid (`varta.PidRows`): one copy
    /// under the lock, sorted after it with the GIL released.
    fn pid_rows(&self, py: Python<'_>) -> PidRowsPy {
        let rows = self.with_obs(|o| PidRows::copy_from(o.tracker()));
        PidRowsPy::wrap(py.detach(move || PidRows::new(rows)))
    }

    /// One tracked pid, or `None`.
    fn agent(&self, py: Python<'_>, pid: i64) -> PyResult<Option<PyAgentInfo>> {
        let Ok(pid) = u32::try_from(pid) else {
            return Ok(None);
        };
        let (view, now) = self.with_obs(|o| (o.agent(pid), o.now_ns()));
        view.map(|a| PyAgentInfo::from_core(py, &a, now))
            .transpose()
    }

    /// Counters keyed by Prometheus family name (no `varta_` prefix, no
    /// `_total`); labelled families are dicts with every label present.
    fn counters<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let mut entries = self.with_obs(|o| o.counters());
        let queue = self.pump.queue_stats();
        entries.push((
            "observer_events_dropped",
            CounterValue::Labels(vec![
                ("beat", queue.dropped_beats),
                ("other", queue.dropped_other),
            ]),
        ));
        let d = PyDict::new(py);
        for (k, v) in entries {
            match v {
                CounterValue::Int(n) => d.set_item(k, n)?,
                CounterValue::Labels(ls) => {
                    let sub = PyDict::new(py);
                    for (l, n) in ls {
                        sub.set_item(l, n)?;
                    }
                    d.set_item(k, sub)?;
                }
            }
        }
        Ok(d)
    }

    /// Pids removed from the tracker (eviction, recycle retirement) since
    /// the last call.
    fn take_removed(&self) -> Vec<u32> {
        let mut out = Vec::new();
        self.with_obs(|o| o.take_removed(&mut out));
        out
    }

    /// Whether the Unix listener receives each sender's pidfd
    /// (`SO_PASSPIDFD`, Linux ≥ 6.5) and checks `/proc` identity reads
    /// against it; `False` = credentials only; `None` = no Unix listener.
    #[getter]
    fn pidfd_identity(&self) -> Option<bool> {
        self.with_obs(|o| o.uds_pidfd_mode())
    }

    /// Identity bookkeeping (not Prometheus families): pidfds received,
    /// closed and unavailable on the Unix listener, and `/proc` identity
    /// reads vouched for by a pidfd or refused because the sender exited.
    fn identity_counters<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let (pidfds, ingress, exits) = self.with_obs(|o| {
            (
                o.uds_pidfd_counters().unwrap_or_default(),
                *o.ingress_counters(),
                o.exit_watch_counters(),
            )
        });
        let queue = self.pump.queue_stats();
        let d = PyDict::new(py);
        d.set_item("exit_watch", exits.is_some())?;
        let exits = exits.unwrap_or_default();
        d.set_item("exit_watch_watched", exits.watched)?;
        d.set_item("exit_watch_unavailable", exits.unavailable)?;
        d.set_item("exit_watch_exits", exits.exits)?;
        d.set_item("event_queue_len", queue.len)?;
        d.set_item("event_queue_max_len", queue.max_len)?;
        d.set_item("pidfds_received", pidfds.received)?;
        d.set_item("pidfds_closed", pidfds.closed)?;
        d.set_item("pidfds_unavailable", pidfds.unavailable)?;
        d.set_item("identity_pidfd_verified", ingress.identity_pidfd_verified)?;
        d.set_item("identity_sender_exited", ingress.identity_sender_exited)?;
        Ok(d)
    }

    /// The observer clock: ns since the observer started.
    fn now_ns(&self) -> u64 {
        self.with_obs(|o| o.now_ns())
    }

    /// When the next stall is due (observer ns), if any pid is armed.
    fn next_deadline_ns(&self) -> Option<u64> {
        self.with_obs(|o| o.next_deadline_ns())
    }

    #[getter]
    fn socket_path(&self) -> Option<String> {
        self.socket_path.clone()
    }

    #[getter]
    fn threshold_ms(&self) -> u64 {
        self.threshold_ms
    }

    /// The bound UDP listener address `(host, port)`, or `None`.
    #[getter]
    fn udp_address(&self) -> Option<(String, u16)> {
        self.udp_address.clone()
    }

    /// The UDP listener's effective `SO_RCVBUF` as the kernel reports it
    /// (Linux doubles the request, capped by `net.core.rmem_max`), or `None`.
    #[getter]
    fn udp_rcvbuf_bytes(&self) -> Option<u64> {
        self.udp_rcvbuf_bytes
    }

    #[getter]
    fn closed(&self) -> bool {
        self.pump.is_closed()
    }

    /// Stop listening. Idempotent; unlinks the socket file only if it is
    /// still the one this observer bound (same device and inode). The
    /// tracker stays readable.
    fn close(&self, py: Python<'_>) {
        // Joining the ingest thread takes at most one wake-up; it never
        // needs the GIL.
        py.detach(|| self.pump.close());
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, PyTuple>) -> bool {
        self.close(py);
        false
    }

    fn __repr__(&self) -> String {
        let tracked = self.with_obs(|o| o.tracker().len());
        let closed = self.pump.is_closed();
        format!(
            "Observer(socket_path={}, threshold_ms={}, tracked={}{})",
            self.socket_path
                .as_deref()
                .map_or_else(|| "None".to_owned(), |p| format!("{p:?}")),
            self.threshold_ms,
            tracked,
            if closed { ", closed" } else { "" }
        )
    }
}

// ------------------------------------------------------------ benchmarks

/// Benchmark helper: simulated pids (`layout`: "dense", "stride:N" or
/// "scattered") through the Rust tracker, one tracker per size, run in
/// interleaved chunks; returns per size (agents, bytes per agent, ns per
/// beat of each chunk).
#[pyfunction]
#[pyo3(signature = (sizes, beats_per_chunk, chunks, layout = "dense"))]
fn _bench_tracker_scaling(
    py: Python<'_>,
    sizes: Vec<u32>,
    beats_per_chunk: u64,
    chunks: usize,
    layout: &str,
) -> PyResult<Vec<(u32, usize, Vec<f64>)>> {
    use varta_core::observer::bench::{bench_tracker_scaling_layout, PidLayout};
    let layout = PidLayout::parse(layout).ok_or_else(|| {
        PyValueError::new_err(format!(
            "layout {layout:?}: expected \"dense\", \"stride:1\"..\"stride:4\" or \"scattered\""
        ))
    })?;
    Ok(py.detach(move || {
        bench_tracker_scaling_layout(&sizes, beats_per_chunk, chunks, layout)
            .into_iter()
            .map(|r| (r.agents, r.bytes_per_agent, r.chunk_ns_per_beat))
            .collect()
    }))
}

/// Benchmark floor: a bare blocking `recvmsg` loop with credentials on a
/// fresh socket at `path` (with `pidfd`, also `SO_PASSPIDFD`, each pidfd
/// closed); returns (thread CPU ns, datagrams counted).
#[pyfunction]
#[pyo3(signature = (path, n, idle_timeout_ms=2000, rcvbuf=1_048_576, pidfd=false))]
fn _bench_recv_floor(
    py: Python<'_>,
    path: PathBuf,
    n: u64,
    idle_timeout_ms: u64,
    rcvbuf: u32,
    pidfd: bool,
) -> PyResult<(u64, u64)> {
    py.detach(move || {
        varta_core::observer::listener::bench_recv_floor(&path, n, rcvbuf, idle_timeout_ms, pidfd)
    })
    .map_err(|e| Error::from(e).into())
}

/// Thread CPU time (ns) as the Rust core measures it (for benchmarks).
#[pyfunction]
fn _thread_cpu_ns() -> u64 {
    varta_core::observer::listener::thread_cpu_ns()
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyObserver>()?;
    m.add_class::<PyBeat>()?;
    m.add_class::<PyStall>()?;
    m.add_class::<PyDecode>()?;
    m.add_class::<PyAuthFailure>()?;
    m.add_class::<PyOriginConflict>()?;
    m.add_class::<PyNamespaceConflict>()?;
    m.add_class::<PyIo>()?;
    m.add_class::<PyCtrlTruncated>()?;
    m.add_class::<PyBlind>()?;
    m.add_class::<PyAgentInfo>()?;
    m.add_function(wrap_pyfunction!(_bench_tracker_scaling, m)?)?;
    m.add_function(wrap_pyfunction!(_bench_recv_floor, m)?)?;
    m.add_function(wrap_pyfunction!(_thread_cpu_ns, m)?)?;
    Ok(())
}
