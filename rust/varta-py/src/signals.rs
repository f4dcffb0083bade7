//! The daemon's stop-signal latch (`varta_core::observer::signals`).

use crate::errors::Error;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use varta_core::observer::signals::{self, HandlerMode};

/// Install the stop latch for `signals` (`mode` "direct" or "libc").
/// Raises OSError naming the step that failed.
#[pyfunction]
fn _install_stop_handlers(mode: &str, signals: Vec<i32>) -> PyResult<()> {
    let mode = HandlerMode::from_name(mode).ok_or_else(|| {
        PyValueError::new_err(format!("mode must be 'direct' or 'libc', not {mode:?}"))
    })?;
    signals::install_stop_handlers(mode, &signals).map_err(|e| {
        // Always an errno (0 when the core added context): the daemon
        // reports the exception's `strerror`.
        let errno = e.raw_os_error().unwrap_or(0);
        Error::from(e).with_errno(errno).into()
    })
}

/// The latched stop signal, or None.
#[pyfunction]
fn _stop_signal() -> Option<i32> {
    signals::stop_signal()
}

#[pyfunction]
fn _clear_stop_signal() {
    signals::clear_stop_signal();
}

/// Whether `sig`'s disposition is the default action (no handler, not
/// ignored): the forensics channel takes only such a signal
/// (`docs/finding-hangs.md#the-sdk-channel`).
#[pyfunction]
fn _signal_is_default(sig: i32) -> PyResult<bool> {
    varta_core::observer::forensics::signal_is_default(sig).map_err(|e| Error::from(e).into())
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(_signal_is_default, m)?)?;
    m.add_function(wrap_pyfunction!(_install_stop_handlers, m)?)?;
    m.add_function(wrap_pyfunction!(_stop_signal, m)?)?;
    m.add_function(wrap_pyfunction!(_clear_stop_signal, m)?)?;
    Ok(())
}
