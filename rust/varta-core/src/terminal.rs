//! The process-wide high-water mark for crash-terminal frame timestamps
//! (`docs/protocol.md#sender-rules`, `docs/agent.md#crash-hooks`): strictly increasing across threads,
//! re-installs and repeated crashes; ≥ 1; never u64::MAX.
//!
//! Lock-free and allocation-free so that signal handlers may call it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

static HWM: AtomicU64 = AtomicU64::new(0);
static ORIGIN: OnceLock<Instant> = OnceLock::new();

/// Fix the origin of raw terminal timestamps. Call at install time (not from
/// a signal handler: `OnceLock::get_or_init` may block).
pub fn init_origin() {
    ORIGIN.get_or_init(Instant::now);
}

fn raw_ns() -> u64 {
    match ORIGIN.get() {
        Some(o) => u64::try_from(o.elapsed().as_nanos()).unwrap_or(u64::MAX),
        None => 0,
    }
}

/// Claim the next terminal timestamp: `max(raw, hwm + 1)`, CAS-published.
/// `None` when the mark is exhausted (the frame must then be dropped).
pub fn claim() -> Option<u64> {
    let raw = raw_ns();
    let mut prev = HWM.load(Ordering::Relaxed);
    loop {
        let next = raw.max(prev.checked_add(1)?).max(1);
        if next == u64::MAX {
            return None;
        }
        match HWM.compare_exchange_weak(prev, next, Ordering::AcqRel, Ordering::Relaxed) {
            Ok(_) => return Some(next),
            Err(actual) => prev = actual,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strictly_increasing_across_threads() {
        init_origin();
        let handles: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(|| (0..1000).map(|_| claim().unwrap()).collect::<Vec<_>>()))
            .collect();
        let mut all: Vec<u64> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n, "no timestamp handed out twice");
        assert!(all[0] >= 1);
    }
}
