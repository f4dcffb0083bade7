//! `varta.PidRows`: the daemon's per-pid exporter rows, kept native so a
//! `/metrics` body for 1,000,000 pids renders in Rust, off the GIL.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};
use std::net::IpAddr;
use std::sync::Arc;
use varta_core::observer::procfs::Comm;
use varta_core::observer::rows::{PidRow, PidRows, RowColumn};

/// A row as Python gives it: `(pid, beats, stalls, status)`, or with
/// `(…, peer, unit, comm)` after it.
type RowTuple = (
    u32,
    u64,
    u64,
    u8,
    Option<String>,
    Option<String>,
    Option<String>,
);

/// Immutable rows `(pid, beats, stalls, status)` sorted by pid, then
/// sender; `status` 3 means stalled. Each row also carries its agent's
/// sender address, systemd unit and command name (`identities()`), for
/// labels. From `Observer.pid_rows()`, or built from tuples (fakes).
#[pyclass(name = "PidRows", module = "varta", frozen)]
pub struct PyPidRows {
    rows: Arc<PidRows>,
}

impl PyPidRows {
    pub fn wrap(rows: PidRows) -> PyPidRows {
        PyPidRows {
            rows: Arc::new(rows),
        }
    }
}

#[pymethods]
impl PyPidRows {
    #[new]
    #[pyo3(signature = (rows=None))]
    fn new(rows: Option<&Bound<'_, PyAny>>) -> PyResult<PyPidRows> {
        let mut out = Vec::new();
        if let Some(rows) = rows {
            for item in rows.try_iter()? {
                let item = item?;
                let (pid, beats, stalls, status, peer, unit, comm): RowTuple = if item.len()? == 4 {
                    let (pid, beats, stalls, status): (u32, u64, u64, u8) = item.extract()?;
                    (pid, beats, stalls, status, None, None, None)
                } else {
                    item.extract()?
                };
                if status > 3 {
                    return Err(PyValueError::new_err(format!(
                        "status {status} out of range 0..=3"
                    )));
                }
                let peer = match peer {
                    None => None,
                    Some(p) => Some(p.parse::<IpAddr>().map_err(|_| {
                        PyValueError::new_err(format!("peer {p:?} is not an IP address"))
                    })?),
                };
                out.push(PidRow {
                    peer,
                    unit: unit.map(Arc::from),
                    comm: comm.map(|c| Comm::new(c.as_bytes())),
                    ..PidRow::bare(pid, beats, stalls, status)
                });
            }
        }
        Ok(PyPidRows::wrap(PidRows::new(out)))
    }

    fn __len__(&self) -> usize {
        self.rows.len()
    }

    /// The rows as `(pid, beats, stalls, status)` tuples, by pid.
    fn __iter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let items = self
            .rows
            .rows()
            .iter()
            .map(|r| (r.pid, r.beats, r.stalls, r.status).into_pyobject(py))
            .collect::<PyResult<Vec<Bound<'py, PyTuple>>>>()?;
        PyList::new(py, items)?
            .into_any()
            .try_iter()
            .map(Bound::into_any)
    }

    /// `(pid, peer, unit, comm)` per row, in row order: the agent's network
    /// sender (None for the Unix socket), systemd unit and command name,
    /// each None when unknown (docs/observer.md#agent-identity).
    fn identities<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let items = self
            .rows
            .rows()
            .iter()
            .map(|r| {
                (
                    r.pid,
                    r.peer.map(|p| p.to_string()),
                    r.unit.as_deref().map(str::to_owned),
                    r.comm.map(|c| c.to_string_lossy()),
                )
                    .into_pyobject(py)
            })
            .collect::<PyResult<Vec<Bound<'py, PyTuple>>>>()?;
        PyList::new(py, items)
    }

    /// `name{pid="<pid>"} <value>\n` per row; `column` is `"beats"`,
    /// `"stalls"` or `"status"`. Written with the GIL released.
    fn render<'py>(
        &self,
        py: Python<'py>,
        name: &str,
        column: &str,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let column = RowColumn::from_name(column).ok_or_else(|| {
            PyValueError::new_err(format!(
                "column must be 'beats', 'stalls' or 'status', not {column:?}"
            ))
        })?;
        let rows = Arc::clone(&self.rows);
        let name = name.to_owned();
        let text = py.detach(move || {
            let mut out = Vec::new();
            rows.render_samples(&name, column, &mut out);
            out
        });
        Ok(PyBytes::new(py, &text))
    }

    fn __repr__(&self) -> String {
        format!("PidRows(<{} rows>)", self.rows.len())
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyPidRows>()
}
