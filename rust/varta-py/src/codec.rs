//! Python surface of the codec: `crc32c`, `encode`, `decode`, `Frame`.

use crate::pytypes::{decode_error_err, extract_status, status_obj, types};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use varta_core::frame::{Frame, FRAME_LEN};

/// `Frame(...)` constructor arguments, for pickling.
type FrameArgs = (u8, u32, u64, u64, u32);

#[pyfunction]
pub fn crc32c(data: &[u8]) -> u32 {
    varta_core::crc32c(data)
}

/// A decoded VLP frame. Immutable, hashable, comparable.
#[pyclass(name = "Frame", module = "varta", frozen, eq, hash)]
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PyFrame {
    pub inner: Frame,
}

fn build(
    status: &Bound<'_, PyAny>,
    pid: u32,
    timestamp: u64,
    nonce: u64,
    payload: u32,
) -> PyResult<Frame> {
    Ok(Frame {
        status: extract_status(status)?,
        pid,
        timestamp,
        nonce,
        payload,
    })
}

/// Decode exactly 32 bytes, raising `varta.DecodeError` for anything else.
pub fn decode_bytes(py: Python<'_>, data: &[u8]) -> PyResult<Frame> {
    let Ok(arr) = <&[u8; FRAME_LEN]>::try_from(data) else {
        // Spec: wrong length is reported as BadMagic, and the message says why.
        let t = types(py)?;
        let msg = format!(
            "varta-vlp: frame must be exactly {FRAME_LEN} bytes, got {}",
            data.len()
        );
        let v = t.decode_error.bind(py).call1(("BadMagic", msg))?;
        return Err(PyErr::from_value(v));
    };
    Frame::decode(arr).map_err(|e| decode_error_err(py, &e))
}

#[pymethods]
impl PyFrame {
    #[new]
    #[pyo3(signature = (status, pid, timestamp, nonce, payload=0))]
    fn new(
        status: &Bound<'_, PyAny>,
        pid: u32,
        timestamp: u64,
        nonce: u64,
        payload: u32,
    ) -> PyResult<Self> {
        Ok(PyFrame {
            inner: build(status, pid, timestamp, nonce, payload)?,
        })
    }

    #[getter]
    fn status(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        status_obj(py, self.inner.status)
    }
    #[getter]
    fn pid(&self) -> u32 {
        self.inner.pid
    }
    #[getter]
    fn timestamp(&self) -> u64 {
        self.inner.timestamp
    }
    #[getter]
    fn nonce(&self) -> u64 {
        self.inner.nonce
    }
    #[getter]
    fn payload(&self) -> u32 {
        self.inner.payload
    }
    /// True for a crash-terminal frame (Critical + NONCE_TERMINAL).
    #[getter]
    fn is_terminal(&self) -> bool {
        self.inner.is_terminal()
    }

    fn encode<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.encode())
    }

    #[staticmethod]
    fn decode(py: Python<'_>, data: &[u8]) -> PyResult<Self> {
        Ok(PyFrame {
            inner: decode_bytes(py, data)?,
        })
    }

    fn __repr__(&self) -> String {
        let f = &self.inner;
        format!(
            "Frame(status=Status.{}, pid={}, timestamp={}, nonce={}, payload={})",
            f.status.as_str().to_ascii_uppercase(),
            f.pid,
            f.timestamp,
            f.nonce,
            f.payload
        )
    }

    fn __reduce__(&self, py: Python<'_>) -> PyResult<(Py<PyAny>, FrameArgs)> {
        let f = &self.inner;
        let cls = py.get_type::<PyFrame>().into_any().unbind();
        Ok((
            cls,
            (f.status as u8, f.pid, f.timestamp, f.nonce, f.payload),
        ))
    }
}

/// Encode one frame to 32 bytes. Values that do not fit their field raise.
#[pyfunction]
#[pyo3(signature = (status, pid, timestamp, nonce, payload=0))]
pub fn encode<'py>(
    py: Python<'py>,
    status: &Bound<'py, PyAny>,
    pid: u32,
    timestamp: u64,
    nonce: u64,
    payload: u32,
) -> PyResult<Bound<'py, PyBytes>> {
    Ok(PyBytes::new(
        py,
        &build(status, pid, timestamp, nonce, payload)?.encode(),
    ))
}

#[pyfunction]
pub fn decode(py: Python<'_>, data: &[u8]) -> PyResult<PyFrame> {
    Ok(PyFrame {
        inner: decode_bytes(py, data)?,
    })
}

/// `varta.Status.coerce`: the same rules the agent applies to a `status`
/// argument (`crate::pytypes::extract_status`), so they live in one place.
#[pyfunction]
fn coerce_status(py: Python<'_>, value: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
    crate::pytypes::status_obj(py, crate::pytypes::extract_status(value)?)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(crc32c, m)?)?;
    m.add_function(wrap_pyfunction!(coerce_status, m)?)?;
    m.add_function(wrap_pyfunction!(encode, m)?)?;
    m.add_function(wrap_pyfunction!(decode, m)?)?;
    m.add_class::<PyFrame>()?;
    m.add("NONCE_TERMINAL", varta_core::NONCE_TERMINAL)?;
    m.add("FRAME_LEN", FRAME_LEN)?;
    Ok(())
}
