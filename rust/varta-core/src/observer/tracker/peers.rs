//! Network senders as tracker keys (`docs/observer.md#agent-identity`): an
//! agent is (origin, pid). The Unix socket is origin 0 — upstream's pid
//! keying — and each network sender ([`NetPeer`]: its IP address, and for
//! secure UDP which key opened its frames) is interned into a small id while
//! at least one of its agents is tracked. The table is bounded by the
//! tracker capacity + 1 (every live id holds a slot), at most
//! [`MAX_PEERS`]; a sender that finds it full is refused and counted. It is
//! allocated whole when the observer gets a network listener
//! ([`PeerTable::reserve`]), so ingress never allocates, and an observer
//! without one spends nothing on it.

use std::collections::HashMap;
use std::net::IpAddr;

/// Which key authenticated a network sender's frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PeerKey {
    /// Plaintext UDP: nothing but the address.
    Plain,
    /// Secure UDP, the n-th shared key (0 = the primary).
    Shared(u8),
    /// Secure UDP, the agent key derived from the master key and the pid.
    Master,
}

/// A network sender: the agents it runs are told apart from equal pids of
/// other senders. The port is not part of it (it changes when an agent
/// reconnects).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetPeer {
    pub addr: IpAddr,
    pub key: PeerKey,
}

impl NetPeer {
    /// The address as people write it (`127.0.0.2`, `::1`; an
    /// IPv4-mapped IPv6 address is shown as IPv4).
    pub fn host(&self) -> String {
        match self.addr {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => v4.to_string(),
                None => v6.to_string(),
            },
            IpAddr::V4(v4) => v4.to_string(),
        }
    }
}

/// Largest number of network senders tracked at once (ids 1..=this).
pub const MAX_PEERS: usize = u16::MAX as usize - 1;

/// Interned network senders with the number of holders of each id.
#[derive(Debug)]
pub(super) struct PeerTable {
    ids: HashMap<NetPeer, u16>,
    /// `entries[id - 1]`: the sender and its reference count.
    entries: Vec<Option<(NetPeer, u32)>>,
    /// Ids given back, reused before new ones.
    free: Vec<u16>,
    limit: usize,
}

impl PeerTable {
    /// Room for `limit` senders (clamped to `1..=MAX_PEERS`).
    pub(super) fn new(limit: usize) -> PeerTable {
        PeerTable {
            ids: HashMap::new(),
            entries: Vec::new(),
            free: Vec::new(),
            limit: limit.clamp(1, MAX_PEERS),
        }
    }

    /// Allocate room for every sender up to the limit (no allocation after).
    pub(super) fn reserve(&mut self) {
        self.ids.reserve(self.limit.saturating_sub(self.ids.len()));
        self.entries
            .reserve_exact(self.limit.saturating_sub(self.entries.len()));
        self.free
            .reserve_exact(self.limit.saturating_sub(self.free.len()));
    }

    /// Bytes held (an estimate for the map: entries plus a control byte).
    pub(super) fn allocated_bytes(&self) -> usize {
        self.ids.capacity() * (core::mem::size_of::<(NetPeer, u16)>() + 1)
            + self.entries.capacity() * core::mem::size_of::<Option<(NetPeer, u32)>>()
            + self.free.capacity() * 2
    }

    pub(super) fn len(&self) -> usize {
        self.ids.len()
    }

    pub(super) fn limit(&self) -> usize {
        self.limit
    }

    pub(super) fn id(&self, peer: &NetPeer) -> Option<u16> {
        self.ids.get(peer).copied()
    }

    /// `peer`'s id with one more reference (a new id if it had none);
    /// `None` when the table is full.
    pub(super) fn acquire_new(&mut self, peer: NetPeer) -> Option<u16> {
        let id = match self.ids.get(&peer) {
            Some(&id) => id,
            None => {
                let id = match self.free.pop() {
                    Some(id) => id,
                    None if self.entries.len() < self.limit => {
                        self.entries.push(None);
                        self.entries.len() as u16
                    }
                    None => return None,
                };
                self.ids.insert(peer, id);
                self.entries[usize::from(id) - 1] = Some((peer, 0));
                id
            }
        };
        self.acquire(id);
        Some(id)
    }

    /// One more reference to a live id.
    pub(super) fn acquire(&mut self, id: u16) {
        if let Some(Some((_, n))) = self.entries.get_mut(usize::from(id).wrapping_sub(1)) {
            *n += 1;
        }
    }

    /// One reference fewer; the id is freed with its last.
    pub(super) fn release(&mut self, id: u16) {
        let Some(e) = self.entries.get_mut(usize::from(id).wrapping_sub(1)) else {
            return;
        };
        if let Some((peer, n)) = e {
            *n -= 1;
            if *n == 0 {
                self.ids.remove(peer);
                *e = None;
                self.free.push(id);
            }
        }
    }

    /// The sender behind a live id (`None` for 0, the Unix socket).
    pub(super) fn peer(&self, id: u16) -> Option<NetPeer> {
        self.entries
            .get(usize::from(id).wrapping_sub(1))
            .and_then(|e| e.map(|(p, _)| p))
    }

    /// Live ids, lowest first.
    pub(super) fn ids(&self) -> impl Iterator<Item = u16> + '_ {
        self.entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.is_some())
            .map(|(i, _)| i as u16 + 1)
    }

    /// Reference counts as held (tests).
    pub(super) fn refs(&self, id: u16) -> u32 {
        self.entries
            .get(usize::from(id).wrapping_sub(1))
            .and_then(|e| e.map(|(_, n)| n))
            .unwrap_or(0)
    }
}
