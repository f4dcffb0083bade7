//! `varta.PidRows`: the daemon's per-pid exporter rows, kept native so a
//! `/metrics` body for 1,000,000 pids renders in Rust, off the GIL.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};
use std::net::IpAddr;
use std::sync::Arc;
use varta_core::observer::procfs::Comm;
use varta_core::observer::rows::{PidRow, PidRows, RowColumn, STATUS_NAMES};
use varta_core::observer::verdict::Verdict;

/// Immutable rows `(pid, beats, stalls, status)` sorted by pid, then
/// sender; `status` 3 means stalled. Each row also carries its agent's
/// sender address, systemd unit and command name (`identities()`), for
/// labels. From `Observer.pid_rows()`, or built from tuples (fakes):
/// `(pid, beats, stalls, status)`, then optionally the stall's verdict
/// name, or `(…, peer, unit, comm)` with an optional verdict after them.
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
                let at = |i: usize| item.get_item(i);
                let (pid, beats, stalls, status): (u32, u64, u64, u8) = (
                    at(0)?.extract()?,
                    at(1)?.extract()?,
                    at(2)?.extract()?,
                    at(3)?.extract()?,
                );
                let len = item.len()?;
                let (peer, unit, comm): (Option<String>, Option<String>, Option<String>) = match len
                {
                    7 | 8 => (at(4)?.extract()?, at(5)?.extract()?, at(6)?.extract()?),
                    4 | 5 => (None, None, None),
                    n => {
                        return Err(PyValueError::new_err(format!(
                            "a row has 4, 5, 7 or 8 items, not {n}"
                        )))
                    }
                };
                let verdict: Option<String> = match len {
                    5 => at(4)?.extract()?,
                    8 => at(7)?.extract()?,
                    _ => None,
                };
                if status > 3 {
                    return Err(PyValueError::new_err(format!(
                        "status {status} out of range 0..=3"
                    )));
                }
                let verdict = match verdict {
                    None => None,
                    Some(name) => Some(
                        Verdict::ALL
                            .into_iter()
                            .find(|v| v.as_str() == name)
                            .ok_or_else(|| {
                                PyValueError::new_err(format!("unknown verdict {name:?}"))
                            })?,
                    ),
                };
                let peer = match peer {
                    None => None,
                    Some(p) => Some(p.parse::<IpAddr>().map_err(|_| {
                        PyValueError::new_err(format!("peer {p:?} is not an IP address"))
                    })?),
                };
                out.push(PidRow {
                    peer,
                    verdict,
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

    /// The rows that get series of their own, at most `limit`: agents not
    /// OK first (stalled, critical, degraded), then the lowest pids
    /// (`docs/observer.md#agent-rows`). Chosen with the GIL released.
    fn capped(&self, py: Python<'_>, limit: usize) -> PyPidRows {
        let rows = Arc::clone(&self.rows);
        PyPidRows::wrap(py.detach(move || rows.capped(limit)))
    }

    /// Counts of every row, computed with the GIL released:
    /// `{"status": {name: n}, "verdict": {name: n}, "unit": [(unit,
    /// {status: n}), ...]}`; at most `max_units` units (the largest), the
    /// rest summed under `"(other)"`.
    #[pyo3(signature = (max_units=1000))]
    fn summary<'py>(&self, py: Python<'py>, max_units: usize) -> PyResult<Bound<'py, PyDict>> {
        let rows = Arc::clone(&self.rows);
        let sum = py.detach(move || rows.summary(max_units));
        let by_status = |counts: &[u64; 4]| -> PyResult<Bound<'py, PyDict>> {
            let d = PyDict::new(py);
            for (name, n) in STATUS_NAMES.iter().zip(counts) {
                d.set_item(name, n)?;
            }
            Ok(d)
        };
        let verdicts = PyDict::new(py);
        for v in Verdict::ALL {
            verdicts.set_item(v.as_str(), sum.by_verdict[v as usize])?;
        }
        let units = sum
            .by_unit
            .iter()
            .map(|(u, c)| (u.as_str(), by_status(c)?).into_pyobject(py))
            .collect::<PyResult<Vec<Bound<'py, PyTuple>>>>()?;
        let out = PyDict::new(py);
        out.set_item("status", by_status(&sum.by_status)?)?;
        out.set_item("verdict", verdicts)?;
        out.set_item("unit", PyList::new(py, units)?)?;
        Ok(out)
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

    /// `name{pid="<pid>",unit="<unit>",comm="<comm>"} <value>\n` per row; `column` is `"beats"`,
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
