//! Observer time (`docs/observer.md#stall-detection`): nanoseconds since observer start on the
//! configured clock source, clamped forward.
//!
//! The tracker never reads a clock itself — every method takes `now_ns` — so
//! tests drive a [`FakeClock`] and never sleep. The observer owns one
//! `Box<dyn Clock>` and passes `clock.now_ns()` down.
//!
//! [`MonotonicClock`] counts two anomalies (exported as
//! `observer_clock_regression` / `observer_clock_jump_forward`):
//! a reading below the previous one (the returned time stays put — clamped
//! forward), and a forward step of more than [`JUMP_FORWARD_NS`] between two
//! consecutive readings (the time is still accepted).

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A forward step larger than this between two readings counts as a jump.
pub const JUMP_FORWARD_NS: u64 = 5_000_000_000;

/// A source of observer time. `Send + Sync` so an observer holding a
/// `Box<dyn Clock>` can be shared behind a lock.
pub trait Clock: Send + Sync {
    /// Nanoseconds since the clock's origin (observer start); never decreases.
    fn now_ns(&self) -> u64;
    /// Readings that went backwards (and were clamped). Zero for fake clocks.
    fn regressions(&self) -> u64 {
        0
    }
    /// Forward steps larger than [`JUMP_FORWARD_NS`]. Zero for fake clocks.
    fn jumps_forward(&self) -> u64 {
        0
    }
}

/// Which kernel clock drives observer time (`--clock-source`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClockSource {
    /// `CLOCK_MONOTONIC` (does not advance during suspend).
    Monotonic,
    /// `CLOCK_BOOTTIME` (Linux only; counts time spent suspended).
    Boottime,
}

impl ClockSource {
    /// `"monotonic"` / `"boottime"` (case-sensitive, as on the command line).
    pub fn from_name(name: &str) -> Option<ClockSource> {
        match name {
            "monotonic" => Some(ClockSource::Monotonic),
            "boottime" => Some(ClockSource::Boottime),
            _ => None,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            ClockSource::Monotonic => "monotonic",
            ClockSource::Boottime => "boottime",
        }
    }

    fn clock_id(self) -> io::Result<libc::clockid_t> {
        match self {
            ClockSource::Monotonic => Ok(libc::CLOCK_MONOTONIC),
            #[cfg(any(target_os = "linux", target_os = "android"))]
            ClockSource::Boottime => Ok(libc::CLOCK_BOOTTIME),
            #[cfg(not(any(target_os = "linux", target_os = "android")))]
            ClockSource::Boottime => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "clock source boottime is only supported on Linux",
            )),
        }
    }
}

fn read_raw(id: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the id was validated at
    // construction (clock_gettime succeeded once).
    let rc = unsafe { libc::clock_gettime(id, &mut ts) };
    if rc != 0 {
        // Cannot happen for a validated clock id; report "no progress" so the
        // clamp keeps time where it was.
        return 0;
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// The real observer clock: ns since construction on [`ClockSource`],
/// clamped forward, with regression / forward-jump counters.
#[derive(Debug)]
pub struct MonotonicClock {
    id: libc::clockid_t,
    source: ClockSource,
    origin_raw: u64,
    /// Last returned observer time (the clamp floor).
    last: AtomicU64,
    regressions: AtomicU64,
    jumps_forward: AtomicU64,
}

impl MonotonicClock {
    /// Open the clock; `Unsupported` if the source does not exist here.
    pub fn new(source: ClockSource) -> io::Result<MonotonicClock> {
        let id = source.clock_id()?;
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: valid out-pointer.
        if unsafe { libc::clock_gettime(id, &mut ts) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(MonotonicClock {
            id,
            source,
            origin_raw: read_raw(id),
            last: AtomicU64::new(0),
            regressions: AtomicU64::new(0),
            jumps_forward: AtomicU64::new(0),
        })
    }

    pub fn source(&self) -> ClockSource {
        self.source
    }

    /// Feed one raw reading (ns since the origin, may be "negative" =
    /// `None`) through the clamp. Split out so the anomaly accounting is
    /// testable without a misbehaving kernel clock.
    fn observe(&self, since_origin: Option<u64>) -> u64 {
        let prev = self.last.load(Ordering::Relaxed);
        match since_origin {
            Some(t) if t >= prev => {
                if t - prev > JUMP_FORWARD_NS {
                    self.jumps_forward.fetch_add(1, Ordering::Relaxed);
                }
                // Another thread may have advanced `last` concurrently; keep
                // the maximum so the result never decreases.
                self.last.fetch_max(t, Ordering::Relaxed).max(t)
            }
            _ => {
                self.regressions.fetch_add(1, Ordering::Relaxed);
                prev
            }
        }
    }

    #[doc(hidden)]
    pub fn observe_raw_for_test(&self, since_origin: Option<u64>) -> u64 {
        self.observe(since_origin)
    }
}

impl Clock for MonotonicClock {
    fn now_ns(&self) -> u64 {
        let raw = read_raw(self.id);
        self.observe(raw.checked_sub(self.origin_raw))
    }

    fn regressions(&self) -> u64 {
        self.regressions.load(Ordering::Relaxed)
    }

    fn jumps_forward(&self) -> u64 {
        self.jumps_forward.load(Ordering::Relaxed)
    }
}

/// A settable clock for tests: clones share one time value.
#[derive(Clone, Debug, Default)]
pub struct FakeClock {
    ns: Arc<AtomicU64>,
}

impl FakeClock {
    pub fn new(start_ns: u64) -> FakeClock {
        FakeClock {
            ns: Arc::new(AtomicU64::new(start_ns)),
        }
    }

    /// Set the time (tests may move it backwards; the tracker copes).
    pub fn set(&self, ns: u64) {
        self.ns.store(ns, Ordering::Relaxed);
    }

    /// Advance by `delta_ns`; returns the new time.
    pub fn advance(&self, delta_ns: u64) -> u64 {
        self.ns.fetch_add(delta_ns, Ordering::Relaxed) + delta_ns
    }
}

impl Clock for FakeClock {
    fn now_ns(&self) -> u64 {
        self.ns.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_clock_starts_near_zero_and_never_decreases() {
        let c = MonotonicClock::new(ClockSource::Monotonic).unwrap();
        let a = c.now_ns();
        assert!(a < 1_000_000_000, "origin is observer start, got {a}");
        let mut prev = a;
        for _ in 0..1000 {
            let t = c.now_ns();
            assert!(t >= prev);
            prev = t;
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn boottime_clock_opens_on_linux() {
        let c = MonotonicClock::new(ClockSource::Boottime).unwrap();
        assert_eq!(c.source(), ClockSource::Boottime);
        let _ = c.now_ns();
    }

    #[test]
    fn regression_is_clamped_and_counted() {
        let c = MonotonicClock::new(ClockSource::Monotonic).unwrap();
        assert_eq!(c.observe_raw_for_test(Some(1_000)), 1_000);
        assert_eq!(c.observe_raw_for_test(Some(500)), 1_000);
        assert_eq!(c.observe_raw_for_test(None), 1_000);
        assert_eq!(c.regressions(), 2);
        assert_eq!(c.observe_raw_for_test(Some(2_000)), 2_000);
        assert_eq!(c.jumps_forward(), 0);
    }

    #[test]
    fn forward_jump_over_five_seconds_is_counted_and_accepted() {
        let c = MonotonicClock::new(ClockSource::Monotonic).unwrap();
        assert_eq!(
            c.observe_raw_for_test(Some(JUMP_FORWARD_NS)),
            JUMP_FORWARD_NS
        );
        assert_eq!(c.jumps_forward(), 0, "exactly 5 s is not a jump");
        let t = 2 * JUMP_FORWARD_NS + 1;
        assert_eq!(c.observe_raw_for_test(Some(t)), t);
        assert_eq!(c.jumps_forward(), 1);
    }

    #[test]
    fn names_round_trip() {
        for s in [ClockSource::Monotonic, ClockSource::Boottime] {
            assert_eq!(ClockSource::from_name(s.as_str()), Some(s));
        }
        assert_eq!(ClockSource::from_name("monotonic-raw"), None);
    }

    #[test]
    fn fake_clock_is_shared_between_clones() {
        let a = FakeClock::new(5);
        let b = a.clone();
        assert_eq!(b.advance(10), 15);
        assert_eq!(a.now_ns(), 15);
        a.set(3);
        assert_eq!(b.now_ns(), 3);
    }
}
