//! `varta._varta`: thin PyO3 glue over `varta-core`.
//!
//! Policy lives in the core (Rust) or in `python/varta` (the daemon); this
//! crate only converts types, raises exceptions and releases the GIL.

use pyo3::prelude::*;

mod agent;
mod codec;
mod errors;
#[cfg(target_os = "linux")]
mod events;
mod heartbeat;
// The observer side needs the core's Linux-only observer module.
#[cfg(target_os = "linux")]
mod observer;
mod panic;
mod pytypes;
#[cfg(target_os = "linux")]
mod rows;
mod secure;
#[cfg(target_os = "linux")]
mod signals;

#[pymodule]
fn _varta(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // One version source: the workspace Cargo.toml (maturin takes the wheel's from it too).
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    codec::register(m)?;
    agent::register(m)?;
    heartbeat::register(m)?;
    #[cfg(target_os = "linux")]
    observer::register(m)?;
    #[cfg(target_os = "linux")]
    rows::register(m)?;
    panic::register(m)?;
    secure::register(m)?;
    #[cfg(target_os = "linux")]
    signals::register(m)?;
    testing(m)
}

/// `varta._varta._testing`: test and benchmark entry points (sealing and
/// key derivation for cross-checks, agent state hooks, benchmark loops).
/// Not public API and not re-exported by `varta`.
fn testing(parent: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = parent.py();
    let m = PyModule::new(py, "varta._varta._testing")?;
    agent::register_testing(&m)?;
    secure::register_testing(&m)?;
    #[cfg(target_os = "linux")]
    observer::register_testing(&m)?;
    // An attribute, not in `__all__`: `from varta._varta import *` stays public names only.
    parent.setattr("_testing", &m)?;
    // A native submodule has no file: register it so that
    // `import varta._varta._testing` finds it too.
    py.import("sys")?
        .getattr("modules")?
        .set_item("varta._varta._testing", &m)?;
    Ok(())
}
