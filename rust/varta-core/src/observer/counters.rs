//! Tracker-side counters (`docs/observer.md#metric-families`). Cumulative since the tracker
//! was built (never drained); the observer reads them for `counters()` and the
//! Prometheus families. Every increment saturates.

/// Cumulative tracker counters. Field → `counters()` key (docs/observer.md#metric-families
/// family name without `varta_` / `_total`) is given by [`TrackerCounters::entries`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrackerCounters {
    /// Accepted beats, all pids (Inserted + Refreshed).
    pub beats: u64,
    /// Stalls emitted (one per silence run per pid).
    pub stalls: u64,
    /// Regular frames at or below the last nonce and repeated terminals.
    pub out_of_order: u64,
    /// Slots reclaimed by eviction (docs/observer.md#eviction).
    pub tracker_evicted: u64,
    /// New pids dropped because the table was full (or the index probe ran out).
    pub capacity_exceeded: u64,
    /// Eviction attempts in which at least one pass ran and found no victim.
    pub eviction_scan_truncated: u64,
    /// Beats from an origin weaker than the slot's pin.
    pub origin_conflict: u64,
    /// Beats refused by first-namespace-wins.
    pub namespace_conflict: u64,
    /// Slot resets by generation change or network recycle, and retirements.
    pub pid_recycle: u64,
    /// Regular nonces accepted by the wrap rule.
    pub nonce_wrap: u64,
    /// Pid-index operations that hit the 64-probe limit.
    pub probe_exhausted: u64,
    /// Removed pids not recorded because the removed list was full.
    pub removed_pid_drops: u64,
    /// Internal consistency failures recovered without panicking (should stay 0).
    pub invariant_violations: u64,
    /// Slots retired because their agent ended (`docs/verdicts.md`).
    pub retired: u64,
    /// Network beats refused because the sender table was full
    /// (docs/observer.md#agent-identity; also counted in `capacity_exceeded`).
    pub peer_table_full: u64,
    /// Stalls by verdict, indexed by `Verdict as usize` (labelled family
    /// `stall_verdicts`, not in [`TrackerCounters::entries`]).
    pub stall_verdicts: [u64; 5],
}

impl TrackerCounters {
    /// `(counters() key, value)` for every field.
    pub fn entries(&self) -> [(&'static str, u64); 15] {
        [
            ("beats", self.beats),
            ("stalls", self.stalls),
            ("out_of_order", self.out_of_order),
            ("tracker_evicted", self.tracker_evicted),
            ("tracker_capacity_exceeded", self.capacity_exceeded),
            (
                "tracker_eviction_scan_truncated",
                self.eviction_scan_truncated,
            ),
            ("origin_conflict", self.origin_conflict),
            ("tracker_namespace_conflict", self.namespace_conflict),
            ("tracker_pid_recycle", self.pid_recycle),
            ("nonce_wrap", self.nonce_wrap),
            ("tracker_pid_index_probe_exhausted", self.probe_exhausted),
            ("tracker_removed_pid_drops", self.removed_pid_drops),
            ("tracker_invariant_violations", self.invariant_violations),
            ("tracker_retired", self.retired),
            ("tracker_peer_table_full", self.peer_table_full),
        ]
    }
}

/// Saturating `+= 1`.
#[inline]
pub(crate) fn bump(c: &mut u64) {
    *c = c.saturating_add(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_cover_every_field_with_distinct_keys() {
        let c = TrackerCounters {
            beats: 1,
            stalls: 2,
            out_of_order: 3,
            tracker_evicted: 4,
            capacity_exceeded: 5,
            eviction_scan_truncated: 6,
            origin_conflict: 7,
            namespace_conflict: 8,
            pid_recycle: 9,
            nonce_wrap: 10,
            probe_exhausted: 11,
            removed_pid_drops: 12,
            invariant_violations: 13,
            retired: 14,
            peer_table_full: 15,
            stall_verdicts: [0; 5],
        };
        let e = c.entries();
        let mut values: Vec<u64> = e.iter().map(|(_, v)| *v).collect();
        values.sort_unstable();
        assert_eq!(values, (1..=15).collect::<Vec<_>>());
        let mut keys: Vec<&str> = e.iter().map(|(k, _)| *k).collect();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), 15);
    }

    #[test]
    fn bump_saturates() {
        let mut c = u64::MAX;
        bump(&mut c);
        assert_eq!(c, u64::MAX);
    }
}
