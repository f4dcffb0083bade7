//! Per-pid exporter rows (`docs/observer.md#per-pid-families`): a compact copy of the
//! tracker's per-pid counts and the Prometheus sample lines for them.
//!
//! The daemon renders `varta_beats_total`, `varta_stalls_total` and
//! `varta_status` for every tracked pid — up to 1,000,000 rows, ~30 MB of
//! text. Built as Python objects that took ~14 s (and ~1.5 s at 100,000),
//! past the self-watchdog's 2 s serve limit, so the copy (on the poll loop)
//! is one pass over the slots and the text (on the metrics thread) is
//! written here.

use super::procfs::Comm;
use super::tracker::Tracker;
use std::io::Write;
use std::net::IpAddr;
use std::sync::Arc;

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
            unit: None,
            comm: None,
        }
    }
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

    /// One row per tracked pid, in slot order: the cheap part, done while
    /// the tracker is borrowed; sort with [`PidRows::new`] afterwards.
    pub fn copy_from(tracker: &Tracker) -> Vec<PidRow> {
        let mut rows = Vec::with_capacity(tracker.len());
        rows.extend(tracker.iter_identified().map(|(a, id)| PidRow {
            pid: a.pid,
            peer: a.peer.map(|p| p.addr),
            beats: a.beats,
            stalls: a.stalls,
            status: if a.stalled {
                STATUS_STALL
            } else {
                a.status as u8
            },
            unit: id.and_then(|i| i.unit.clone()),
            comm: id.and_then(|i| i.comm),
        }));
        rows
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

    /// Append `name{pid="<pid>"} <value>\n` for every row to `out`.
    pub fn render_samples(&self, name: &str, column: RowColumn, out: &mut Vec<u8>) {
        out.reserve(self.rows.len() * (name.len() + 24));
        for r in &self.rows {
            // Writing to a Vec cannot fail.
            let _ = writeln!(out, "{name}{{pid=\"{}\"}} {}", r.pid, column.value(r));
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
            "varta_beats_total{pid=\"17\"} 12345678901\nvarta_beats_total{pid=\"42\"} 7\n\
             varta_status{pid=\"17\"} 1\nvarta_status{pid=\"42\"} 3\n"
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
        assert_eq!(rows.rows(), &[row(4, 1, 0, 0), row(9, 1, 1, STATUS_STALL)]);
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
