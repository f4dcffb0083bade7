//! Per-pid exporter rows (`docs/observer.md#per-pid-families`): a compact copy of the
//! tracker's per-pid counts and the Prometheus sample lines for them.
//!
//! The daemon renders `varta_beats_total`, `varta_stalls_total` and
//! `varta_status` per agent. For every tracked pid that was up to
//! 1,000,000 rows, ~100 MB of text: no Prometheus should ingest that, so the
//! rows are capped (`docs/observer.md#agent-rows`): [`PidRows::capped`]
//! picks the agents that get rows of their own (not OK first, then the
//! lowest pids) and [`PidRows::summary`] counts every agent by status,
//! verdict and unit. Both are one pass here, never a walk over Python
//! objects; the copy (on the poll loop) is one pass over the slots and the
//! text (on the metrics thread) is written here.

use super::procfs::Comm;
use super::tracker::Tracker;
use super::verdict::Verdict;
use std::collections::HashMap;
use std::io::Write;
use std::net::IpAddr;
use std::sync::Arc;

/// Tracker slots copied per [`PidRows::copy_chunk`] (64 B each: 4 MiB).
pub const COPY_CHUNK: usize = 65_536;

/// `varta_status` value of a stall-latched pid.
pub const STATUS_STALL: u8 = 3;

/// One agent's exporter row.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PidRow {
    pub pid: u32,
    /// The network sender's address; `None` for the Unix socket
    /// (docs/observer.md#agent-identity). With the pid it names the agent.
    pub peer: Option<IpAddr>,
    pub beats: u64,
    pub stalls: u64,
    /// 0/1/2 = status of the last accepted beat, 3 = stalled.
    pub status: u8,
    /// The verdict of the current stall, while stalled.
    pub verdict: Option<Verdict>,
    /// The systemd unit and command name, when the observer read them
    /// (kernel-attested agents), for labels.
    pub unit: Option<Arc<str>>,
    pub comm: Option<Comm>,
}

impl PidRow {
    /// A row without identity (tests, fakes).
    pub fn bare(pid: u32, beats: u64, stalls: u64, status: u8) -> PidRow {
        PidRow {
            pid,
            peer: None,
            beats,
            stalls,
            status,
            verdict: None,
            unit: None,
            comm: None,
        }
    }

    /// The `unit` and `comm` labels of this row's series and of the
    /// by-unit counts (`docs/observer.md#agent-rows`): the one place the
    /// exporter reads an agent's identity, empty while the tracker does
    /// not know it (a command name that is not UTF-8 is left out).
    pub fn identity(&self) -> (&str, &str) {
        let unit = self.unit.as_deref().unwrap_or("");
        let comm = self
            .comm
            .as_ref()
            .and_then(|c| std::str::from_utf8(c.as_bytes()).ok())
            .unwrap_or("");
        (unit, comm)
    }
}

/// Status names in `varta_status` value order (`varta_agents{status}`).
pub const STATUS_NAMES: [&str; 4] = ["ok", "degraded", "critical", "stall"];

/// The by-unit count of the units that did not make the cut
/// ([`PidRows::summary`]); systemd unit names cannot contain parentheses.
pub const OTHER_UNITS: &str = "(other)";

/// Counts over every row (`docs/observer.md#agent-rows`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RowSummary {
    /// Rows by status (index = [`PidRow::status`]).
    pub by_status: [u64; 4],
    /// Stalled rows by verdict (index = `Verdict as u8`).
    pub by_verdict: [u64; 5],
    /// Rows by unit, then by status; sorted by unit. At most `max_units`
    /// units, the largest (ties: by name); the rest are summed under
    /// [`OTHER_UNITS`].
    pub by_unit: Vec<(String, [u64; 4])>,
}

/// Which number of a row a family exports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowColumn {
    Beats,
    Stalls,
    Status,
}

impl RowColumn {
    /// `"beats"`, `"stalls"`, `"status"`.
    pub fn from_name(name: &str) -> Option<RowColumn> {
        match name {
            "beats" => Some(RowColumn::Beats),
            "stalls" => Some(RowColumn::Stalls),
            "status" => Some(RowColumn::Status),
            _ => None,
        }
    }

    pub fn value(self, row: &PidRow) -> u64 {
        match self {
            RowColumn::Beats => row.beats,
            RowColumn::Stalls => row.stalls,
            RowColumn::Status => u64::from(row.status),
        }
    }
}

/// Rows sorted by pid, then sender (the docs/observer.md#per-pid-families
/// order); (pid, sender) is unique in a tracker.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PidRows {
    rows: Vec<PidRow>,
}

impl PidRows {
    /// From any rows; sorted by (pid, sender), a repeated one keeps its last row.
    pub fn new(mut rows: Vec<PidRow>) -> PidRows {
        rows.reverse();
        rows.sort_by_key(|r| (r.pid, r.peer)); // stable: the last given row comes first
        rows.dedup_by_key(|r| (r.pid, r.peer));
        PidRows { rows }
    }

    /// From rows whose agents (pid, sender) are distinct (a tracker copy):
    /// sorted without keeping the given order of equal agents, which is
    /// faster; an agent a chunked copy saw twice is kept once.
    pub fn from_unique(mut rows: Vec<PidRow>) -> PidRows {
        rows.sort_unstable_by_key(|r| (r.pid, r.peer));
        rows.dedup_by_key(|r| (r.pid, r.peer));
        PidRows { rows }
    }

    /// One row per tracked pid, in slot order: the cheap part, done while
    /// the tracker is borrowed; sort with [`PidRows::from_unique`] afterwards.
    pub fn copy_from(tracker: &Tracker) -> Vec<PidRow> {
        let mut rows = Vec::with_capacity(tracker.len());
        let mut next = Some(0);
        while let Some(start) = next {
            next = PidRows::copy_chunk(tracker, start, &mut rows);
        }
        rows
    }

    /// Append the rows of the [`COPY_CHUNK`] slots from slot `start`;
    /// the next chunk's start, or `None` after the last. Copying a chunk at
    /// a time, the caller can let go of the tracker in between
    /// (`docs/observer.md#agent-rows`): ingest then waits for one chunk, not
    /// for the whole table. An agent that moves meanwhile may be missed or
    /// copied twice (keep one: [`PidRows::from_unique`]).
    pub fn copy_chunk(tracker: &Tracker, start: usize, out: &mut Vec<PidRow>) -> Option<usize> {
        if start == 0 {
            out.reserve(tracker.len());
        }
        let end = start.saturating_add(COPY_CHUNK);
        out.extend(tracker.iter_slots(start..end).map(|(a, id)| PidRow {
            pid: a.pid,
            peer: a.peer.map(|p| p.addr),
            beats: a.beats,
            stalls: a.stalls,
            status: if a.stalled {
                STATUS_STALL
            } else {
                a.status as u8
            },
            verdict: if a.stalled { a.verdict } else { None },
            unit: id.and_then(|i| i.unit.clone()),
            comm: id.and_then(|i| i.comm),
        }));
        (end < tracker.capacity()).then_some(end)
    }

    pub fn rows(&self) -> &[PidRow] {
        &self.rows
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The rows that get series of their own (`docs/observer.md#agent-rows`):
    /// at most `limit`, agents not OK first (stalled, then critical, then
    /// degraded), then OK agents; lowest pid first within each. By pid.
    ///
    /// Lowest pid, because the kernel hands out pids in rising order (until
    /// they wrap): the lowest are mostly the longest tracked, so the chosen
    /// set — and the series Prometheus stores — stays put across scrapes.
    pub fn capped(&self, limit: usize) -> PidRows {
        if self.rows.len() <= limit {
            return self.clone();
        }
        let mut picked: Vec<PidRow> = self
            .rows
            .iter()
            .filter(|r| r.status != 0)
            .cloned() // not copied(): rows gain owned identity fields
            .collect();
        if picked.len() >= limit {
            let key = |r: &PidRow| (STATUS_STALL - r.status.min(STATUS_STALL), r.pid);
            if limit > 0 {
                picked.select_nth_unstable_by_key(limit - 1, key);
            }
            picked.truncate(limit);
        } else {
            let room = limit - picked.len();
            picked.extend(
                self.rows
                    .iter()
                    .filter(|r| r.status == 0)
                    .take(room)
                    .cloned(),
            );
        }
        picked.sort_unstable_by_key(|r| r.pid);
        PidRows { rows: picked }
    }

    /// Counts of every row by status, verdict and unit, at most
    /// `max_units` units (see [`RowSummary::by_unit`]).
    pub fn summary(&self, max_units: usize) -> RowSummary {
        let mut sum = RowSummary::default();
        let mut units: HashMap<&str, [u64; 4]> = HashMap::new();
        for r in &self.rows {
            let status = usize::from(r.status.min(STATUS_STALL));
            sum.by_status[status] += 1;
            if let Some(v) = r.verdict {
                sum.by_verdict[v as usize] += 1;
            }
            units.entry(r.identity().0).or_default()[status] += 1;
        }
        let mut units: Vec<(&str, [u64; 4])> = units.into_iter().collect();
        units.sort_unstable_by(|a, b| {
            let total = |c: &[u64; 4]| c.iter().sum::<u64>();
            total(&b.1).cmp(&total(&a.1)).then(a.0.cmp(b.0))
        });
        let mut other = [0u64; 4];
        for (_, counts) in units.iter().skip(max_units) {
            for (o, c) in other.iter_mut().zip(counts) {
                *o += c;
            }
        }
        units.truncate(max_units);
        sum.by_unit = units.into_iter().map(|(u, c)| (u.to_owned(), c)).collect();
        if other.iter().any(|&c| c > 0) {
            sum.by_unit.push((OTHER_UNITS.to_owned(), other));
        }
        sum.by_unit.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        sum
    }

    /// Append `name{pid="<pid>",unit="<unit>",comm="<comm>"} <value>\n` for
    /// every row to `out`.
    pub fn render_samples(&self, name: &str, column: RowColumn, out: &mut Vec<u8>) {
        out.reserve(self.rows.len() * (name.len() + 40));
        for r in &self.rows {
            let (unit, comm) = r.identity();
            // Writing to a Vec cannot fail.
            let _ = write!(out, "{name}{{pid=\"{}\",unit=\"", r.pid);
            push_label_value(out, unit);
            out.extend_from_slice(b"\",comm=\"");
            push_label_value(out, comm);
            let _ = writeln!(out, "\"}} {}", column.value(r));
        }
    }
}

/// A label value in the text format: `\`, `"` and newline escaped.
pub fn push_label_value(out: &mut Vec<u8>, value: &str) {
    for b in value.bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'"' => out.extend_from_slice(b"\\\""),
            b'\n' => out.extend_from_slice(b"\\n"),
            _ => out.push(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{Frame, Status};
    use crate::observer::tracker::{BeatOrigin, TrackerConfig};

    fn row(pid: u32, beats: u64, stalls: u64, status: u8) -> PidRow {
        PidRow::bare(pid, beats, stalls, status)
    }

    #[test]
    fn rows_sort_by_pid_and_render_each_column() {
        let rows = PidRows::new(vec![row(42, 7, 1, 3), row(17, 12_345_678_901, 0, 1)]);
        let mut out = Vec::new();
        rows.render_samples("varta_beats_total", RowColumn::Beats, &mut out);
        rows.render_samples("varta_status", RowColumn::Status, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "varta_beats_total{pid=\"17\",unit=\"\",comm=\"\"} 12345678901\n\
             varta_beats_total{pid=\"42\",unit=\"\",comm=\"\"} 7\n\
             varta_status{pid=\"17\",unit=\"\",comm=\"\"} 1\n\
             varta_status{pid=\"42\",unit=\"\",comm=\"\"} 3\n"
        );
    }

    #[test]
    fn a_repeated_pid_keeps_its_last_row() {
        let rows = PidRows::new(vec![row(5, 1, 0, 0), row(3, 1, 0, 0), row(5, 9, 0, 2)]);
        assert_eq!(rows.rows(), &[row(3, 1, 0, 0), row(5, 9, 0, 2)]);
    }

    #[test]
    fn tracker_rows_mark_stalled_pids_3() {
        let mut t = Tracker::new(TrackerConfig::new(10)).unwrap();
        let f = |pid, status| Frame {
            status,
            pid,
            timestamp: 1,
            nonce: 1,
            payload: 0,
        };
        let ka = BeatOrigin::KernelAttested;
        t.record(&f(9, Status::Degraded), ka, None, None, 100);
        t.record(&f(4, Status::Ok), ka, None, None, 105);
        t.expire(112, &mut |_| {}); // pid 9 due at 110, pid 4 at 115
        let rows = PidRows::new(PidRows::copy_from(&t));
        let verdict = t.get(9).and_then(|a| a.verdict);
        assert!(verdict.is_some());
        let stalled = PidRow {
            verdict,
            ..row(9, 1, 1, STATUS_STALL)
        };
        assert_eq!(rows.rows(), &[row(4, 1, 0, 0), stalled]);
    }

    #[test]
    fn a_copy_in_chunks_copies_every_slot() {
        let n = COPY_CHUNK + 5;
        let mut t = Tracker::new(TrackerConfig {
            capacity: n,
            ..TrackerConfig::new(1_000_000)
        })
        .unwrap();
        for pid in 1..=n as u32 {
            let f = Frame {
                status: Status::Ok,
                pid,
                timestamp: 1,
                nonce: 1,
                payload: 0,
            };
            t.record(&f, BeatOrigin::KernelAttested, None, None, 100);
        }
        let mut rows = Vec::new();
        assert_eq!(PidRows::copy_chunk(&t, 0, &mut rows), Some(COPY_CHUNK));
        assert_eq!(rows.len(), COPY_CHUNK);
        assert_eq!(PidRows::copy_chunk(&t, COPY_CHUNK, &mut rows), None);
        let all = PidRows::from_unique(rows);
        assert_eq!(pids(&all), (1..=n as u32).collect::<Vec<_>>());
        assert_eq!(all, PidRows::new(PidRows::copy_from(&t)));
    }

    fn pids(rows: &PidRows) -> Vec<u32> {
        rows.rows().iter().map(|r| r.pid).collect()
    }

    #[test]
    fn capped_rows_put_agents_not_ok_first_then_the_lowest_pids() {
        // pids 1..=10 OK except 7 (stalled), 9 (critical), 4 (degraded).
        let status = |pid: u32| match pid {
            7 => 3,
            9 => 2,
            4 => 1,
            _ => 0,
        };
        let rows = PidRows::new((1..=10).map(|p| row(p, 1, 0, status(p))).collect());
        assert_eq!(pids(&rows.capped(100)), (1..=10).collect::<Vec<_>>());
        assert_eq!(pids(&rows.capped(5)), vec![1, 2, 4, 7, 9]);
        assert_eq!(pids(&rows.capped(3)), vec![4, 7, 9]);
        // Not OK beyond the cap: stalled first, then critical.
        assert_eq!(pids(&rows.capped(2)), vec![7, 9]);
        assert_eq!(pids(&rows.capped(1)), vec![7]);
        assert!(rows.capped(0).is_empty());
        // The same rows every time (no churn between scrapes).
        assert_eq!(rows.capped(5), rows.capped(5));
    }

    #[test]
    fn many_stalled_agents_beyond_the_cap_keep_the_lowest_pids() {
        let rows = PidRows::new((1..=1000).rev().map(|p| row(p, 1, 1, 3)).collect());
        assert_eq!(pids(&rows.capped(3)), vec![1, 2, 3]);
    }

    #[test]
    fn the_summary_counts_every_row_by_status_verdict_and_unit() {
        let mut rows: Vec<PidRow> = (1..=6).map(|p| row(p, 1, 0, (p % 4) as u8)).collect();
        rows[2].verdict = Some(Verdict::Hung); // pid 3, status 3
        let s = PidRows::new(rows).summary(10);
        assert_eq!(s.by_status, [1, 2, 2, 1]);
        assert_eq!(s.by_verdict, [1, 0, 0, 0, 0]);
        assert_eq!(s.by_unit, vec![(String::new(), [1, 2, 2, 1])]);
        // Units beyond the limit are summed under "(other)".
        let s = PidRows::new(vec![row(1, 1, 0, 0)]).summary(0);
        assert_eq!(s.by_unit, vec![(OTHER_UNITS.to_owned(), [1, 0, 0, 0])]);
        assert_eq!(PidRows::default().summary(10), RowSummary::default());
    }

    #[test]
    fn label_values_are_escaped() {
        let mut out = Vec::new();
        push_label_value(&mut out, "a\\b\"c\nd");
        assert_eq!(out, b"a\\\\b\\\"c\\nd");
    }
}

#[cfg(test)]
mod identity_tests {
    use super::*;
    use crate::frame::{Frame, Status};
    use crate::observer::tracker::{BeatOrigin, NetPeer, PeerKey, TrackerConfig};

    /// One row per agent: equal pids of two hosts are two rows, in
    /// (pid, sender) order, each naming its sender.
    #[test]
    fn equal_pids_of_two_hosts_are_two_rows() {
        let mut t = Tracker::new(TrackerConfig::new(10)).unwrap();
        let f = Frame {
            status: Status::Ok,
            pid: 9,
            timestamp: 1,
            nonce: 1,
            payload: 0,
        };
        let peer = |a: &str| NetPeer {
            addr: a.parse().unwrap(),
            key: PeerKey::Plain,
        };
        let nu = BeatOrigin::NetworkUnverified;
        t.record_net(&f, nu, peer("127.0.0.2"), 1);
        t.record_net(&f, nu, peer("127.0.0.1"), 2);
        t.record(&f, BeatOrigin::KernelAttested, None, None, 3);
        let rows = PidRows::new(PidRows::copy_from(&t));
        let peers: Vec<Option<String>> = rows
            .rows()
            .iter()
            .map(|r| r.peer.map(|p| p.to_string()))
            .collect();
        assert_eq!(
            peers,
            [None, Some("127.0.0.1".into()), Some("127.0.0.2".into())]
        );
    }
}
