//! Per-pid liveness tracker (`docs/observer.md#tracker`).
//!
//! # API
//! ```text
//! Tracker::new(TrackerConfig) -> Result<Tracker, TrackerConfigError>   // pre-allocates everything
//! t.record(&frame, origin, ns_inode, generation, now_ns) -> RecordOutcome   // docs/observer.md#tracker, O(1) expected
//! t.expire(now_ns, &mut |stall: StallInfo| ..) -> usize               // docs/observer.md#stall-detection, O(expired)
//! t.expire_with(now_ns, limit, &mut |s: &StallInfo| StallDecision) -> usize  // verdicts, retirement
//! t.take_exit(pid, generation, now_ns) -> ExitOutcome                 // the process ended (docs/verdicts.md)
//! t.extend_deadlines(by_ns)         // the observer was blind: push every armed deadline back
//! t.next_deadline_ns() -> Option<u64>                                  // when the next stall is due
//! t.record_net(&frame, origin, peer, now_ns) -> RecordOutcome          // a network agent: (peer, pid) (docs/observer.md#agent-identity)
//! t.get(pid) -> Option<AgentView>;  t.get_at(peer, pid);  t.get_any(pid)  t.iter() -> impl Iterator<Item = AgentView>
//! t.set_identity(pid, generation, Arc<ProcIdentity>); t.identity(peer, pid)   // read once per process
//! t.retire(pid) -> bool             // docs/observer.md#release KernelAttested generation-mismatch release
//! t.take_removed(&mut Vec<AgentRef>) // agents evicted / retired since the last call
//! t.len(); t.capacity(); t.config(); t.counters() -> &TrackerCounters
//! t.prefetch(pid)                   // cache hint: call per frame of a recvmmsg batch, then record
//! t.bytes_per_agent()               // allocated bytes / capacity
//! ```
//! Time is always passed in (`now_ns`, observer ns from a [`super::clock::Clock`]).
//! Internally `now_ns` is clamped to the largest value seen so far, so a
//! caller's clock hiccup can never move a deadline backwards.
//!
//! # Structure
//! * `slots`: `Vec<Slot>` of the configured capacity, one cache line each,
//!   allocated at construction; free slots on a free stack.
//! * pid index: `⌈4 × cap / 15⌉` cache lines of 15 four-byte entries (slot
//!   number + hash tag, the pid confirmed in the slot; entry load ≤ 0.27).
//!   A pid's home line is the Murmur3 hash of `pid >> 3`, so 8 consecutive
//!   pids share one line. A pid takes its place in its block as its entry
//!   when free, so a lookup usually compares one entry (else the line's 15
//!   tags at once). A full line passes new pids to the next, up to
//!   [`MAX_PROBE_LINES`] lines, and counts them (F14-style overflow counts,
//!   no tombstones). Exhaustion → CapacityExceeded, counted.
//!   Upstream uses per-pid linear probing (`docs/observer.md#tracker`);
//!   the observable contract is the same, but at 100,000 agents its
//!   one cache miss per beat cost 1.2–1.5× the per-beat time at 100.
//! * deadlines: [`DeadlineList`] — armed slots ordered by `last_ns +
//!   threshold`; a beat re-arms in O(1), expiry pops only due entries.
//!   A stalled (latched) slot is disarmed until its next accepted beat.
//!
//! * agent keys (`docs/observer.md#agent-identity`): the index is keyed by
//!   (origin id, pid), origin 0 being the Unix socket (upstream's pid
//!   keying, hashed exactly as before) and each network sender an id from
//!   [`peers`], packed into the slot's beat count so the slot stays one line.
//!
//! Memory per agent: slot 64 B (with its last terminal payload and verdict), index ≈ 17 B
//! (64 B per 3.75 slots), deadline link 16 B, free stack 4 B, removed list 24 B and
//! identity pointer 8 B: ≈ 134 B; with a network listener the sender table adds
//! ≈ 50 B (allocated with the listener).
//!
//! # Choices where the spec leaves room
//! * Per-pid `beats` / `stalls` survive in-place resets (generation or
//!   network recycle, stronger-origin replacement): they back the per-pid
//!   Prometheus counters, which must not go backwards while the pid's row
//!   lives. They restart at 0 only for a pid inserted into a free slot.
//! * Wrap rule exactly as docs/observer.md#tracker: `last ≥ 2^64−1−2^20 && new ≤ 2^20`.
//! * `eviction_scan_truncated` counts once per attempt that ran at least one
//!   pass and found no victim (a skipped strict pass alone does not count).
//! * A new pid is refused as exhausted only when all 64 lines from its home
//!   on are full, and then before any eviction, so nothing else changes.

use crate::frame::{Frame, NONCE_TERMINAL};
use crate::observer::identity::ProcIdentity;
use core::fmt;
use std::sync::Arc;

use super::counters::{bump, TrackerCounters};
use super::deadline::DeadlineList;
use super::pid_index::{PidIndex, Probe, SlotPid};
use super::verdict::{gone_verdict, Verdict};

mod peers;
mod slot;
#[cfg(test)]
mod tests;
mod types;
mod views;

use peers::PeerTable;

use slot::*;
pub use types::*;

/// The index key of agent (origin id, pid) (docs/observer.md#agent-identity).
#[inline]
fn key_of(oid: u16, pid: u32) -> u64 {
    (u64::from(oid) << 32) | u64::from(pid)
}

// ---------------------------------------------------------------------------
// Tracker

/// The tracker. See the module docs.
pub struct Tracker {
    cfg: TrackerConfig,
    slots: Vec<Slot>,
    index: PidIndex,
    deadlines: DeadlineList,
    /// Free slot indices (stack); initially all, lowest on top.
    free: Vec<u32>,
    len: usize,
    /// Slots with the stall latch set.
    latched: usize,
    /// Rotating eviction cursor (slot index).
    cursor: usize,
    removed: Vec<AgentRef>,
    removed_cap: usize,
    /// Network senders interned as origin ids (docs/observer.md#agent-identity).
    peers: PeerTable,
    /// Per slot: what the OS said about its process, read once (set by the
    /// gates for kernel-attested agents; never touched per beat).
    idents: Vec<Option<Arc<ProcIdentity>>>,
    /// Largest `now_ns` seen (time is clamped forward).
    now_floor: u64,
    counters: TrackerCounters,
}

impl fmt::Debug for Tracker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tracker")
            .field("cfg", &self.cfg)
            .field("len", &self.len)
            .field("latched", &self.latched)
            .field("armed", &self.deadlines.len())
            .field("counters", &self.counters)
            .finish()
    }
}

impl Tracker {
    /// Validate `cfg` and allocate every table for `cfg.capacity`.
    pub fn new(cfg: TrackerConfig) -> Result<Tracker, TrackerConfigError> {
        if cfg.capacity == 0 || cfg.capacity > MAX_CAPACITY {
            return Err(TrackerConfigError::Capacity(cfg.capacity));
        }
        if cfg.threshold_ns == 0 {
            return Err(TrackerConfigError::Threshold(cfg.threshold_ns));
        }
        if cfg.scan_window == 0 || cfg.scan_window > MAX_SCAN_WINDOW {
            return Err(TrackerConfigError::ScanWindow(cfg.scan_window));
        }
        let cap = cfg.capacity;
        let removed_cap = cap.max(MIN_REMOVED_LIST);
        Ok(Tracker {
            cfg,
            slots: vec![EMPTY_SLOT; cap],
            index: PidIndex::new(cap),
            deadlines: DeadlineList::new(cap),
            free: (0..cap as u32).rev().collect(),
            len: 0,
            latched: 0,
            cursor: 0,
            removed: Vec::with_capacity(removed_cap),
            removed_cap,
            peers: PeerTable::new(cap + 1),
            idents: vec![None; cap],
            now_floor: 0,
            counters: TrackerCounters::default(),
        })
    }

    pub fn config(&self) -> &TrackerConfig {
        &self.cfg
    }

    pub fn capacity(&self) -> usize {
        self.cfg.capacity
    }

    /// Tracked pids.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn counters(&self) -> &TrackerCounters {
        &self.counters
    }

    #[inline]
    fn clamp_now(&mut self, now_ns: u64) -> u64 {
        if now_ns > self.now_floor {
            self.now_floor = now_ns;
        }
        self.now_floor
    }

    #[inline]
    fn due_of(&self, last_ns: u64) -> u64 {
        last_ns.saturating_add(self.cfg.threshold_ns)
    }

    /// Record one decoded frame (docs/observer.md#tracker in order). `origin`, `ns_inode`
    /// (`/proc/<pid>/ns/pid` inode) and `generation` (start time) come from
    /// the ingress gates; `None` = unknown.
    pub fn record(
        &mut self,
        frame: &Frame,
        origin: BeatOrigin,
        ns_inode: Option<u64>,
        generation: Option<u64>,
        now_ns: u64,
    ) -> RecordOutcome {
        let now = self.clamp_now(now_ns);
        self.record_key(0, frame, origin, ns_inode, generation, now)
    }

    /// Record a frame from network sender `peer`: its agent is (`peer`,
    /// pid), apart from equal pids of the Unix socket and of other senders
    /// (docs/observer.md#agent-identity). Network frames carry no `/proc`
    /// identity. A sender that finds the sender table full is refused as
    /// capacity exceeded (and counted in `peer_table_full`).
    pub fn record_net(
        &mut self,
        frame: &Frame,
        origin: BeatOrigin,
        peer: NetPeer,
        now_ns: u64,
    ) -> RecordOutcome {
        let now = self.clamp_now(now_ns);
        // Held for the call, so an eviction of the sender's last other
        // agent cannot free the id under us.
        let Some(oid) = self.peers.acquire_new(peer) else {
            bump(&mut self.counters.peer_table_full);
            bump(&mut self.counters.capacity_exceeded);
            return RecordOutcome::CapacityExceeded;
        };
        let out = self.record_key(oid, frame, origin, None, None, now);
        self.peers.release(oid);
        out
    }

    fn record_key(
        &mut self,
        oid: u16,
        frame: &Frame,
        origin: BeatOrigin,
        ns_inode: Option<u64>,
        generation: Option<u64>,
        now: u64,
    ) -> RecordOutcome {
        let key = key_of(oid, frame.pid);
        match self.index.probe(key, &self.slots) {
            Probe::Found { slot, .. } => {
                self.record_existing(slot, frame, origin, ns_inode, generation, now)
            }
            Probe::Absent => self.record_new(oid, frame, origin, ns_inode, generation, now),
        }
    }

    /// Reset slot `idx` in place for a new incarnation (recycle / stronger
    /// origin), keeping the per-pid counts; counts one accepted beat.
    fn reset_slot(
        &mut self,
        idx: u32,
        frame: &Frame,
        origin: BeatOrigin,
        ns_inode: Option<u64>,
        generation: Option<u64>,
        now: u64,
    ) {
        let old = self.slots[idx as usize];
        if old.has(F_STALLED) {
            self.latched -= 1;
        }
        // A new incarnation: its identity is read again.
        self.idents[idx as usize] = None;
        self.slots[idx as usize] = Slot::fresh(
            old.oid(),
            frame,
            origin,
            ns_inode,
            generation,
            now,
            old.beats().saturating_add(1),
            old.stalls,
        );
        bump(&mut self.counters.beats);
        self.deadlines.arm(idx, self.due_of(now));
    }

    fn record_existing(
        &mut self,
        idx: u32,
        frame: &Frame,
        origin: BeatOrigin,
        ns_inode: Option<u64>,
        generation: Option<u64>,
        now: u64,
    ) -> RecordOutcome {
        let terminal = frame.nonce == NONCE_TERMINAL;
        let s = self.slots[idx as usize];

        // 1. Known generations differ: the pid was recycled.
        if let (Some(a), Some(b)) = (s.gen(), generation) {
            if a != b {
                self.reset_slot(idx, frame, origin, ns_inode, generation, now);
                bump(&mut self.counters.pid_recycle);
                return RecordOutcome::Inserted;
            }
        }

        // 2. Network recycle: no generations, same network origin, a regular
        //    nonce that did not advance, after a silence of ≥ threshold.
        if generation.is_none()
            && s.gen().is_none()
            && s.origin == origin
            && matches!(
                origin,
                BeatOrigin::OperatorAttestedTransport | BeatOrigin::NetworkUnverified
            )
            && !terminal
            && s.has(F_HAS_REGULAR)
            && frame.nonce <= s.last_regular
            && now.saturating_sub(s.last_ns) >= self.cfg.threshold_ns
        {
            self.reset_slot(idx, frame, origin, ns_inode, generation, now);
            bump(&mut self.counters.pid_recycle);
            return RecordOutcome::Inserted;
        }

        // 3. Origin: stronger replaces the slot, weaker is refused.
        if origin != s.origin {
            if origin > s.origin {
                self.reset_slot(idx, frame, origin, ns_inode, generation, now);
                return RecordOutcome::Refreshed;
            }
            bump(&mut self.counters.origin_conflict);
            return RecordOutcome::OriginConflict {
                slot_origin: s.origin,
            };
        }

        // 4. First namespace wins; a terminal may arrive without an inode
        //    (the dying process's /proc entry is already gone).
        match (s.ns(), ns_inode) {
            (Some(a), Some(b)) if a != b => {
                bump(&mut self.counters.namespace_conflict);
                return RecordOutcome::NamespaceConflict { slot_ns: Some(a) };
            }
            (Some(a), None) if !terminal => {
                bump(&mut self.counters.namespace_conflict);
                return RecordOutcome::NamespaceConflict { slot_ns: Some(a) };
            }
            _ => {}
        }

        let slot = &mut self.slots[idx as usize];
        if terminal {
            // 5. Terminal: accept iff its timestamp increases.
            if slot.has(F_HAS_TERMINAL) && frame.timestamp <= slot.last_terminal_ts {
                bump(&mut self.counters.out_of_order);
                return RecordOutcome::OutOfOrder;
            }
            slot.last_terminal_ts = frame.timestamp;
            slot.terminal_payload = frame.payload;
            slot.flags |= F_HAS_TERMINAL | F_LAST_TERMINAL;
        } else {
            // 6. Regular: strictly increasing nonce, or the wrap rule.
            if slot.has(F_HAS_REGULAR) && frame.nonce <= slot.last_regular {
                if slot.last_regular >= u64::MAX - NONCE_WRAP_THRESHOLD
                    && frame.nonce <= NONCE_WRAP_THRESHOLD
                {
                    bump(&mut self.counters.nonce_wrap);
                } else {
                    bump(&mut self.counters.out_of_order);
                    return RecordOutcome::OutOfOrder;
                }
            }
            slot.last_regular = frame.nonce;
            slot.flags = (slot.flags | F_HAS_REGULAR) & !F_LAST_TERMINAL;
        }
        // Accepted: pin a first-seen namespace / generation, refresh.
        if !slot.has(F_HAS_NS) {
            slot.set_ns(ns_inode);
        }
        if !slot.has(F_HAS_GEN) {
            slot.set_gen(generation);
        }
        slot.status = frame.status;
        slot.last_ns = now;
        slot.add_beat();
        if slot.has(F_STALLED) {
            slot.flags &= !F_STALLED;
            self.latched -= 1;
        }
        bump(&mut self.counters.beats);
        self.deadlines.arm(idx, self.due_of(now));
        RecordOutcome::Refreshed
    }

    fn record_new(
        &mut self,
        oid: u16,
        frame: &Frame,
        origin: BeatOrigin,
        ns_inode: Option<u64>,
        generation: Option<u64>,
        now: u64,
    ) -> RecordOutcome {
        let key = key_of(oid, frame.pid);
        let Some(mut vacancy) = self.index.vacancy(key) else {
            // Every line of the pid's chain is full: only hostile or
            // freakishly clustered pids get here. Refused before any eviction.
            bump(&mut self.counters.probe_exhausted);
            bump(&mut self.counters.capacity_exceeded);
            return RecordOutcome::CapacityExceeded;
        };
        if self.free.is_empty() {
            // 7. Full: evict (docs/observer.md#eviction) or drop.
            let Some(victim) = self.find_victim(now) else {
                bump(&mut self.counters.capacity_exceeded);
                return RecordOutcome::CapacityExceeded;
            };
            self.release(victim);
            bump(&mut self.counters.tracker_evicted);
            // The victim's entry may be nearer this pid's home.
            vacancy = self.index.vacancy(key).unwrap_or(vacancy);
        }
        let Some(idx) = self.free.pop() else {
            bump(&mut self.counters.invariant_violations);
            bump(&mut self.counters.capacity_exceeded);
            return RecordOutcome::CapacityExceeded;
        };
        self.index.insert_at(key, idx, vacancy);
        self.slots[idx as usize] = Slot::fresh(oid, frame, origin, ns_inode, generation, now, 1, 0);
        if oid != 0 {
            self.peers.acquire(oid);
        }
        self.len += 1;
        bump(&mut self.counters.beats);
        self.deadlines.arm(idx, self.due_of(now));
        RecordOutcome::Inserted
    }

    /// docs/observer.md#eviction: strict pass (only if some slot is latched), then for balanced a
    /// pass over any slot; each pass ≤ `scan_window` slots from the cursor.
    fn find_victim(&mut self, now: u64) -> Option<u32> {
        let age = self.cfg.threshold_ns.saturating_mul(EVICTION_MULTIPLIER);
        let mut ran = false;
        if self.latched > 0 {
            ran = true;
            if let Some(v) = self.scan_pass(now, age, true) {
                return Some(v);
            }
        }
        if self.cfg.eviction == EvictionPolicy::Balanced {
            ran = true;
            if let Some(v) = self.scan_pass(now, age, false) {
                return Some(v);
            }
        }
        if ran {
            bump(&mut self.counters.eviction_scan_truncated);
        }
        None
    }

    fn scan_pass(&mut self, now: u64, age: u64, require_latched: bool) -> Option<u32> {
        let n = self.slots.len();
        let window = self.cfg.scan_window.min(n);
        let start = self.cursor % n;
        for i in 0..window {
            let idx = (start + i) % n;
            let s = &self.slots[idx];
            if s.has(F_USED)
                && now.saturating_sub(s.last_ns) > age
                && (!require_latched || s.has(F_STALLED))
            {
                self.cursor = (idx + 1) % n;
                return Some(idx as u32);
            }
        }
        self.cursor = (start + window) % n;
        None
    }

    /// Remove slot `idx` (eviction / retirement): index, deadline, latch,
    /// free stack, removed list.
    fn release(&mut self, idx: u32) {
        let s = self.slots[idx as usize];
        let key = s.key();
        match self.index.probe(key, &self.slots) {
            Probe::Found { line, pos, slot } if slot == idx => self.index.remove_at(key, line, pos),
            _ => bump(&mut self.counters.invariant_violations),
        }
        let peer = self.peers.peer(s.oid());
        if s.oid() != 0 {
            self.peers.release(s.oid());
        }
        self.idents[idx as usize] = None;
        self.deadlines.disarm(idx);
        if s.has(F_STALLED) {
            self.latched -= 1;
        }
        self.slots[idx as usize] = EMPTY_SLOT;
        self.free.push(idx);
        self.len -= 1;
        if self.removed.len() < self.removed_cap {
            self.removed.push(AgentRef { pid: s.pid, peer });
        } else {
            bump(&mut self.counters.removed_pid_drops);
        }
    }

    /// Emit one stall per due, unlatched slot (docs/observer.md#stall-detection);
    /// returns how many. Verdicts are left [`Verdict::Unknown`] (no kernel is asked).
    pub fn expire(&mut self, now_ns: u64, sink: &mut impl FnMut(StallInfo)) -> usize {
        self.expire_with(now_ns, usize::MAX, &mut |s: &StallInfo| {
            sink(s.clone());
            StallDecision::Emit(Verdict::Unknown)
        })
    }

    /// Count one stall with `verdict` on slot `idx`.
    fn count_stall(&mut self, idx: u32, verdict: Verdict) {
        let slot = &mut self.slots[idx as usize];
        slot.stalls = slot.stalls.saturating_add(1);
        bump(&mut self.counters.stalls);
        bump(&mut self.counters.stall_verdicts[verdict as usize]);
    }

    /// The process pinned on `pid`'s slot as `generation` ended (the
    /// kernel said so): report it with the verdict its last frame supports
    /// and retire the slot, unless its stall was already reported.
    pub fn take_exit(&mut self, pid: u32, generation: u64, now_ns: u64) -> ExitOutcome {
        let now = self.clamp_now(now_ns);
        let Probe::Found { slot: idx, .. } = self.index.probe(key_of(0, pid), &self.slots) else {
            return ExitOutcome::NotTracked;
        };
        let s = self.slots[idx as usize];
        if !s.has(F_USED)
            || s.pid != pid
            || s.gen() != Some(generation)
            || s.origin != BeatOrigin::KernelAttested
        {
            return ExitOutcome::NotTracked;
        }
        bump(&mut self.counters.retired);
        if s.has(F_STALLED) {
            self.release(idx);
            return ExitOutcome::RetiredAfterStall;
        }
        let mut info = self.stall_info(idx, now);
        info.verdict = gone_verdict(info.cause);
        self.count_stall(idx, info.verdict);
        self.release(idx);
        ExitOutcome::Reported(info)
    }

    /// The observer could not see beats for `by_ns` (it was stopped, or the
    /// host stalled): push every armed deadline back by that much, so only
    /// silence it actually watched counts toward the threshold.
    pub fn extend_deadlines(&mut self, by_ns: u64) {
        self.deadlines.shift_all(by_ns);
    }

    /// Like [`Tracker::expire`], at most `limit` due slots (the rest stay
    /// due), each judged by `decide`. Returns the number of slots handled.
    pub fn expire_with(
        &mut self,
        now_ns: u64,
        limit: usize,
        decide: &mut impl FnMut(&StallInfo) -> StallDecision,
    ) -> usize {
        let now = self.clamp_now(now_ns);
        let mut handled = 0;
        while handled < limit {
            let Some((idx, _)) = self.deadlines.pop_due(now) else {
                break;
            };
            let s = self.slots[idx as usize];
            if !s.has(F_USED) || s.has(F_STALLED) {
                bump(&mut self.counters.invariant_violations);
                continue;
            }
            let info = self.stall_info(idx, now);
            match decide(&info) {
                StallDecision::Emit(verdict) => {
                    self.count_stall(idx, verdict);
                    let slot = &mut self.slots[idx as usize];
                    slot.flags |= F_STALLED;
                    slot.verdict = verdict as u8;
                    self.latched += 1;
                }
                StallDecision::EmitAndRetire(verdict) => {
                    self.count_stall(idx, verdict);
                    self.release(idx);
                    bump(&mut self.counters.retired);
                }
                StallDecision::Retire => {
                    self.release(idx);
                    bump(&mut self.counters.pid_recycle);
                }
            }
            handled += 1;
        }
        handled
    }

    /// Earliest pending stall deadline (observer ns), if any slot is armed.
    pub fn next_deadline_ns(&self) -> Option<u64> {
        self.deadlines.peek().map(|(_, due)| due)
    }

    /// A stall report for slot `idx`: the slot's, with its sender and identity.
    fn stall_info(&self, idx: u32, now: u64) -> StallInfo {
        let s = &self.slots[idx as usize];
        let id = self.idents[idx as usize].as_deref();
        StallInfo {
            peer: self.peers.peer(s.oid()),
            comm: id.and_then(|i| i.comm),
            cmdline: id.and_then(|i| i.cmdline.clone()),
            unit: id.and_then(|i| i.unit.clone()),
            container: id.and_then(|i| i.container.clone()),
            ..s.stall_info(now)
        }
    }

    /// Remove `pid` (docs/observer.md#release KernelAttested generation mismatch): no stall,
    /// `pid_recycle++`, pid goes to the removed list. False if not tracked.
    pub fn retire(&mut self, pid: u32) -> bool {
        match self.find(None, pid) {
            Some(slot) => {
                self.release(slot);
                bump(&mut self.counters.pid_recycle);
                true
            }
            None => false,
        }
    }

    /// Append and clear the agents removed (evicted / retired) since the last call.
    pub fn take_removed(&mut self, out: &mut Vec<AgentRef>) {
        out.append(&mut self.removed);
    }

    /// Bytes allocated per configured slot: slot + pid index + deadline +
    /// free stack + removed list, divided by capacity (rounded up).
    pub fn bytes_per_agent(&self) -> usize {
        let cap = self.cfg.capacity;
        let total = core::mem::size_of::<Slot>() * self.slots.capacity()
            + self.index.allocated_bytes()
            + DeadlineList::BYTES_PER_SLOT * cap
            + core::mem::size_of::<u32>() * self.free.capacity()
            + core::mem::size_of::<AgentRef>() * self.removed.capacity()
            + core::mem::size_of::<Option<Arc<ProcIdentity>>>() * self.idents.capacity()
            + self.peers.allocated_bytes();
        total.div_ceil(cap)
    }

    /// Breakdown for reports: (slot, pid-index entry, deadline link) bytes.
    #[doc(hidden)]
    pub fn layout_sizes() -> (usize, usize, usize) {
        (
            core::mem::size_of::<Slot>(),
            core::mem::size_of::<super::pid_index::IndexEntry>(),
            DeadlineList::BYTES_PER_SLOT,
        )
    }

    /// Hint the CPU to load the pid-index line for `pid`; no effect on
    /// state. When a batch of frames is drained (`recvmmsg`), calling this for
    /// every frame before recording them overlaps the index cache misses
    /// instead of serialising them (matters from ~10^4 tracked agents).
    #[inline]
    pub fn prefetch(&self, pid: u32) {
        self.index.prefetch(key_of(0, pid));
    }

    /// Check every internal invariant (tests): O(capacity).
    #[doc(hidden)]
    pub fn check_invariants(&self) -> Result<(), String> {
        let used = self.slots.iter().filter(|s| s.has(F_USED)).count();
        if used != self.len || self.len + self.free.len() != self.slots.len() {
            return Err(format!(
                "len {} used {} free {}",
                self.len,
                used,
                self.free.len()
            ));
        }
        let latched = self.slots.iter().filter(|s| s.has(F_STALLED)).count();
        if latched != self.latched {
            return Err(format!("latched {} counted {}", latched, self.latched));
        }
        for (i, s) in self.slots.iter().enumerate() {
            let armed = self.deadlines.due(i as u32);
            if !s.has(F_USED) {
                if armed.is_some() {
                    return Err(format!("free slot {i} armed"));
                }
                continue;
            }
            match (s.has(F_STALLED), armed) {
                (true, Some(_)) => return Err(format!("latched slot {i} armed")),
                (false, None) => return Err(format!("live slot {i} unarmed")),
                // Blind time only ever pushes a deadline later.
                (false, Some(d)) if d < self.due_of(s.last_ns) => {
                    return Err(format!("slot {i} due {d} < last_ns + T"))
                }
                _ => {}
            }
            match self.index.probe(s.key(), &self.slots) {
                Probe::Found { slot, .. } if slot as usize == i => {}
                _ => return Err(format!("pid {} not indexed to slot {i}", s.pid)),
            }
            if s.oid() != 0 && self.peers.peer(s.oid()).is_none() {
                return Err(format!("slot {i} names a free sender id {}", s.oid()));
            }
        }
        // Every sender id is held exactly by its agents.
        for oid in self.peers.ids().collect::<Vec<_>>() {
            let held = self
                .slots
                .iter()
                .filter(|s| s.has(F_USED) && s.oid() == oid)
                .count() as u32;
            if held == 0 || self.peers.refs(oid) != held {
                return Err(format!(
                    "sender id {oid}: {} references, {held} agents",
                    self.peers.refs(oid)
                ));
            }
        }
        self.index.check(&self.slots, self.len)
    }
}
