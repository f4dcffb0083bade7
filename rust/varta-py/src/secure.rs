//! Python surface of the secure layer: `varta.Key`, the key-file loaders,
//! `keygen`'s file writer, and the test helpers of `varta._varta._testing`
//! (`seal_shared`, `derive_*`, `SecureReceiver`, `SecureSession`) that
//! pytest cross-checks against the `cryptography` package.
//!
//! Sibling bindings (agent, panic, observer) take keys through
//! [`extract_key`], which accepts a `varta.Key` or 32 raw bytes.

use std::path::PathBuf;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict};
use varta_core::frame::FRAME_LEN;
use varta_core::secure::keys::{
    load_accepted_key_file, load_key_file, load_master_key_file, write_new_key_file,
};
use varta_core::secure::zeroize::Zeroize;
use varta_core::secure::{
    derive_agent_key, derive_epoch_key, derive_iv_prefix, derive_panic_iv_prefix, seal_master,
    seal_panic_frame, seal_shared, Key, Opened, ReceiverConfig, SecureReceiver, SecureSession,
    IV_RANDOM_LEN, KEY_LEN, MASTER_WIRE_LEN, MAX_SHARED_KEYS, MAX_WIRE_LEN, SALT_LEN,
    SHARED_WIRE_LEN,
};

use crate::codec::PyFrame;
use crate::errors::Error;
use crate::pytypes::decode_error_value;

/// A 32-byte secret key (shared key or master key).
///
/// Zeroized when the object is freed; `repr()` never shows it. There is no
/// way to get the bytes back out (no `bytes(key)`, no `.hex()`), no equality
/// and no pickling: a copy in a Python `bytes`/`str` can never be wiped, and
/// every varta API that needs a key takes the `Key` object itself.
#[pyclass(name = "Key", module = "varta", frozen)]
pub struct PyKey {
    pub inner: Key,
}

fn value_err(e: impl ToString) -> PyErr {
    PyValueError::new_err(e.to_string())
}

fn key_from_bytes_like(obj: &Bound<'_, PyAny>) -> PyResult<Option<Key>> {
    if let Ok(b) = obj.cast::<PyBytes>() {
        return Key::from_slice(b.as_bytes()).map(Some).map_err(value_err);
    }
    if let Ok(b) = obj.cast::<PyByteArray>() {
        let mut v = b.to_vec();
        let r = Key::from_slice(&v);
        v.zeroize();
        return r.map(Some).map_err(value_err);
    }
    Ok(None)
}

/// Accept a `varta.Key` or 32 raw bytes (`bytes`/`bytearray`; upstream
/// compatibility). For the agent, panic and observer bindings.
pub fn extract_key(obj: &Bound<'_, PyAny>) -> PyResult<Key> {
    if let Ok(k) = obj.cast::<PyKey>() {
        return Ok(k.get().inner.clone());
    }
    if let Some(k) = key_from_bytes_like(obj)? {
        return Ok(k);
    }
    Err(PyTypeError::new_err(format!(
        "key must be varta.Key or {KEY_LEN} bytes, not {}",
        obj.get_type().name()?
    )))
}

#[pymethods]
impl PyKey {
    /// Exactly 32 raw bytes (`bytes` or `bytearray`).
    #[staticmethod]
    fn from_bytes(data: &Bound<'_, PyAny>) -> PyResult<Self> {
        match key_from_bytes_like(data)? {
            Some(inner) => Ok(PyKey { inner }),
            None => Err(PyTypeError::new_err(format!(
                "Key.from_bytes() needs bytes or bytearray, not {}",
                data.get_type().name()?
            ))),
        }
    }

    /// Exactly 64 hex characters (either case, no `0x`) after trimming.
    #[staticmethod]
    fn from_hex(text: &str) -> PyResult<Self> {
        Key::from_hex(text)
            .map(|inner| PyKey { inner })
            .map_err(value_err)
    }

    /// Read a key file: the whole file, trimmed, is one key. With
    /// `check_permissions` (default) the file must not be a symlink, must be
    /// a regular file owned by the effective uid with no group/other
    /// permission bits (`PermissionError` otherwise).
    #[staticmethod]
    #[pyo3(signature = (path, *, check_permissions = true))]
    fn from_file(py: Python<'_>, path: PathBuf, check_permissions: bool) -> PyResult<Self> {
        py.detach(|| Key::from_file(&path, check_permissions))
            .map(|inner| PyKey { inner })
            .map_err(|e| Error::from(e).into())
    }

    /// A new random key from OS entropy.
    #[staticmethod]
    fn generate() -> PyResult<Self> {
        Ok(PyKey {
            inner: Key::generate()?,
        })
    }

    fn __repr__(&self) -> &'static str {
        "Key(<redacted>)"
    }

    fn __reduce__(&self) -> PyResult<()> {
        Err(PyTypeError::new_err(
            "varta.Key cannot be pickled or copied (secret material)",
        ))
    }
}

/// Observer `--key-file`: line-based (blank and `#` lines skipped), exactly one key.
#[pyfunction]
#[pyo3(name = "load_key_file")]
fn py_load_key_file(py: Python<'_>, path: PathBuf) -> PyResult<PyKey> {
    py.detach(|| load_key_file(&path))
        .map(|inner| PyKey { inner })
        .map_err(|e| Error::from(e).into())
}

/// Observer `--accepted-key-file`: line-based, one or more keys.
#[pyfunction]
#[pyo3(name = "load_accepted_key_file")]
fn py_load_accepted_key_file(py: Python<'_>, path: PathBuf) -> PyResult<Vec<PyKey>> {
    py.detach(|| load_accepted_key_file(&path))
        .map(|keys| keys.into_iter().map(|inner| PyKey { inner }).collect())
        .map_err(|e| Error::from(e).into())
}

/// Observer `--master-key-file`: the whole file, trimmed, is one key.
#[pyfunction]
#[pyo3(name = "load_master_key_file")]
fn py_load_master_key_file(py: Python<'_>, path: PathBuf) -> PyResult<PyKey> {
    py.detach(|| load_master_key_file(&path))
        .map(|inner| PyKey { inner })
        .map_err(|e| Error::from(e).into())
}

/// `keygen`: create `path` (O_CREAT|O_EXCL|O_NOFOLLOW, mode 0600) holding a
/// fresh key as 64 hex characters and a newline. `FileExistsError` if it exists.
#[pyfunction]
fn _generate_key_file(py: Python<'_>, path: PathBuf) -> PyResult<()> {
    py.detach(|| write_new_key_file(&path))
        .map_err(|e| Error::from(e).at(path.to_string_lossy()).into())
}

// ---- test helpers (`varta._varta._testing`; cross-checked against `cryptography`) ----

fn fixed<const N: usize>(what: &str, data: &[u8]) -> PyResult<[u8; N]> {
    data.try_into()
        .map_err(|_| PyValueError::new_err(format!("{what} must be {N} bytes, got {}", data.len())))
}

#[pyfunction]
#[pyo3(name = "seal_shared")]
fn seal_shared_py<'py>(
    py: Python<'py>,
    key: &Bound<'py, PyAny>,
    iv_random: &[u8],
    counter: u32,
    plaintext: &[u8],
) -> PyResult<Bound<'py, PyBytes>> {
    let key = extract_key(key)?;
    let mut out = [0u8; SHARED_WIRE_LEN];
    seal_shared(
        &key,
        &fixed::<IV_RANDOM_LEN>("iv_random", iv_random)?,
        counter,
        &fixed::<FRAME_LEN>("plaintext", plaintext)?,
        &mut out,
    );
    Ok(PyBytes::new(py, &out))
}

#[pyfunction]
#[pyo3(name = "seal_master")]
fn seal_master_py<'py>(
    py: Python<'py>,
    master_key: &Bound<'py, PyAny>,
    pid: u32,
    iv_random: &[u8],
    counter: u32,
    plaintext: &[u8],
) -> PyResult<Bound<'py, PyBytes>> {
    let agent = derive_agent_key(&extract_key(master_key)?, pid);
    let mut out = [0u8; MASTER_WIRE_LEN];
    seal_master(
        &agent,
        pid,
        &fixed::<IV_RANDOM_LEN>("iv_random", iv_random)?,
        counter,
        &fixed::<FRAME_LEN>("plaintext", plaintext)?,
        &mut out,
    );
    Ok(PyBytes::new(py, &out))
}

#[pyfunction]
#[pyo3(name = "seal_panic_frame")]
fn seal_panic_frame_py<'py>(
    py: Python<'py>,
    key: &Bound<'py, PyAny>,
    fork_salt: &[u8],
    pid: u32,
    timestamp: u64,
    counter: u32,
    plaintext: &[u8],
) -> PyResult<Bound<'py, PyBytes>> {
    let key = extract_key(key)?;
    let mut out = [0u8; SHARED_WIRE_LEN];
    seal_panic_frame(
        &key,
        &fixed::<SALT_LEN>("fork_salt", fork_salt)?,
        pid,
        timestamp,
        counter,
        &fixed::<FRAME_LEN>("plaintext", plaintext)?,
        &mut out,
    );
    Ok(PyBytes::new(py, &out))
}

#[pyfunction]
#[pyo3(name = "derive_agent_key")]
fn derive_agent_key_py<'py>(
    py: Python<'py>,
    master_key: &Bound<'py, PyAny>,
    pid: u32,
) -> PyResult<Bound<'py, PyBytes>> {
    let k = derive_agent_key(&extract_key(master_key)?, pid);
    Ok(PyBytes::new(py, k.as_bytes()))
}

#[pyfunction]
#[pyo3(name = "derive_iv_prefix")]
fn derive_iv_prefix_py<'py>(
    py: Python<'py>,
    salt: &[u8],
    prefix_index: u32,
) -> PyResult<Bound<'py, PyBytes>> {
    let out = derive_iv_prefix(&fixed::<SALT_LEN>("salt", salt)?, prefix_index);
    Ok(PyBytes::new(py, &out))
}

#[pyfunction]
#[pyo3(name = "derive_panic_iv_prefix")]
fn derive_panic_iv_prefix_py<'py>(
    py: Python<'py>,
    fork_salt: &[u8],
    pid: u32,
    timestamp: u64,
    counter: u32,
) -> PyResult<Bound<'py, PyBytes>> {
    let out = derive_panic_iv_prefix(
        &fixed::<SALT_LEN>("fork_salt", fork_salt)?,
        pid,
        timestamp,
        counter,
    );
    Ok(PyBytes::new(py, &out))
}

#[pyfunction]
#[pyo3(name = "derive_epoch_key")]
fn derive_epoch_key_py<'py>(
    py: Python<'py>,
    agent_key: &Bound<'py, PyAny>,
    epoch: u64,
) -> PyResult<Bound<'py, PyBytes>> {
    let k = derive_epoch_key(&extract_key(agent_key)?, epoch);
    Ok(PyBytes::new(py, k.as_bytes()))
}

/// Test wrapper over the core `SecureReceiver` (the observer embeds the core
/// type directly). `open()` returns `("accepted", Frame)`,
/// `("decode", DecodeError)` or `("rejected", reason)`.
#[pyclass(name = "SecureReceiver", module = "varta._varta._testing")]
struct PySecureReceiver {
    inner: SecureReceiver,
}

#[pymethods]
impl PySecureReceiver {
    #[new]
    #[pyo3(signature = (shared_keys, master_key = None, session_restart_gap_ms = 5000))]
    fn new(
        shared_keys: Vec<Bound<'_, PyAny>>,
        master_key: Option<&Bound<'_, PyAny>>,
        session_restart_gap_ms: u64,
    ) -> PyResult<Self> {
        let shared = shared_keys
            .iter()
            .map(extract_key)
            .collect::<PyResult<Vec<_>>>()?;
        let master = master_key.map(extract_key).transpose()?;
        let inner = SecureReceiver::new(ReceiverConfig {
            shared_keys: shared,
            master_key: master,
            session_restart_gap_ns: session_restart_gap_ms.saturating_mul(1_000_000),
        })
        .map_err(value_err)?;
        Ok(PySecureReceiver { inner })
    }

    fn open(
        &mut self,
        py: Python<'_>,
        datagram: &[u8],
        now_ns: u64,
    ) -> PyResult<(String, Py<PyAny>)> {
        Ok(match self.inner.open(datagram, now_ns) {
            Opened::Accepted(f) => (
                "accepted".into(),
                Py::new(py, PyFrame { inner: f })?.into_any(),
            ),
            Opened::Decode(e) => ("decode".into(), decode_error_value(py, &e)?),
            Opened::Rejected(r) => (
                "rejected".into(),
                r.counter_name().into_pyobject(py)?.into_any().unbind(),
            ),
        })
    }

    fn counters<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let c = self.inner.counters();
        let d = PyDict::new(py);
        d.set_item("frame_decrypt_failures", c.frame_decrypt_failures)?;
        d.set_item("secure_replay_refused", c.secure_replay_refused)?;
        d.set_item("sender_state_full", c.sender_state_full)?;
        d.set_item("secure_aead_attempts", c.secure_aead_attempts)?;
        d.set_item("truncated_datagrams", c.truncated_datagrams)?;
        Ok(d)
    }

    #[getter]
    fn senders(&self) -> usize {
        self.inner.senders()
    }
}

/// Test wrapper over the core sender `SecureSession`.
#[pyclass(name = "SecureSession", module = "varta._varta._testing")]
struct PySecureSession {
    inner: SecureSession,
}

#[pymethods]
impl PySecureSession {
    /// Shared mode, or master mode when `master_pid` is given (the key is
    /// then the master key). A fresh salt is drawn unless `salt` is given.
    #[new]
    #[pyo3(signature = (key, *, master_pid = None, salt = None))]
    fn new(key: &Bound<'_, PyAny>, master_pid: Option<u32>, salt: Option<&[u8]>) -> PyResult<Self> {
        let key = extract_key(key)?;
        let inner = match (master_pid, salt) {
            (None, None) => SecureSession::new_shared(key)?,
            (Some(pid), None) => SecureSession::new_master(key, pid)?,
            (None, Some(s)) => SecureSession::with_salt_shared(key, fixed::<SALT_LEN>("salt", s)?),
            (Some(pid), Some(s)) => {
                SecureSession::with_salt_master(key, pid, fixed::<SALT_LEN>("salt", s)?)
            }
        };
        Ok(PySecureSession { inner })
    }

    fn next_wire<'py>(
        &mut self,
        py: Python<'py>,
        plaintext: &[u8],
    ) -> PyResult<Bound<'py, PyBytes>> {
        let pt = fixed::<FRAME_LEN>("plaintext", plaintext)?;
        let mut out = [0u8; MAX_WIRE_LEN];
        let n = self
            .inner
            .next_wire(&pt, &mut out)
            .map_err(|e| Error::os(None, e.to_string()))?;
        Ok(PyBytes::new(py, &out[..n]))
    }

    fn commit(&mut self) -> bool {
        self.inner.commit()
    }

    fn reseed(&mut self, pid: u32) -> PyResult<()> {
        Ok(self.inner.reseed(pid)?)
    }

    fn set_position(&mut self, prefix_index: u32, counter: u32) {
        self.inner.set_position_for_test(prefix_index, counter);
    }

    #[getter]
    fn salt<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.inner.salt())
    }

    #[getter]
    fn prefix_index(&self) -> u32 {
        self.inner.prefix_index()
    }

    #[getter]
    fn counter(&self) -> u32 {
        self.inner.counter()
    }

    #[getter]
    fn wire_len(&self) -> usize {
        self.inner.wire_len()
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyKey>()?;
    m.add("MAX_SHARED_KEYS", MAX_SHARED_KEYS)?;
    m.add("SHARED_WIRE_LEN", SHARED_WIRE_LEN)?;
    m.add("MASTER_WIRE_LEN", MASTER_WIRE_LEN)?;
    m.add_function(wrap_pyfunction!(py_load_key_file, m)?)?;
    m.add_function(wrap_pyfunction!(py_load_accepted_key_file, m)?)?;
    m.add_function(wrap_pyfunction!(py_load_master_key_file, m)?)?;
    m.add_function(wrap_pyfunction!(_generate_key_file, m)?)?;
    Ok(())
}

/// The test helpers, in `varta._varta._testing`.
pub fn register_testing(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(seal_shared_py, m)?)?;
    m.add_function(wrap_pyfunction!(seal_master_py, m)?)?;
    m.add_function(wrap_pyfunction!(seal_panic_frame_py, m)?)?;
    m.add_function(wrap_pyfunction!(derive_agent_key_py, m)?)?;
    m.add_function(wrap_pyfunction!(derive_iv_prefix_py, m)?)?;
    m.add_function(wrap_pyfunction!(derive_panic_iv_prefix_py, m)?)?;
    m.add_function(wrap_pyfunction!(derive_epoch_key_py, m)?)?;
    m.add_class::<PySecureReceiver>()?;
    m.add_class::<PySecureSession>()?;
    Ok(())
}
