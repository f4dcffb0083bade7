//! `varta._varta`: thin PyO3 glue over `varta-core`.
//!
//! Policy lives in the core (Rust) or in `python/varta` (the daemon); this
//! crate only converts types, raises exceptions and releases the GIL.

use pyo3::prelude::*;

mod codec;
mod pytypes;

#[pymodule]
fn _varta(m: &Bound<'_, PyModule>) -> PyResult<()> {
    codec::register(m)?;
    Ok(())
}
