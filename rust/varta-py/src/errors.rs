//! The binding's one way from a core error to a Python exception.
//!
//! Every `OSError` the binding raises is built here: `OSError(errno,
//! strerror[, filename])`, whose constructor picks the subclass from the
//! errno (`FileNotFoundError`, `ConnectionRefusedError`, …), or
//! `OSError(message)` when there is no errno. Configuration and content
//! errors are `ValueError`. Call sites convert with `?` (through
//! [`Error`]'s `From` impls) and name the path or address with [`Error::at`].

use pyo3::exceptions::{PyOSError, PyOverflowError, PyPermissionError, PyTypeError, PyValueError};
use pyo3::PyErr;
use std::io;
use varta_core::secure::KeyFileError;

/// An error on its way to Python.
#[derive(Debug)]
pub enum Error {
    /// `OSError`: `message` is the strerror for a bare OS error, else the
    /// error's own text; `filename` names the path or address it concerns.
    Os {
        errno: Option<i32>,
        message: String,
        filename: Option<String>,
    },
    /// `PermissionError` for a rule (not an OS) refusal: key-file permissions.
    Permission(String),
    /// `ValueError`: a bad option or bad content.
    Value(String),
    /// `TypeError`: an unknown keyword or a value of the wrong type.
    Type(String),
    /// `OverflowError`: an int that does not fit its option.
    Overflow(String),
}

impl Error {
    /// An `OSError` with this errno (if any) and message.
    pub fn os(errno: Option<i32>, message: impl Into<String>) -> Error {
        Error::Os {
            errno,
            message: message.into(),
            filename: None,
        }
    }

    /// Name the path or address the error is about (the `OSError`'s
    /// `filename`; without an errno it is appended to the message).
    pub fn at(self, target: impl Into<String>) -> Error {
        match self {
            Error::Os { errno, message, .. } => Error::Os {
                errno,
                message,
                filename: Some(target.into()),
            },
            other => other,
        }
    }

    /// Replace the errno (for callers that must always give one, so the
    /// exception's `strerror` is set).
    pub fn with_errno(self, errno: i32) -> Error {
        match self {
            Error::Os {
                message, filename, ..
            } => Error::Os {
                errno: Some(errno),
                message,
                filename,
            },
            other => other,
        }
    }
}

/// The errno of an OS error, also when the core wrapped it with context.
fn errno_of(e: &io::Error) -> Option<i32> {
    #[cfg(target_os = "linux")]
    {
        varta_core::observer::listener::error_errno(e)
    }
    #[cfg(not(target_os = "linux"))]
    {
        e.raw_os_error()
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Error {
        Error::from(&e)
    }
}

impl From<&io::Error> for Error {
    fn from(e: &io::Error) -> Error {
        let message = match e.raw_os_error() {
            // The bare strerror, as Python's own OSErrors carry it (Rust
            // appends " (os error N)", which the errno already says).
            Some(code) => {
                let full = e.to_string();
                let suffix = format!(" (os error {code})");
                full.strip_suffix(&suffix).unwrap_or(&full).to_owned()
            }
            None => e.to_string(),
        };
        Error::os(errno_of(e), message)
    }
}

impl From<KeyFileError> for Error {
    /// Rule violations → `PermissionError`, OS errors → the matching
    /// `OSError` subclass with the filename, content → `ValueError`.
    fn from(e: KeyFileError) -> Error {
        if e.is_permission_error() {
            return Error::Permission(e.to_string());
        }
        if let Some(io) = e.io_error() {
            let path = e.path.to_string_lossy().into_owned();
            return match io.raw_os_error() {
                Some(_) => Error::from(io).at(path),
                None => Error::os(None, e.to_string()),
            };
        }
        Error::Value(e.to_string())
    }
}

#[cfg(target_os = "linux")]
impl From<varta_core::observer::ObserverError> for Error {
    fn from(e: varta_core::observer::ObserverError) -> Error {
        use varta_core::observer::ObserverError;
        match e {
            ObserverError::Config(m) => Error::Value(m),
            ObserverError::Io(e) => Error::from(e),
        }
    }
}

#[cfg(target_os = "linux")]
impl From<varta_core::observer::config::OptionError> for Error {
    fn from(e: varta_core::observer::config::OptionError) -> Error {
        use varta_core::observer::config::OptionError;
        match e {
            OptionError::Unknown(_) | OptionError::Type { .. } => Error::Type(e.to_string()),
            OptionError::Overflow(m) => Error::Overflow(m),
            OptionError::Value(m) => Error::Value(m),
        }
    }
}

impl From<Error> for PyErr {
    fn from(e: Error) -> PyErr {
        match e {
            Error::Os {
                errno: Some(errno),
                message,
                filename: Some(f),
            } => PyOSError::new_err((errno, message, f)),
            Error::Os {
                errno: Some(errno),
                message,
                filename: None,
            } => PyOSError::new_err((errno, message)),
            Error::Os {
                errno: None,
                message,
                filename: Some(f),
            } => PyOSError::new_err(format!("{message}: {f}")),
            Error::Os {
                errno: None,
                message,
                filename: None,
            } => PyOSError::new_err(message),
            Error::Permission(m) => PyPermissionError::new_err(m),
            Error::Value(m) => PyValueError::new_err(m),
            Error::Type(m) => PyTypeError::new_err(m),
            Error::Overflow(m) => PyOverflowError::new_err(m),
        }
    }
}
