//! `varta.Observer`: thin glue over `varta_core::observer::Observer` (its
//! event classes are in `events.rs`).
//!
//! Ingest runs on the core's own thread ([`Pump`]): it drains the sockets,
//! runs the gates and the tracker and queues events without ever touching
//! Python. `poll()` takes from that queue with the GIL released, in slices
//! of at most 50 ms, and checks for signals between slices so Ctrl-C raises
//! `KeyboardInterrupt` promptly. Reads (`agents()`, `counters()`, …) lock the
//! observer briefly; the lock is never held while calling into Python.

use crate::errors::Error;
use crate::events::{event_to_py, AgentInfo};
use crate::rows::PyPidRows as PidRowsPy;
use crate::secure::extract_key;
use pyo3::exceptions::{PyOverflowError, PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyInt, PyList, PyString, PyTuple};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use varta_core::observer::clock::MonotonicClock;
use varta_core::observer::config::{OptionValue, UdpOptions};
use varta_core::observer::identity::ProcIdentity;
use varta_core::observer::ingress::{CounterValue, Listener, WAIT_SLICE_NS};
use varta_core::observer::procfs;
use varta_core::observer::pump::{Pump, Taken, DEFAULT_QUEUE_CAPACITY};
use varta_core::observer::rows::PidRows;
use varta_core::observer::signals;
use varta_core::observer::tracker::{AgentView, NetPeer, PeerKey};
use varta_core::observer::udp::{UdpListener, UdpMode};
use varta_core::observer::{Event, Observer, ObserverConfig, ObserverError};
use varta_core::secure::{ReceiverConfig, SecureReceiver, MAX_SHARED_KEYS};

// -------------------------------------------------------------- observer

/// Events handed to Python per `poll()` batch at most.
const POLL_BATCH: usize = 4096;

fn closed_error() -> PyErr {
    PyValueError::new_err("operation on a closed Observer")
}

/// A non-`str` keyword option's Python value as the core takes it (a
/// `str` is passed as borrowed text by the caller).
fn scalar_option(name: &str, v: &Bound<'_, PyAny>) -> PyResult<OptionValue<'static>> {
    if let Ok(b) = v.cast::<PyBool>() {
        Ok(OptionValue::Bool(b.is_true()))
    } else if v.is_instance_of::<PyInt>() {
        let n: i128 = v.extract()?;
        let n = u64::try_from(n)
            .map_err(|_| PyOverflowError::new_err(format!("{name} {n} is out of range")))?;
        Ok(OptionValue::Int(n))
    } else {
        Err(PyTypeError::new_err(format!(
            "{name} must be a bool, int or str, not {}",
            v.get_type().name()?
        )))
    }
}

/// The secure receiver for the `keys` / `master_key` options, if any.
fn secure_receiver(
    keys: Option<&Bound<'_, PyAny>>,
    master_key: Option<&Bound<'_, PyAny>>,
    threshold_ns: u64,
) -> PyResult<Option<SecureReceiver>> {
    let mut shared = Vec::new();
    if let Some(ks) = keys.filter(|k| !k.is_none()) {
        if ks.is_instance_of::<PyString>() {
            return Err(PyTypeError::new_err(
                "keys must be a sequence of varta.Key, not str",
            ));
        }
        for k in ks.try_iter()? {
            shared.push(extract_key(&k?)?);
        }
    }
    let master = master_key
        .filter(|k| !k.is_none())
        .map(extract_key)
        .transpose()?;
    if shared.is_empty() && master.is_none() {
        return Ok(None);
    }
    SecureReceiver::new(ReceiverConfig {
        shared_keys: shared,
        master_key: master,
        session_restart_gap_ns: threshold_ns,
    })
    .map(Some)
    .map_err(|e| PyValueError::new_err(e.to_string()))
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
    /// Every keyword option but the few handled here (`keys`,
    /// `master_key`, `ingest_thread`) goes to the core by name
    /// ([`ObserverConfig::set`]); left out or None keeps its default
    /// (`docs/configuration.md`).
    #[new]
    #[pyo3(signature = (socket_path, threshold_ms, **options))]
    fn new(
        py: Python<'_>,
        socket_path: Option<PathBuf>,
        threshold_ms: u64,
        options: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Self> {
        if threshold_ms == 0 {
            return Err(PyValueError::new_err("threshold_ms must be >= 1"));
        }
        let threshold_ns = threshold_ms
            .checked_mul(1_000_000)
            .ok_or_else(|| PyValueError::new_err("threshold_ms is too large"))?;
        let mut cfg = ObserverConfig::new(socket_path.clone(), threshold_ns);
        let (mut keys, mut master_key, mut ingest_thread) = (None, None, true);
        for (name, value) in options.into_iter().flatten() {
            let name: String = name.extract()?;
            match name.as_str() {
                "keys" => keys = Some(value),
                "master_key" => master_key = Some(value),
                "ingest_thread" => ingest_thread = value.extract()?,
                _ if value.is_none() => {}
                other => {
                    // A str, or a path (os.PathLike) as its str.
                    let text: Option<String> = if value.is_instance_of::<PyString>() {
                        Some(value.extract()?)
                    } else if value.hasattr(intern!(py, "__fspath__"))? {
                        Some(value.call_method0(intern!(py, "__fspath__"))?.extract()?)
                    } else {
                        None
                    };
                    let v = match &text {
                        Some(t) => OptionValue::Str(t),
                        None => scalar_option(other, &value)?,
                    };
                    cfg.set(other, v).map_err(Error::from)?;
                }
            }
        }
        let receiver = secure_receiver(keys.as_ref(), master_key.as_ref(), threshold_ns)?;
        let udp = cfg.udp.resolve(receiver.is_some()).map_err(Error::from)?;
        let udp_rcvbuf_bytes = cfg.udp.rcvbuf_bytes;
        let source = cfg.clock;
        let forensics = cfg.forensics();
        let obs = py
            .detach(move || -> Result<Observer, ObserverError> {
                let clock = MonotonicClock::new(source)?;
                let mut obs = Observer::new(cfg, Box::new(clock))?;
                if let Some((addr, trust)) = udp {
                    let mode = match receiver {
                        Some(rx) => UdpMode::Secure(Box::new(rx)),
                        None => UdpMode::Plain,
                    };
                    let l = UdpListener::bind(addr, mode, trust, udp_rcvbuf_bytes)?;
                    obs.add_listener(Listener::Udp(l));
                }
                Ok(obs)
            })
            .map_err(Error::from)?;
        let udp_address = obs.udp_local_addr().map(|a| (a.ip().to_string(), a.port()));
        let udp_rcvbuf_bytes = obs.udp_rcvbuf_bytes();
        let pump = py
            .detach(move || {
                Pump::start_with_forensics(obs, DEFAULT_QUEUE_CAPACITY, ingest_thread, forensics)
            })
            .map_err(Error::from)?;
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
                (Taken::Closed, _) if self.pump.is_closed() => return Err(closed_error()),
                // Not closed by anyone: the ingest thread died. Say so loudly
                // rather than report an empty, healthy-looking silence.
                (Taken::Closed, _) => {
                    return Err(pyo3::exceptions::PyRuntimeError::new_err(
                        "varta.Observer: the ingest thread stopped unexpectedly",
                    ))
                }
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

    /// Every tracked agent.
    fn agents(&self, py: Python<'_>) -> PyResult<Vec<AgentInfo>> {
        type Identified = (AgentView, Option<Arc<ProcIdentity>>);
        let (views, now): (Vec<Identified>, u64) = self.with_obs(|o| {
            (
                o.agents_identified()
                    .map(|(a, id)| (a, id.cloned()))
                    .collect(),
                o.now_ns(),
            )
        });
        views
            .iter()
            .map(|(a, id)| AgentInfo::from_view(py, a, id.as_deref(), now))
            .collect()
    }

    /// Exporter rows of every tracked pid (`varta.PidRows`), copied a
    /// chunk of slots per turn of the lock, which ingest may take in
    /// between (`docs/observer.md#agent-rows`), then sorted; the GIL is
    /// released throughout (waiting for the lock included).
    fn pid_rows(&self, py: Python<'_>) -> PidRowsPy {
        PidRowsPy::wrap(py.detach(|| {
            let mut rows = Vec::new();
            let mut next = Some(0);
            while let Some(start) = next {
                next = self.with_obs(|o| PidRows::copy_chunk(o.tracker(), start, &mut rows));
                std::thread::yield_now();
            }
            PidRows::from_unique(rows)
        }))
    }

    /// One tracked agent, or `None`: with `peer` (an address as
    /// `AgentInfo.peer` shows it) that network sender's agent `pid`;
    /// without, the Unix socket's agent `pid`, else the first network agent
    /// with that pid (docs/observer.md#agent-identity).
    #[pyo3(signature = (pid, peer=None))]
    fn agent(&self, py: Python<'_>, pid: i64, peer: Option<&str>) -> PyResult<Option<AgentInfo>> {
        let Ok(pid) = u32::try_from(pid) else {
            return Ok(None);
        };
        let addr = match peer {
            None => None,
            Some(text) => match text.parse::<IpAddr>() {
                Ok(a) => Some(a),
                Err(_) => return Ok(None),
            },
        };
        let (found, now) = self.with_obs(|o| {
            let found = match addr {
                None => o
                    .agent_any(pid)
                    .map(|a| (a, o.identity(a.peer.as_ref(), pid))),
                Some(addr) => peer_candidates(addr).find_map(|p| {
                    o.agent_at(Some(&p), pid)
                        .map(|a| (a, o.identity(Some(&p), pid)))
                }),
            };
            (found, o.now_ns())
        });
        found
            .map(|(a, id)| AgentInfo::from_view(py, &a, id.as_deref(), now))
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
        // Zero-filled when forensics is off (one family table either way).
        let f = self.pump.forensics_counters().unwrap_or_default();
        entries.push((
            "forensics_captures",
            CounterValue::Labels(vec![("sdk", f.captures_sdk), ("proc", f.captures_proc)]),
        ));
        entries.push((
            "forensics_capture_failures",
            CounterValue::Labels(f.failure_entries()),
        ));
        entries.push(("forensics_truncated", CounterValue::Int(f.truncated)));
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
        out.into_iter().map(|a| a.pid).collect()
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

// ------------------------------------------ benchmarks (`varta._varta._testing`)

/// Benchmark helper: simulated pids (`layout`: "dense", "stride:N" or
/// "scattered") through the Rust tracker, one tracker per size, run in
/// interleaved chunks; returns per size (agents, bytes per agent, ns per
/// beat of each chunk).
#[pyfunction]
#[pyo3(signature = (sizes, beats_per_chunk, chunks, layout = "dense"))]
fn bench_tracker_scaling(
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

/// Per each of `rounds` copies of an `agents`-pid tracker into exporter
/// rows: (wall ns of the whole copy, of its longest chunk — the longest
/// `Observer.pid_rows()` holds the observer lock).
#[pyfunction]
fn bench_rows_copy(py: Python<'_>, agents: u32, rounds: usize) -> Vec<(u64, u64)> {
    py.detach(move || varta_core::observer::bench::bench_rows_copy(agents, rounds))
}

/// Benchmark floor: a bare blocking `recvmsg` loop with credentials on a
/// fresh socket at `path` (with `pidfd`, also `SO_PASSPIDFD`, each pidfd
/// closed); returns (thread CPU ns, datagrams counted).
#[pyfunction]
#[pyo3(signature = (path, n, idle_timeout_ms=2000, rcvbuf=1_048_576, pidfd=false))]
fn bench_recv_floor(
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
fn thread_cpu_ns() -> u64 {
    varta_core::observer::listener::thread_cpu_ns()
}

/// Where a UDP listener binds when `udp_bind_addr` is not given (the
/// daemon's parse-time checks need it; the rule is the core's).
#[pyfunction]
fn udp_default_bind(secure: bool) -> String {
    UdpOptions::default_bind(secure).to_string()
}

/// A process's start time (clock ticks since boot, `/proc/<pid>/stat`
/// field 22), `None` when there is no such process: what pins a pid to one
/// process for recovery as for the observer's verdicts.
#[pyfunction]
fn process_start_time(pid: i64) -> Option<u64> {
    u32::try_from(pid).ok().and_then(procfs::start_time)
}

/// This process's pid-namespace inode (`/proc/self/ns/pid`), if readable.
#[pyfunction]
fn own_pid_ns_inode() -> Option<u64> {
    procfs::own_pid_ns_inode()
}

/// Serve allocations of `bytes` or more from mappings of their own, returned
/// to the OS when freed; false where the C library has no such knob. Process-wide:
/// the daemon calls it, a library never should (docs/operations.md#resources).
#[pyfunction]
fn set_mmap_threshold(bytes: usize) -> bool {
    varta_core::sys::set_mmap_threshold(bytes)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyObserver>()?;
    m.add_function(wrap_pyfunction!(set_mmap_threshold, m)?)?;
    m.add_function(wrap_pyfunction!(process_start_time, m)?)?;
    m.add_function(wrap_pyfunction!(own_pid_ns_inode, m)?)?;
    m.add_function(wrap_pyfunction!(udp_default_bind, m)?)?;
    crate::events::register(m)
}

/// The benchmark entry points, in `varta._varta._testing`.
pub fn register_testing(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(bench_tracker_scaling, m)?)?;
    m.add_function(wrap_pyfunction!(bench_rows_copy, m)?)?;
    m.add_function(wrap_pyfunction!(bench_recv_floor, m)?)?;
    m.add_function(wrap_pyfunction!(thread_cpu_ns, m)?)?;
    Ok(())
}

/// Every sender an address can be (plaintext, each shared key, the master
/// key): `Observer.agent(pid, peer)` names a sender by its address only.
fn peer_candidates(addr: IpAddr) -> impl Iterator<Item = NetPeer> {
    let keys = std::iter::once(PeerKey::Plain)
        .chain((0..MAX_SHARED_KEYS as u8).map(PeerKey::Shared))
        .chain(std::iter::once(PeerKey::Master));
    let alt = match addr {
        IpAddr::V4(v4) => IpAddr::V6(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
    };
    keys.flat_map(move |key| [NetPeer { addr, key }, NetPeer { addr: alt, key }])
}
