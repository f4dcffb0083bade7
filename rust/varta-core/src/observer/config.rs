//! What an [`super::Observer`] is built from (`docs/configuration.md`):
//! [`ObserverConfig`] with its defaults, its options by name
//! ([`ObserverConfig::set`], what a binding's keyword arguments feed) and
//! its validation, the UDP listener's rules ([`UdpOptions::resolve`]), and
//! [`ObserverError`], why an observer could not be built.
//!
//! This file is the one place an observer option is defined: adding one is
//! a field, its default in [`ObserverConfig::new`] and an arm in
//! [`ObserverConfig::set`]; the binding passes every keyword through.

use super::clock::ClockSource;
use super::forensics::ForensicsConfig;
use super::tracker::{
    EvictionPolicy, TrackerConfig, TrackerConfigError, MAX_CAPACITY, MAX_SCAN_WINDOW,
};
use super::udp::TransportTrust;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
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
    /// The clock deadlines are measured on.
    pub clock: ClockSource,
    /// The UDP listener, if any (bound by the caller, which holds the keys).
    pub udp: UdpOptions,
    /// Where hang captures go (docs/finding-hangs.md); `None` = no captures.
    pub forensics_dir: Option<PathBuf>,
    /// Captures kept (oldest removed first); 0 = no count bound.
    pub forensics_keep: usize,
    /// Captures older than this many seconds are removed; 0 = no age bound.
    pub forensics_max_age_s: u64,
}

/// The UDP listener's options, as given; [`UdpOptions::resolve`] applies
/// the rules (docs/observer.md#origins).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UdpOptions {
    /// `None` = no UDP listener.
    pub port: Option<u16>,
    /// `None` = [`UdpOptions::default_bind`].
    pub bind_addr: Option<IpAddr>,
    /// Plaintext (unauthenticated) frames accepted; exclusive with keys.
    pub plaintext: bool,
    /// `None` = [`TransportTrust::Untrusted`].
    pub trust: Option<TransportTrust>,
    /// `SO_RCVBUF` request (≤ i32::MAX).
    pub rcvbuf_bytes: u32,
}

impl UdpOptions {
    /// Where a UDP listener binds unless told: loopback when sealed (a key
    /// is shared by few), every interface when plaintext (asked for).
    pub const fn default_bind(secure: bool) -> IpAddr {
        if secure {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        }
    }

    /// The address to bind and the trust given to its beats, or `None`
    /// without a port; `secure` says whether keys were given. Secure with
    /// any key, plaintext only when asked for, and no other UDP option
    /// without a port.
    pub fn resolve(
        &self,
        secure: bool,
    ) -> Result<Option<(SocketAddr, TransportTrust)>, ObserverError> {
        let config = |m: &str| Err(ObserverError::Config(m.to_owned()));
        let Some(port) = self.port else {
            if secure || self.plaintext || self.bind_addr.is_some() || self.trust.is_some() {
                return config(
                    "keys, master_key, plaintext_udp, udp_bind_addr and udp_trust need udp_port",
                );
            }
            return Ok(None);
        };
        if secure && self.plaintext {
            return config(
                "plaintext_udp=True and keys are exclusive: one UDP listener is either secure or plaintext",
            );
        }
        if !secure && !self.plaintext {
            return config(
                "udp_port without keys or master_key needs plaintext_udp=True (unauthenticated UDP)",
            );
        }
        let ip = self.bind_addr.unwrap_or(UdpOptions::default_bind(secure));
        Ok(Some((
            SocketAddr::new(ip, port),
            self.trust.unwrap_or_default(),
        )))
    }
}

/// An option's value as a binding hands it over ([`ObserverConfig::set`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptionValue<'a> {
    Bool(bool),
    Int(u64),
    Str(&'a str),
}

/// Why [`ObserverConfig::set`] refused an option.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OptionError {
    /// No option has this name (the binding raises `TypeError`).
    Unknown(String),
    /// The value has the wrong type (`TypeError`).
    Type {
        name: &'static str,
        expected: &'static str,
    },
    /// An integer that does not fit the option's type (`OverflowError`,
    /// as Python's own int conversions raise).
    Overflow(String),
    /// The value is out of range or not one of the names (`ValueError`).
    Value(String),
}

impl fmt::Display for OptionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OptionError::Unknown(name) => write!(f, "unexpected keyword argument {name:?}"),
            OptionError::Type { name, expected } => write!(f, "{name} must be {expected}"),
            OptionError::Overflow(m) | OptionError::Value(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for OptionError {}

/// The typed views of an [`OptionValue`], each naming the option it is for.
impl<'a> OptionValue<'a> {
    fn boolean(self, name: &'static str) -> Result<bool, OptionError> {
        match self {
            OptionValue::Bool(b) => Ok(b),
            _ => Err(OptionError::Type {
                name,
                expected: "a bool",
            }),
        }
    }

    fn int<T: TryFrom<u64>>(self, name: &'static str) -> Result<T, OptionError> {
        match self {
            OptionValue::Int(n) => T::try_from(n)
                .map_err(|_| OptionError::Overflow(format!("{name} {n} is out of range"))),
            _ => Err(OptionError::Type {
                name,
                expected: "a non-negative int",
            }),
        }
    }

    fn text(self, name: &'static str) -> Result<&'a str, OptionError> {
        match self {
            OptionValue::Str(s) => Ok(s),
            _ => Err(OptionError::Type {
                name,
                expected: "a str",
            }),
        }
    }

    /// One of a closed set of names (`parse` returns `None` for others).
    fn named<T>(
        self,
        name: &'static str,
        choices: &str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Result<T, OptionError> {
        let s = self.text(name)?;
        parse(s).ok_or_else(|| OptionError::Value(format!("{name} must be {choices}, not {s:?}")))
    }
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
            clock: ClockSource::Monotonic,
            udp: UdpOptions {
                port: None,
                bind_addr: None,
                plaintext: false,
                trust: None,
                rcvbuf_bytes: 1_048_576,
            },
            forensics_dir: None,
            forensics_keep: ForensicsConfig::DEFAULT_KEEP,
            forensics_max_age_s: 0,
        }
    }

    /// The capture worker's configuration, when captures are on (the keep
    /// and age bounds mean nothing without a directory).
    pub fn forensics(&self) -> Option<ForensicsConfig> {
        self.forensics_dir.as_ref().map(|dir| {
            let mut f = ForensicsConfig::new(dir.clone());
            f.keep = self.forensics_keep;
            f.max_age = (self.forensics_max_age_s > 0)
                .then(|| std::time::Duration::from_secs(self.forensics_max_age_s));
            f
        })
    }

    /// Set one option by its keyword name (`docs/configuration.md`); the
    /// range checks that involve no other option are here, the rest in
    /// [`ObserverConfig::validate`] and [`UdpOptions::resolve`].
    pub fn set(&mut self, name: &str, value: OptionValue<'_>) -> Result<(), OptionError> {
        let v = value;
        match name {
            "socket_mode" => self.socket_mode = v.int("socket_mode")?,
            "capacity" => self.tracker.capacity = v.int("capacity")?,
            "eviction" => {
                self.tracker.eviction = v.named(
                    "eviction",
                    "'strict' or 'balanced'",
                    EvictionPolicy::from_name,
                )?
            }
            "eviction_scan_window" => self.tracker.scan_window = v.int("eviction_scan_window")?,
            "uds_rcvbuf_bytes" => self.uds_rcvbuf_bytes = v.int("uds_rcvbuf_bytes")?,
            "max_beat_rate" => self.max_beat_rate = v.int("max_beat_rate")?,
            "global_beat_rate" => self.global_beat_rate = v.int("global_beat_rate")?,
            "global_beat_burst" => self.global_beat_burst = v.int("global_beat_burst")?,
            "allow_cross_namespace" => {
                self.allow_cross_namespace = v.boolean("allow_cross_namespace")?
            }
            "emit_beats" => self.emit_beats = v.boolean("emit_beats")?,
            "exit_watch" => self.exit_watch = v.boolean("exit_watch")?,
            "clock" => {
                self.clock =
                    v.named("clock", "'monotonic' or 'boottime'", ClockSource::from_name)?
            }
            "udp_port" => self.udp.port = Some(v.int("udp_port")?),
            "udp_bind_addr" => {
                let text = v.text("udp_bind_addr")?;
                let ip = text.parse().map_err(|_| {
                    OptionError::Value(format!("udp_bind_addr {text:?} is not an IP address"))
                })?;
                self.udp.bind_addr = Some(ip);
            }
            "plaintext_udp" => self.udp.plaintext = v.boolean("plaintext_udp")?,
            "udp_trust" => {
                self.udp.trust = Some(v.named(
                    "udp_trust",
                    "'untrusted' or 'operator'",
                    TransportTrust::from_name,
                )?)
            }
            "udp_rcvbuf_bytes" => self.udp.rcvbuf_bytes = v.int("udp_rcvbuf_bytes")?,
            "forensics_dir" => self.forensics_dir = Some(v.text("forensics_dir")?.into()),
            "forensics_keep" => self.forensics_keep = v.int("forensics_keep")?,
            "forensics_max_age_s" => self.forensics_max_age_s = v.int("forensics_max_age_s")?,
            other => return Err(OptionError::Unknown(other.to_owned())),
        }
        Ok(())
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
        for (name, bytes) in [
            ("uds_rcvbuf_bytes", self.uds_rcvbuf_bytes),
            ("udp_rcvbuf_bytes", self.udp.rcvbuf_bytes),
        ] {
            if bytes > i32::MAX as u32 {
                return Err(ObserverError::Config(format!(
                    "{name} {bytes} exceeds {}",
                    i32::MAX
                )));
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ObserverConfig {
        ObserverConfig::new(None, 1_000_000_000)
    }

    #[test]
    fn every_option_is_set_by_its_keyword_name() {
        let mut c = cfg();
        c.set("socket_mode", OptionValue::Int(0o640)).unwrap();
        c.set("capacity", OptionValue::Int(7)).unwrap();
        c.set("eviction", OptionValue::Str("balanced")).unwrap();
        c.set("clock", OptionValue::Str("boottime")).unwrap();
        c.set("exit_watch", OptionValue::Bool(false)).unwrap();
        c.set("udp_port", OptionValue::Int(9000)).unwrap();
        c.set("udp_bind_addr", OptionValue::Str("::1")).unwrap();
        c.set("udp_trust", OptionValue::Str("operator")).unwrap();
        assert_eq!(c.socket_mode, 0o640);
        assert_eq!(c.tracker.capacity, 7);
        assert_eq!(c.tracker.eviction, EvictionPolicy::Balanced);
        assert_eq!(c.clock, ClockSource::Boottime);
        assert!(!c.exit_watch);
        assert_eq!(c.udp.port, Some(9000));
        assert_eq!(c.udp.bind_addr, Some("::1".parse().unwrap()));
        assert_eq!(c.udp.trust, Some(TransportTrust::Operator));
    }

    #[test]
    fn bad_options_say_which_and_why() {
        let mut c = cfg();
        assert_eq!(
            c.set("no_such", OptionValue::Bool(true)),
            Err(OptionError::Unknown("no_such".into()))
        );
        assert!(matches!(
            c.set("capacity", OptionValue::Str("7")),
            Err(OptionError::Type {
                name: "capacity",
                ..
            })
        ));
        assert!(matches!(
            c.set("udp_port", OptionValue::Int(70_000)),
            Err(OptionError::Overflow(m)) if m.contains("udp_port")
        ));
        let e = c.set("clock", OptionValue::Str("wall")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "clock must be 'monotonic' or 'boottime', not \"wall\""
        );
        assert_eq!(c, cfg(), "a refused option changes nothing");
    }

    #[test]
    fn udp_rules() {
        let mut u = cfg().udp;
        assert_eq!(u.resolve(false).unwrap(), None);
        u.plaintext = true;
        assert!(u.resolve(false).is_err(), "plaintext_udp needs udp_port");
        u.port = Some(9000);
        let any: IpAddr = "0.0.0.0".parse().unwrap();
        assert_eq!(
            u.resolve(false).unwrap(),
            Some((SocketAddr::new(any, 9000), TransportTrust::Untrusted))
        );
        assert!(u.resolve(true).is_err(), "plaintext and keys are exclusive");
        u.plaintext = false;
        assert!(u.resolve(false).is_err(), "udp_port alone is not plaintext");
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(
            u.resolve(true).unwrap().unwrap().0,
            SocketAddr::new(lo, 9000)
        );
    }
}
