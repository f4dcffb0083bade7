//! What an [`super::Observer`] is built from (`docs/configuration.md`):
//! [`ObserverConfig`] with its defaults and validation, and
//! [`ObserverError`], why an observer could not be built.

use super::tracker::{TrackerConfig, TrackerConfigError, MAX_CAPACITY, MAX_SCAN_WINDOW};
use std::fmt;
use std::io;
use std::path::PathBuf;

/// Everything an [`super::Observer`] needs besides its clock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObserverConfig {
    /// UDS listener path; `None` = no Unix listener.
    pub socket_path: Option<PathBuf>,
    /// Socket file mode (≤ 0o777).
    pub socket_mode: u32,
    /// `SO_RCVBUF` request (0 = kernel default; ≤ i32::MAX).
    pub uds_rcvbuf_bytes: u32,
    pub tracker: TrackerConfig,
    /// Per-pid beats per second (0 = off).
    pub max_beat_rate: u32,
    /// Global token bucket refill per second (0 = off).
    pub global_beat_rate: u32,
    /// Global token bucket capacity (0 = off).
    pub global_beat_burst: u32,
    pub allow_cross_namespace: bool,
    /// Emit a `Beat` event per accepted beat (else beats are only counted).
    pub emit_beats: bool,
    /// Watch kernel-attested agents' pidfds so exits are reported at once
    /// ([`super::exitwatch`]); off = exits are found at the threshold.
    pub exit_watch: bool,
}

impl ObserverConfig {
    /// Defaults of `docs/configuration.md` for `threshold_ns`.
    pub fn new(socket_path: Option<PathBuf>, threshold_ns: u64) -> ObserverConfig {
        ObserverConfig {
            socket_path,
            socket_mode: 0o600,
            uds_rcvbuf_bytes: 1_048_576,
            tracker: TrackerConfig::new(threshold_ns),
            max_beat_rate: 100,
            global_beat_rate: 5000,
            global_beat_burst: 10_000,
            allow_cross_namespace: false,
            emit_beats: true,
            exit_watch: true,
        }
    }

    /// Every value in range (the binding raises `ValueError` otherwise).
    pub fn validate(&self) -> Result<(), ObserverError> {
        let t = &self.tracker;
        if t.threshold_ns == 0 {
            return Err(ObserverError::Config(
                TrackerConfigError::Threshold(0).to_string(),
            ));
        }
        if !(1..=MAX_CAPACITY).contains(&t.capacity) {
            return Err(ObserverError::Config(
                TrackerConfigError::Capacity(t.capacity).to_string(),
            ));
        }
        if !(1..=MAX_SCAN_WINDOW).contains(&t.scan_window) {
            return Err(ObserverError::Config(
                TrackerConfigError::ScanWindow(t.scan_window).to_string(),
            ));
        }
        if self.socket_mode > 0o777 {
            return Err(ObserverError::Config(format!(
                "socket_mode {:#o} is not a permission mode (at most 0o777)",
                self.socket_mode
            )));
        }
        if self.uds_rcvbuf_bytes > i32::MAX as u32 {
            return Err(ObserverError::Config(format!(
                "uds_rcvbuf_bytes {} exceeds {}",
                self.uds_rcvbuf_bytes,
                i32::MAX
            )));
        }
        Ok(())
    }
}

/// Why an observer could not be built.
#[derive(Debug)]
pub enum ObserverError {
    /// A configuration value out of range (the binding raises `ValueError`).
    Config(String),
    /// Binding a listener or opening the clock failed (`OSError`).
    Io(io::Error),
}

impl fmt::Display for ObserverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ObserverError::Config(m) => f.write_str(m),
            ObserverError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ObserverError {}

impl From<io::Error> for ObserverError {
    fn from(e: io::Error) -> Self {
        ObserverError::Io(e)
    }
}

impl From<TrackerConfigError> for ObserverError {
    fn from(e: TrackerConfigError) -> Self {
        ObserverError::Config(e.to_string())
    }
}
