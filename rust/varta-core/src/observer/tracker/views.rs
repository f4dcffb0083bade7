//! Read-only views of the tracker (`docs/observer.md#tracker`): lookups by
//! agent key (`docs/observer.md#agent-identity`), iteration, the OS identity
//! pinned on each process, and the network-sender table's figures.

use super::slot::*;
use super::{key_of, AgentView, NetPeer, Probe, SlotPid, Tracker};
use crate::observer::identity::ProcIdentity;
use std::sync::Arc;

impl Tracker {
    pub(super) fn view(&self, s: &Slot) -> AgentView {
        AgentView {
            peer: self.peers.peer(s.oid()),
            ..s.view()
        }
    }

    /// The slot of agent (`peer`, `pid`); `None` = the Unix socket's `pid`.
    pub(super) fn find(&self, peer: Option<&NetPeer>, pid: u32) -> Option<u32> {
        let oid = match peer {
            None => 0,
            Some(p) => self.peers.id(p)?,
        };
        let key = key_of(oid, pid);
        match self.index.probe(key, &self.slots) {
            Probe::Found { slot, .. } => self
                .slots
                .get(slot as usize)
                .is_some_and(|s| s.has(F_USED) && s.key() == key)
                .then_some(slot),
            _ => None,
        }
    }

    /// The Unix socket's agent `pid` (upstream's pid keying).
    pub fn get(&self, pid: u32) -> Option<AgentView> {
        self.get_at(None, pid)
    }

    /// [`Tracker::iter_identified`] over the slots with indices in `range` (clamped to
    /// the capacity), for copies made a chunk at a time.
    pub fn iter_slots(
        &self,
        range: std::ops::Range<usize>,
    ) -> impl Iterator<Item = (AgentView, Option<&Arc<ProcIdentity>>)> + '_ {
        let end = range.end.min(self.slots.len());
        let start = range.start.min(end);
        self.slots[start..end]
            .iter()
            .zip(&self.idents[start..end])
            .filter(|(s, _)| s.has(F_USED))
            .map(|(s, id)| (self.view(s), id.as_ref()))
    }

    /// Agent (`peer`, `pid`): a network sender's, or with `None` the Unix socket's.
    pub fn get_at(&self, peer: Option<&NetPeer>, pid: u32) -> Option<AgentView> {
        self.find(peer, pid)
            .map(|i| self.view(&self.slots[i as usize]))
    }

    /// The Unix socket's agent `pid`, else the first network agent with
    /// that pid (lowest sender id): for callers that know only a pid.
    /// O(senders) when no local agent has it.
    pub fn get_any(&self, pid: u32) -> Option<AgentView> {
        self.get(pid).or_else(|| {
            self.peers.ids().find_map(|oid| {
                let key = key_of(oid, pid);
                match self.index.probe(key, &self.slots) {
                    Probe::Found { slot, .. } => Some(self.view(&self.slots[slot as usize])),
                    Probe::Absent => None,
                }
            })
        })
    }

    /// What the OS said about agent (`peer`, `pid`)'s process, if read.
    pub fn identity(&self, peer: Option<&NetPeer>, pid: u32) -> Option<Arc<ProcIdentity>> {
        self.find(peer, pid)
            .and_then(|i| self.idents[i as usize].clone())
    }

    /// Pin `identity` on the Unix socket's agent `pid` if it is still the
    /// process started at `generation` (read once per process, not per beat).
    pub fn set_identity(&mut self, pid: u32, generation: u64, identity: Arc<ProcIdentity>) -> bool {
        match self.find(None, pid) {
            Some(i) if self.slots[i as usize].gen() == Some(generation) => {
                self.idents[i as usize] = Some(identity);
                true
            }
            _ => false,
        }
    }

    /// All tracked agents (slot order). O(capacity).
    pub fn iter(&self) -> impl Iterator<Item = AgentView> + '_ {
        self.slots
            .iter()
            .filter(|s| s.has(F_USED))
            .map(|s| self.view(s))
    }

    /// All tracked agents with their identity, if read (slot order). O(capacity).
    pub fn iter_identified(
        &self,
    ) -> impl Iterator<Item = (AgentView, Option<&Arc<ProcIdentity>>)> + '_ {
        self.slots
            .iter()
            .zip(&self.idents)
            .filter(|(s, _)| s.has(F_USED))
            .map(|(s, id)| (self.view(s), id.as_ref()))
    }

    /// Allocate the sender table whole (the observer does when it gets a
    /// network listener), so network ingress never allocates.
    pub fn reserve_senders(&mut self) {
        self.peers.reserve();
    }

    /// Network senders with at least one tracked agent, and the most there can be.
    pub fn peers(&self) -> (usize, usize) {
        (self.peers.len(), self.peers.limit())
    }
}
