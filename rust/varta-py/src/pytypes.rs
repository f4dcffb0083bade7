//! Handles to the plain-Python value types defined in `varta._types`
//! (`Status`, `DecodeError`, `BeatError`, the outcome singletons, the
//! observer's enums).
//!
//! Imported once per interpreter and cached, so hot paths hand out existing
//! objects (a refcount bump) instead of building new ones.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyDict;
use varta_core::frame::{DecodeError, Status};
#[cfg(target_os = "linux")]
use varta_core::observer::{BeatOrigin, Verdict};

pub struct PyTypes {
    /// `Status` members indexed by their code (0..=3).
    pub status: [Py<PyAny>; 4],
    pub decode_error: Py<PyAny>,
    pub beat_error: Py<PyAny>,
}

static TYPES: PyOnceLock<PyTypes> = PyOnceLock::new();

pub fn types(py: Python<'_>) -> PyResult<&PyTypes> {
    TYPES.get_or_try_init(py, || {
        let m = py.import("varta._types")?;
        let status_cls = m.getattr("Status")?;
        let status = [0u8, 1, 2, 3].map(|code| status_cls.call1((code,)).map(Bound::unbind));
        let [a, b, c, d] = status;
        Ok(PyTypes {
            status: [a?, b?, c?, d?],
            decode_error: m.getattr("DecodeError")?.unbind(),
            beat_error: m.getattr("BeatError")?.unbind(),
        })
    })
}

/// The cached `varta.Status` member for a core status.
pub fn status_obj(py: Python<'_>, s: Status) -> PyResult<Py<PyAny>> {
    Ok(types(py)?.status[s as usize].clone_ref(py))
}

/// Accept a `Status`, an int in 0..=3 or a case-insensitive name.
pub fn extract_status(v: &Bound<'_, PyAny>) -> PyResult<Status> {
    // Names first: trying the int conversion on a str would build and drop
    // an exception object on every call (~3 µs).
    if let Ok(name) = v.cast::<pyo3::types::PyString>() {
        let name = name.to_cow()?;
        return Status::from_name(name.trim()).ok_or_else(|| {
            pyo3::exceptions::PyValueError::new_err(format!("unknown status name {name:?}"))
        });
    }
    if let Ok(code) = v.extract::<i64>() {
        // bool is an int subclass; True/False as a status is almost surely a bug.
        if v.is_instance_of::<pyo3::types::PyBool>() {
            return Err(pyo3::exceptions::PyTypeError::new_err(
                "status must be Status, int or str, not bool",
            ));
        }
        return u8::try_from(code)
            .ok()
            .and_then(Status::from_u8)
            .ok_or_else(|| {
                pyo3::exceptions::PyValueError::new_err(format!("status {code} is outside 0..=3"))
            });
    }
    Err(pyo3::exceptions::PyTypeError::new_err(format!(
        "status must be Status, int or str, not {}",
        v.get_type().name()?
    )))
}

/// Build the Python `varta.DecodeError` instance for a core decode error.
pub fn decode_error_value(py: Python<'_>, e: &DecodeError) -> PyResult<Py<PyAny>> {
    let t = types(py)?;
    let kw = PyDict::new(py);
    match *e {
        DecodeError::BadCrc { expected, actual } => {
            kw.set_item("expected", expected)?;
            kw.set_item("actual", actual)?;
        }
        DecodeError::BadStatus(b) => {
            kw.set_item("byte", b)?;
            kw.set_item("status", b)?;
        }
        DecodeError::BadPid(p) => kw.set_item("pid", p)?,
        DecodeError::BadTimestamp(ts) => kw.set_item("timestamp", ts)?,
        DecodeError::BadNonce { nonce, status } => {
            kw.set_item("nonce", nonce)?;
            kw.set_item("status", status_obj(py, status)?)?;
        }
        DecodeError::BadMagic | DecodeError::BadVersion | DecodeError::StallOnWire => {}
    }
    Ok(t.decode_error
        .bind(py)
        .call((e.kind(), e.to_string()), Some(&kw))?
        .unbind())
}

/// The `PyErr` to raise for a core decode error.
pub fn decode_error_err(py: Python<'_>, e: &DecodeError) -> PyErr {
    match decode_error_value(py, e) {
        Ok(v) => PyErr::from_value(v.into_bound(py)),
        Err(err) => err,
    }
}

// --- observer: cached `varta.BeatOrigin` members ---

#[cfg(target_os = "linux")]
static ORIGINS: PyOnceLock<[Py<PyAny>; 4]> = PyOnceLock::new();

#[cfg(target_os = "linux")]
/// `BeatOrigin` members indexed by rank (0..=3).
pub fn origins(py: Python<'_>) -> PyResult<&[Py<PyAny>; 4]> {
    ORIGINS.get_or_try_init(py, || {
        let cls = py.import("varta._types")?.getattr("BeatOrigin")?;
        let [a, b, c, d] = [0u8, 1, 2, 3].map(|rank| cls.call1((rank,)).map(Bound::unbind));
        Ok([a?, b?, c?, d?])
    })
}

#[cfg(target_os = "linux")]
static VERDICTS: PyOnceLock<[Py<PyAny>; 5]> = PyOnceLock::new();

/// The cached `varta.Verdict` member for a core verdict.
#[cfg(target_os = "linux")]
pub fn verdict_obj(py: Python<'_>, v: Verdict) -> PyResult<Py<PyAny>> {
    let all = VERDICTS.get_or_try_init(py, || {
        let cls = py.import("varta._types")?.getattr("Verdict")?;
        let [a, b, c, d, e] = Verdict::ALL.map(|v| cls.call1((v.as_str(),)).map(Bound::unbind));
        Ok::<_, PyErr>([a?, b?, c?, d?, e?])
    })?;
    Ok(all[v as usize].clone_ref(py))
}

/// Accept a `Verdict` member or its name.
#[cfg(target_os = "linux")]
pub fn extract_verdict(v: &Bound<'_, PyAny>) -> PyResult<Verdict> {
    let name: String = v.str()?.extract()?;
    Verdict::from_name(&name)
        .ok_or_else(|| pyo3::exceptions::PyValueError::new_err(format!("unknown verdict {name:?}")))
}

#[cfg(target_os = "linux")]
/// The cached `varta.BeatOrigin` member for a core origin.
pub fn origin_obj(py: Python<'_>, o: BeatOrigin) -> PyResult<Py<PyAny>> {
    Ok(origins(py)?[o.rank() as usize].clone_ref(py))
}

#[cfg(target_os = "linux")]
/// Accept a `BeatOrigin` (or its int rank / member name).
pub fn extract_origin(v: &Bound<'_, PyAny>) -> PyResult<BeatOrigin> {
    if !v.is_instance_of::<pyo3::types::PyBool>() {
        if let Ok(rank) = v.extract::<i64>() {
            return u8::try_from(rank)
                .ok()
                .and_then(BeatOrigin::from_rank)
                .ok_or_else(|| {
                    pyo3::exceptions::PyValueError::new_err(format!(
                        "origin {rank} is outside 0..=3"
                    ))
                });
        }
        if let Ok(name) = v.extract::<String>() {
            let up = name.trim().to_ascii_uppercase();
            return (0..=3)
                .filter_map(BeatOrigin::from_rank)
                .find(|o| o.name() == up)
                .ok_or_else(|| {
                    pyo3::exceptions::PyValueError::new_err(format!("unknown origin name {name:?}"))
                });
        }
    }
    Err(pyo3::exceptions::PyTypeError::new_err(format!(
        "origin must be BeatOrigin, int or str, not {}",
        v.get_type().name()?
    )))
}
// --- agent: cached outcome singletons ---

/// The objects `Varta.beat` hands out: the pre-built `_SENT` / `_DROPPED[r]`
/// outcomes (a steady-state beat only bumps a refcount) and the constructors
/// for the cold `Failed` path.
pub struct AgentTypes {
    /// `varta._types._SENT`.
    pub sent: Py<PyAny>,
    /// `varta._types._DROPPED[r]`, indexed by the core `DropReason as usize`.
    pub dropped: [Py<PyAny>; 4],
    /// `BeatOutcome.failed` (bound classmethod).
    pub failed: Py<PyAny>,
    /// `varta._types.errno_name`.
    pub errno_name: Py<PyAny>,
}

static AGENT_TYPES: PyOnceLock<AgentTypes> = PyOnceLock::new();

pub fn agent_types(py: Python<'_>) -> PyResult<&AgentTypes> {
    AGENT_TYPES.get_or_try_init(py, || {
        let m = py.import("varta._types")?;
        let reason_cls = m.getattr("DropReason")?;
        let table = m.getattr("_DROPPED")?;
        let pick = |r: varta_core::agent::DropReason| -> PyResult<Py<PyAny>> {
            Ok(table.get_item(reason_cls.call1((r.as_str(),))?)?.unbind())
        };
        let [a, b, c, d] = varta_core::agent::DropReason::ALL.map(pick);
        Ok(AgentTypes {
            sent: m.getattr("_SENT")?.unbind(),
            dropped: [a?, b?, c?, d?],
            failed: m.getattr("BeatOutcome")?.getattr("failed")?.unbind(),
            errno_name: m.getattr("errno_name")?.unbind(),
        })
    })
}
