//! Secure replay protection (`docs/protocol.md#replay-protection`) in a bounded sender table
//! (docs/protocol.md#sender-table).
//!
//! State is keyed by the **authenticated inner pid** and the sender's
//! [`SenderOrigin`] (its address and the key that opened its frames, so
//! equal pids on different hosts are different senders,
//! `docs/observer.md#agent-identity`), and is only touched after an AEAD
//! open and a successful base-frame decode. A session (its IV prefix)
//! belongs to the first address that used it: the same live session from
//! another address is refused as a replay, and a retired one is refused
//! from every address. The table holds at most
//! `capacity` (normally [`MAX_SENDER_STATES`] = 1024) states, all allocated
//! at construction: a fixed array of states, a free list, and an
//! open-addressing pid index (linear probing at ≤ 50 % load, backward-shift
//! deletion, so no tombstones and no rehashing). Nothing allocates after
//! `new`.
//!
//! Time is injected (`now_ns`, the observer clock in ns); the same clock
//! drives eviction (`last_seen`) and the session-restart gate
//! (`last_seen_ns`), which upstream keeps as two clocks of the same rate.
//!
//! # Lifetime: independent of the tracker
//!
//! A state lives until the docs/protocol.md#sender-table sweep finds it silent for
//! [`EVICTION_TTL_NS`]; it is deliberately **not** dropped when the
//! observer's tracker evicts or retires the pid. Forgetting it would make
//! every captured frame of that pid an "unknown pid, any counter" frame
//! again, so an attacker could replay the dead agent's whole session and
//! re-track it. Keeping it costs a genuine successor nothing: a new session
//! (fresh prefix, nonce restarting at 1) is accepted once the pid has been
//! silent for the restart gap, which tracker eviction (silent > 10 ×
//! threshold) always exceeds. The table stays bounded by its fixed capacity,
//! the TTL sweep and fail-closed refusal when full.
//!
//! # Retired sessions are never accepted again
//!
//! A session is named by its IV prefix (`iv_random`, derived from the
//! session salt). A prefix is *retired* when it leaves a sender's state:
//! pushed out of the one-deep history by a newer prefix, replaced by a
//! session restart, or dropped with the whole state by the TTL sweep.
//! Retired `(pid, prefix)` pairs go into [`RetiredFilter`], a Bloom filter of
//! fixed size allocated in `new` and kept for the life of the table, so a
//! recorded session cannot come back after its sender went silent (the
//! restart gap or the TTL no longer reopens it). A filter has no false
//! negatives; its false positives refuse a genuine *new* session whose fresh
//! random prefix happens to hit set bits (see `docs/security.md` for the
//! bound). [`ReplayTable::remove`] (tests only) does not retire.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

use crate::frame::Frame;

use super::seal::IV_RANDOM_LEN;

/// Sender states, allocated once, never grown.
pub const MAX_SENDER_STATES: usize = 1024;
/// A sender silent this long is evicted by the next sweep.
pub const EVICTION_TTL_NS: u64 = 600 * 1_000_000_000;
/// Periodic sweep interval.
pub const EVICTION_INTERVAL_NS: u64 = 60 * 1_000_000_000;

const EMPTY: u16 = u16::MAX;

/// Bits of the retired-session filter per sender state (8192 bits = 1 KiB),
/// so [`MAX_SENDER_STATES`] states get a 1 MiB filter.
pub const RETIRED_FILTER_BITS_PER_STATE: usize = 8192;
/// Bit positions set (and tested) per retired session.
pub const RETIRED_FILTER_HASHES: u32 = 8;

/// Fixed-size Bloom filter of retired `(pid, IV prefix)` pairs, keyed with a
/// per-table random SipHash key (an attacker cannot aim prefixes at set bits).
/// False-positive probability after `n` insertions into `m` bits with `k`
/// hashes: `(1 - e^(-k n / m))^k`.
pub struct RetiredFilter {
    bits: Box<[u64]>,
    mask: u64,
    hasher: RandomState,
    inserted: u64,
}

impl RetiredFilter {
    /// A filter of `bits` bits (rounded up to a power of two, at least 64).
    pub fn new(bits: usize) -> RetiredFilter {
        let bits = bits.next_power_of_two().max(64);
        RetiredFilter {
            bits: vec![0u64; bits / 64].into_boxed_slice(),
            mask: bits as u64 - 1,
            hasher: RandomState::new(),
            inserted: 0,
        }
    }

    /// Size in bits (`m`).
    pub fn bits(&self) -> usize {
        self.bits.len() * 64
    }

    /// Sessions retired so far (`n`; duplicates counted).
    pub fn inserted(&self) -> u64 {
        self.inserted
    }

    /// The false-refusal probability at the current fill: `(1 - e^(-k n / m))^k`.
    pub fn false_positive_rate(&self) -> f64 {
        let k = f64::from(RETIRED_FILTER_HASHES);
        let fill = 1.0 - (-k * self.inserted as f64 / self.bits() as f64).exp();
        fill.powf(k)
    }

    fn positions(&self, pid: u32, iv: &[u8; IV_RANDOM_LEN]) -> impl Iterator<Item = u64> {
        let h1 = self.hasher.hash_one((pid, iv, 0u8));
        let h2 = self.hasher.hash_one((pid, iv, 1u8)) | 1;
        let mask = self.mask;
        (0..u64::from(RETIRED_FILTER_HASHES))
            .map(move |i| h1.wrapping_add(i.wrapping_mul(h2)) & mask)
    }

    pub fn insert(&mut self, pid: u32, iv: &[u8; IV_RANDOM_LEN]) {
        for b in self.positions(pid, iv) {
            self.bits[(b >> 6) as usize] |= 1 << (b & 63);
        }
        self.inserted = self.inserted.saturating_add(1);
    }

    pub fn contains(&self, pid: u32, iv: &[u8; IV_RANDOM_LEN]) -> bool {
        self.positions(pid, iv)
            .all(|b| self.bits[(b >> 6) as usize] & (1 << (b & 63)) != 0)
    }
}

/// Where a secure sender's frames come from besides its pid
/// (`docs/observer.md#agent-identity`): its address (IPv6, or IPv4 mapped
/// into it) and which key opened them. All zero = unknown (callers without
/// addresses: one sender per pid, as upstream).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SenderOrigin {
    pub addr: [u8; 16],
    pub key: u8,
}

impl SenderOrigin {
    fn fold(&self) -> u32 {
        let w = |i: usize| {
            u32::from_le_bytes([
                self.addr[i],
                self.addr[i + 1],
                self.addr[i + 2],
                self.addr[i + 3],
            ])
        };
        w(0) ^ w(4).rotate_left(7)
            ^ w(8).rotate_left(13)
            ^ w(12).rotate_left(19)
            ^ u32::from(self.key).wrapping_mul(0x85EB_CA6B)
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct SenderState {
    in_use: bool,
    pid: u32,
    origin: SenderOrigin,
    cur_iv: [u8; IV_RANDOM_LEN],
    cur_last: u32,
    /// One-deep history: the prefix before `cur_iv` and its last counter.
    prev: Option<([u8; IV_RANDOM_LEN], u32)>,
    /// High-water of inner nonces over non-terminal frames, across prefixes.
    max_regular_nonce: Option<u64>,
    /// High-water of terminal-frame timestamps.
    max_terminal_ts: Option<u64>,
    last_seen_ns: u64,
}

impl SenderState {
    fn fresh(
        origin: SenderOrigin,
        pid: u32,
        iv: &[u8; IV_RANDOM_LEN],
        counter: u32,
        f: &Frame,
        now: u64,
    ) -> Self {
        let mut s = SenderState {
            in_use: true,
            pid,
            origin,
            cur_iv: *iv,
            cur_last: counter,
            prev: None,
            max_regular_nonce: None,
            max_terminal_ts: None,
            last_seen_ns: now,
        };
        s.note_accept(f, now);
        s
    }

    /// Every accept raises the high-water mark of its kind and refreshes the clocks.
    fn note_accept(&mut self, f: &Frame, now: u64) {
        if f.is_terminal() {
            self.max_terminal_ts = Some(
                self.max_terminal_ts
                    .map_or(f.timestamp, |m| m.max(f.timestamp)),
            );
        } else {
            self.max_regular_nonce =
                Some(self.max_regular_nonce.map_or(f.nonce, |m| m.max(f.nonce)));
        }
        self.last_seen_ns = now;
    }
}

/// Outcome of [`ReplayTable::check`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplayVerdict {
    /// Known sender, frame is fresh (current, previous or a new prefix).
    Accepted,
    /// First frame from this pid: state allocated.
    NewSender,
    /// Known pid, new prefix failing the high-water checks, but silent for at
    /// least the restart gap: state reset to this frame (a new session,
    /// e.g. a recycled pid).
    SessionRestart,
    /// Known pid, frame refused (`secure_replay_refused`).
    Replay,
    /// Unknown pid and no free state even after a sweep (`sender_state_full`).
    Full,
}

impl ReplayVerdict {
    pub fn is_accepted(self) -> bool {
        matches!(
            self,
            ReplayVerdict::Accepted | ReplayVerdict::NewSender | ReplayVerdict::SessionRestart
        )
    }
}

/// The bounded per-pid replay table. See the module docs.
pub struct ReplayTable {
    states: Box<[SenderState]>,
    /// pid → state index; `EMPTY` marks a free slot. Length is a power of two
    /// ≥ 2 × capacity.
    index: Box<[u16]>,
    free: Vec<u16>,
    len: usize,
    shift: u32,
    restart_gap_ns: u64,
    next_sweep_ns: u64,
    retired: RetiredFilter,
}

impl ReplayTable {
    /// `capacity` states (1..=32767); `restart_gap_ns` = the observer's
    /// threshold (`session_restart_gap`).
    pub fn new(capacity: usize, restart_gap_ns: u64) -> ReplayTable {
        assert!(
            (1..=(EMPTY as usize) / 2).contains(&capacity),
            "replay table capacity out of range"
        );
        let slots = (2 * capacity).next_power_of_two().max(2);
        ReplayTable {
            states: vec![SenderState::default(); capacity].into_boxed_slice(),
            index: vec![EMPTY; slots].into_boxed_slice(),
            // Popped from the end: hand out index 0 first.
            free: (0..capacity as u16).rev().collect(),
            len: 0,
            shift: 32 - slots.trailing_zeros(),
            restart_gap_ns,
            next_sweep_ns: EVICTION_INTERVAL_NS,
            retired: RetiredFilter::new(capacity * RETIRED_FILTER_BITS_PER_STATE),
        }
    }

    /// The retired-session filter (size, fill, false-refusal rate).
    pub fn retired(&self) -> &RetiredFilter {
        &self.retired
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.states.len()
    }

    /// A state for `pid` from an unknown origin.
    pub fn contains(&self, pid: u32) -> bool {
        self.find(SenderOrigin::default(), pid).is_ok()
    }

    fn mask(&self) -> usize {
        self.index.len() - 1
    }

    fn home(&self, origin: SenderOrigin, pid: u32) -> usize {
        // Fibonacci hashing: top bits of (pid ^ origin) × 2^32/φ.
        ((pid ^ origin.fold()).wrapping_mul(0x9E37_79B9) >> self.shift) as usize & self.mask()
    }

    /// `Ok(slot)` holding (`origin`, `pid`), or `Err(slot)` = the empty slot ending its probe run.
    fn find(&self, origin: SenderOrigin, pid: u32) -> Result<usize, usize> {
        let mask = self.mask();
        let mut i = self.home(origin, pid);
        loop {
            let v = self.index[i];
            if v == EMPTY {
                return Err(i);
            }
            let st = &self.states[usize::from(v)];
            if st.pid == pid && st.origin == origin {
                return Ok(i);
            }
            i = (i + 1) & mask;
        }
    }

    fn remove_slot(&mut self, mut hole: usize) {
        let mask = self.mask();
        let idx = self.index[hole];
        self.states[usize::from(idx)] = SenderState::default();
        self.free.push(idx);
        self.len -= 1;
        let mut j = hole;
        loop {
            j = (j + 1) & mask;
            let v = self.index[j];
            if v == EMPTY {
                break;
            }
            let st = &self.states[usize::from(v)];
            let home = self.home(st.origin, st.pid);
            // Move the entry back iff the hole lies in [home, j) cyclically.
            if (hole.wrapping_sub(home) & mask) < (j.wrapping_sub(home) & mask) {
                self.index[hole] = v;
                hole = j;
            }
        }
        self.index[hole] = EMPTY;
    }

    /// Forget `pid`'s state; returns whether there was any. The observer
    /// never calls this on tracker removal (see the module docs).
    pub fn remove(&mut self, pid: u32) -> bool {
        match self.find(SenderOrigin::default(), pid) {
            Ok(slot) => {
                self.remove_slot(slot);
                true
            }
            Err(_) => false,
        }
    }

    /// Evict every sender silent for at least [`EVICTION_TTL_NS`]; returns how
    /// many. Also schedules the next periodic sweep.
    pub fn sweep(&mut self, now_ns: u64) -> usize {
        self.next_sweep_ns = now_ns.saturating_add(EVICTION_INTERVAL_NS);
        let mut evicted = 0;
        for i in 0..self.states.len() {
            let s = self.states[i];
            if s.in_use && now_ns.saturating_sub(s.last_seen_ns) >= EVICTION_TTL_NS {
                if let Ok(slot) = self.find(s.origin, s.pid) {
                    self.retire(&s);
                    self.remove_slot(slot);
                    evicted += 1;
                }
            }
        }
        evicted
    }

    /// Retire every prefix a state holds (it is being dropped or reset).
    fn retire(&mut self, s: &SenderState) {
        self.retired.insert(s.pid, &s.cur_iv);
        if let Some((piv, _)) = s.prev {
            self.retired.insert(s.pid, &piv);
        }
    }

    /// Run the periodic sweep if it is due.
    pub fn maybe_sweep(&mut self, now_ns: u64) -> usize {
        if now_ns >= self.next_sweep_ns {
            self.sweep(now_ns)
        } else {
            0
        }
    }

    /// Apply the docs/protocol.md#replay-protection rules to an opened and decoded frame. `pid` must be
    /// the frame's (authenticated inner) pid; `iv_random`/`iv_counter` come
    /// from the wire nonce. Updates state only on acceptance.
    pub fn check(
        &mut self,
        iv_random: &[u8; IV_RANDOM_LEN],
        iv_counter: u32,
        frame: &Frame,
        now_ns: u64,
    ) -> ReplayVerdict {
        self.check_from(
            SenderOrigin::default(),
            iv_random,
            iv_counter,
            frame,
            now_ns,
        )
    }

    /// Whether a live state of another origin holds `pid`'s session `iv`.
    fn session_elsewhere(&self, origin: SenderOrigin, pid: u32, iv: &[u8; IV_RANDOM_LEN]) -> bool {
        self.states.iter().any(|s| {
            s.in_use
                && s.pid == pid
                && s.origin != origin
                && (s.cur_iv == *iv || s.prev.is_some_and(|(p, _)| p == *iv))
        })
    }

    /// [`ReplayTable::check`] for a sender of known `origin`
    /// (docs/observer.md#agent-identity). A new sender whose session is live
    /// under another origin is a replay (O(capacity), only on a new sender).
    pub fn check_from(
        &mut self,
        origin: SenderOrigin,
        iv_random: &[u8; IV_RANDOM_LEN],
        iv_counter: u32,
        frame: &Frame,
        now_ns: u64,
    ) -> ReplayVerdict {
        self.maybe_sweep(now_ns);
        let pid = frame.pid;
        let slot = match self.find(origin, pid) {
            Ok(slot) => slot,
            Err(mut empty) => {
                if self.retired.contains(pid, iv_random)
                    || self.session_elsewhere(origin, pid, iv_random)
                {
                    return ReplayVerdict::Replay;
                }
                if self.free.is_empty() {
                    // Fail closed: make room only from dead senders.
                    self.sweep(now_ns);
                    if self.free.is_empty() {
                        return ReplayVerdict::Full;
                    }
                    // The sweep may have shifted entries; find the slot again.
                    // (A sweep only removes, so `pid` is still absent.)
                    empty = match self.find(origin, pid) {
                        Err(e) => e,
                        Ok(_) => return ReplayVerdict::Full,
                    };
                }
                let Some(idx) = self.free.pop() else {
                    return ReplayVerdict::Full;
                };
                self.states[usize::from(idx)] =
                    SenderState::fresh(origin, pid, iv_random, iv_counter, frame, now_ns);
                self.index[empty] = idx;
                self.len += 1;
                return ReplayVerdict::NewSender;
            }
        };
        let restart_gap = self.restart_gap_ns;
        let st = &mut self.states[usize::from(self.index[slot])];
        let retired = &mut self.retired;
        let terminal = frame.is_terminal();

        if st.cur_iv == *iv_random {
            if iv_counter <= st.cur_last {
                return ReplayVerdict::Replay;
            }
            st.cur_last = iv_counter;
            st.note_accept(frame, now_ns);
            return ReplayVerdict::Accepted;
        }
        if let Some((piv, plast)) = st.prev {
            if piv == *iv_random {
                if iv_counter <= plast {
                    return ReplayVerdict::Replay;
                }
                st.prev = Some((piv, iv_counter));
                st.note_accept(frame, now_ns);
                return ReplayVerdict::Accepted;
            }
        }
        // New (or aged-out) prefix. A retired one never comes back.
        if retired.contains(pid, iv_random) {
            return ReplayVerdict::Replay;
        }
        let fresh = if terminal {
            !matches!(st.max_terminal_ts, Some(m) if frame.timestamp <= m)
        } else {
            !matches!(st.max_regular_nonce, Some(m) if frame.nonce <= m)
        };
        if fresh {
            if let Some((piv, _)) = st.prev {
                retired.insert(pid, &piv);
            }
            st.prev = Some((st.cur_iv, st.cur_last));
            st.cur_iv = *iv_random;
            st.cur_last = iv_counter;
            st.note_accept(frame, now_ns);
            return ReplayVerdict::Accepted;
        }
        // A terminal frame never resets the session (a replayed crash frame
        // must not wipe the high-water marks).
        if !terminal && now_ns.saturating_sub(st.last_seen_ns) >= restart_gap {
            retired.insert(pid, &st.cur_iv);
            if let Some((piv, _)) = st.prev {
                retired.insert(pid, &piv);
            }
            *st = SenderState::fresh(origin, pid, iv_random, iv_counter, frame, now_ns);
            return ReplayVerdict::SessionRestart;
        }
        ReplayVerdict::Replay
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Status;
    use std::collections::HashSet;

    fn frame(pid: u32, nonce: u64) -> Frame {
        Frame {
            status: Status::Ok,
            pid,
            timestamp: 1000,
            nonce,
            payload: 0,
        }
    }

    #[test]
    fn index_stays_consistent_under_churn() {
        // Model check of the open-addressing index against a HashSet, with
        // deliberately colliding pids and interleaved removals.
        let mut t = ReplayTable::new(64, 0);
        let mut model = HashSet::new();
        let mut x: u32 = 12345;
        for step in 0..20_000u32 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let pid = 2 + (x >> 16) % 150;
            if step % 3 == 0 {
                assert_eq!(t.remove(pid), model.remove(&pid));
            } else {
                let v = t.check(&[0; 8], step, &frame(pid, u64::from(step) + 1), 0);
                if model.contains(&pid) {
                    assert_eq!(v, ReplayVerdict::Accepted);
                } else if model.len() < 64 {
                    assert_eq!(v, ReplayVerdict::NewSender);
                    model.insert(pid);
                } else {
                    assert_eq!(v, ReplayVerdict::Full);
                }
            }
            assert_eq!(t.len(), model.len());
            assert_eq!(t.free.len() + t.len(), 64);
        }
        for pid in 0..200 {
            assert_eq!(t.contains(pid), model.contains(&pid), "pid {pid}");
        }
    }

    #[test]
    fn a_superseded_session_is_refused_after_any_silence() {
        // Issue 11 hole 4: a session aged out of the one-deep history used to be
        // accepted again once the sender was silent past the restart gap.
        let gap = 2_000_000_000;
        let mut t = ReplayTable::new(MAX_SENDER_STATES, gap);
        let (a, b, c) = ([0xaa; 8], [0xbb; 8], [0xcc; 8]);
        for n in 1..=30u32 {
            assert!(t.check(&a, n, &frame(500, u64::from(n)), 0).is_accepted());
        }
        assert!(t.check(&b, 0, &frame(500, 31), 1).is_accepted());
        assert!(t.check(&c, 0, &frame(500, 32), 2).is_accepted());
        for later in [
            gap + 2,
            10 * gap,
            EVICTION_TTL_NS + 3,
            100 * EVICTION_TTL_NS,
        ] {
            for n in 1..=30u32 {
                let v = t.check(&a, n, &frame(500, u64::from(n)), later);
                assert_eq!(v, ReplayVerdict::Replay, "session a frame {n} at {later}");
            }
        }
        // The sweeps above dropped the state (TTL) and retired b and c too.
        assert!(!t.contains(500));
        for iv in [&b, &c] {
            assert_eq!(
                t.check(iv, 9, &frame(500, 99), 200 * EVICTION_TTL_NS),
                ReplayVerdict::Replay
            );
        }
        // A genuinely new session is still welcome.
        let fresh = t.check(&[0xdd; 8], 0, &frame(500, 1), 200 * EVICTION_TTL_NS);
        assert_eq!(fresh, ReplayVerdict::NewSender);
    }

    #[test]
    fn session_restart_retires_the_old_session() {
        let mut t = ReplayTable::new(16, 1000);
        assert!(t.check(&[1; 8], 5, &frame(7, 50), 0).is_accepted());
        assert_eq!(
            t.check(&[2; 8], 0, &frame(7, 1), 1000),
            ReplayVerdict::SessionRestart
        );
        // The restarted agent goes silent; its old session must not restart again.
        assert_eq!(
            t.check(&[1; 8], 6, &frame(7, 51), 5000),
            ReplayVerdict::Replay
        );
    }

    #[test]
    fn retired_filter_has_no_false_negatives_and_few_false_positives() {
        let mut f = RetiredFilter::new(1 << 16);
        for i in 0..4000u32 {
            f.insert(i, &u64::from(i).to_le_bytes());
        }
        for i in 0..4000u32 {
            assert!(f.contains(i, &u64::from(i).to_le_bytes()));
        }
        let fp = (0..100_000u32)
            .filter(|&i| f.contains(i, &(u64::from(i) | 1 << 40).to_le_bytes()))
            .count();
        // k = 8, n/m = 4000/65536: (1 - e^-0.488)^8 = 3.9e-4, so about 39 in 10^5.
        let expected = f.false_positive_rate();
        assert!((2e-4..8e-4).contains(&expected), "{expected}");
        assert!(fp < 120, "{fp} false positives in 100000");
    }
}

#[cfg(test)]
mod origin_tests {
    use super::*;
    use crate::frame::Status;

    fn frame(pid: u32, nonce: u64) -> Frame {
        Frame {
            status: Status::Ok,
            pid,
            timestamp: 1000,
            nonce,
            payload: 0,
        }
    }

    fn from(last: u8) -> SenderOrigin {
        let mut addr = [0u8; 16];
        addr[10] = 0xff;
        addr[11] = 0xff;
        addr[12..].copy_from_slice(&[127, 0, 0, last]);
        SenderOrigin { addr, key: 0 }
    }

    /// docs/observer.md#agent-identity: two hosts' agents with one pid keep
    /// separate replay state; a live session replayed from another address
    /// is refused, and so is a retired one.
    #[test]
    fn senders_are_per_address_and_sessions_stay_with_theirs() {
        let mut t = ReplayTable::new(16, 1_000);
        let (a, b) = (from(1), from(2));
        assert_eq!(
            t.check_from(a, &[1; 8], 10, &frame(77, 10), 0),
            ReplayVerdict::NewSender
        );
        // b's own session, with lower counters and nonces: a new sender.
        assert_eq!(
            t.check_from(b, &[2; 8], 1, &frame(77, 1), 1),
            ReplayVerdict::NewSender
        );
        assert!(t
            .check_from(a, &[1; 8], 11, &frame(77, 11), 2)
            .is_accepted());
        assert!(t.check_from(b, &[2; 8], 2, &frame(77, 2), 2).is_accepted());
        assert_eq!(t.len(), 2);
        // a's live session sent from a third address: a replay.
        assert_eq!(
            t.check_from(from(3), &[1; 8], 50, &frame(77, 50), 3),
            ReplayVerdict::Replay
        );
        // And from b's address too (b's state has another prefix, and
        // within the restart gap a new prefix must beat b's high-water).
        assert_eq!(
            t.check_from(b, &[1; 8], 51, &frame(77, 1), 4),
            ReplayVerdict::Replay
        );
        assert_eq!(t.len(), 2);
    }
}
