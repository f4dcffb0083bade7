//! The tracker's `pid → slot` index (`docs/observer.md#tracker`): cache
//! lines of 15 four-byte entries (slot number + hash tag), compared 15 at a
//! time with SSE2 on x86_64. A pid's home line is the Murmur3 hash of
//! `pid >> 3`, so 8 consecutive pids share one line; a pid sits at its
//! place in its block when that entry is free, so a lookup usually compares
//! one entry. A full line passes new pids to the next, up to
//! [`MAX_PROBE_LINES`] lines, and counts them (F14-style overflow counts, no
//! tombstones). A tag match is confirmed against the pid stored in the slot
//! ([`SlotPid`]), so the index never stores pids itself.

use super::tracker::{MAX_CAPACITY, MAX_PROBE_LINES};

/// What the index reads from a slot: the agent key it holds
/// (`docs/observer.md#agent-identity`: origin id in the high 32 bits, pid in
/// the low; origin 0, the Unix socket, is plain pid keying).
pub(super) trait SlotPid {
    fn key(&self) -> u64;
}

/// The pid of an agent key.
#[inline]
pub(super) fn key_pid(key: u64) -> u32 {
    key as u32
}

/// What an agent key's origin adds to its pid before hashing: 0 for the
/// Unix socket, so local agents hash exactly as by pid alone.
#[inline]
fn salt(key: u64) -> u32 {
    ((key >> 32) as u32).wrapping_mul(0x9E37_79B9)
}

/// The 32-bit hash of an agent key whose top bits tag index entries.
#[inline]
pub(super) fn key_hash(key: u64) -> u32 {
    mix(key_pid(key) ^ salt(key))
}

/// Index entries are 4 bytes: the slot number in the low [`SLOT_BITS`] and
/// a tag (the pid hash's top bits) above. A tag match is confirmed against
/// the slot's pid; a false match (1 in 4,096 per occupied entry compared)
/// only costs one extra slot read.
pub(super) const SLOT_BITS: u32 = 20;
pub(super) const SLOT_MASK: u32 = (1 << SLOT_BITS) - 1;
/// `slot` sentinel of a free entry.
pub(super) const IDX_EMPTY: u32 = SLOT_MASK;
const _: () = assert!(
    MAX_CAPACITY < IDX_EMPTY as usize,
    "slot numbers must fit below the sentinel"
);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct IndexEntry(u32);

impl IndexEntry {
    pub(super) const EMPTY: IndexEntry = IndexEntry(u32::MAX);

    #[inline]
    pub(super) fn new(hash: u32, slot: u32) -> IndexEntry {
        IndexEntry((hash & !SLOT_MASK) | slot)
    }

    #[inline]
    pub(super) fn slot(self) -> u32 {
        self.0 & SLOT_MASK
    }

    /// The entry holds a slot whose pid hashes to `hash`'s tag. (The
    /// one-entry form of [`IndexLine::tag_matches`].)
    #[inline]
    pub(super) fn tag_matches(self, hash: u32) -> bool {
        (self.0 ^ hash) & !SLOT_MASK == 0
    }
}

/// Entries per index line.
pub(super) const LINE_ENTRIES: usize = 15;
/// Consecutive pids share a home line (`pid >> BLOCK_BITS` is hashed). The
/// kernel hands out pids in increasing order, so agents started together
/// share few lines and a round of their beats misses the index once per 8
/// beats instead of once per beat; scattered pids cost what a per-pid hash
/// does. (At 100,000 agents that miss was the whole difference from 100.)
pub(super) const BLOCK_BITS: u32 = 3;
pub(super) const PIDS_PER_BLOCK: usize = 1 << BLOCK_BITS;

/// Where in a line a pid goes when that entry is free: its place in its
/// block (or the same place in the line's second half). Lookups try it
/// first, so a found pid usually costs one entry compare, not a line's.
#[inline]
pub(super) fn preferred(pid: u32) -> usize {
    pid as usize & (PIDS_PER_BLOCK - 1)
}

/// One cache line of the index: 15 entries and the count of pids that
/// overflowed past this line from earlier homes (F14's scheme: a lookup
/// stops at the first line with no overflow, so there are no tombstones).
#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
pub(super) struct IndexLine {
    pub(super) entries: [IndexEntry; LINE_ENTRIES],
    pub(super) overflow: u32,
}

impl IndexLine {
    pub(super) const EMPTY: IndexLine = IndexLine {
        entries: [IndexEntry::EMPTY; LINE_ENTRIES],
        overflow: 0,
    };

    /// Bit `i` set if entry `i`'s tag matches `hash` (free entries too, when
    /// the tag is all ones): the 15 tags compared at once.
    #[inline]
    pub(super) fn tag_matches(&self, hash: u32) -> u32 {
        #[cfg(target_arch = "x86_64")]
        {
            use core::arch::x86_64::*;
            // SAFETY: SSE2 is part of the x86_64 baseline; the line is 64
            // bytes, 64-aligned, so the four 16-byte loads are in bounds and
            // aligned. Lane 15 is `overflow`, masked off below.
            unsafe {
                let p = (self as *const IndexLine).cast::<__m128i>();
                let keep = _mm_set1_epi32(!SLOT_MASK as i32);
                let want = _mm_set1_epi32((hash & !SLOT_MASK) as i32);
                let eq =
                    |i: usize| _mm_cmpeq_epi32(_mm_and_si128(_mm_load_si128(p.add(i)), keep), want);
                let lo = _mm_packs_epi32(eq(0), eq(1));
                let hi = _mm_packs_epi32(eq(2), eq(3));
                (_mm_movemask_epi8(_mm_packs_epi16(lo, hi)) as u32) & ((1 << LINE_ENTRIES) - 1)
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let mut bits = 0u32;
            for (i, e) in self.entries.iter().enumerate() {
                bits |= u32::from(e.tag_matches(hash)) << i;
            }
            bits
        }
    }
}

pub(super) enum Probe {
    Found { line: usize, pos: usize, slot: u32 },
    Absent,
}

/// A free index entry for a new pid, `passed` full lines after its home.
#[derive(Clone, Copy)]
pub(super) struct Vacancy {
    line: usize,
    pos: usize,
    passed: usize,
}

/// Murmur3 32-bit finalizer.
#[inline]
pub(super) fn mix(x: u32) -> u32 {
    let mut x = x;
    x = (x ^ (x >> 16)).wrapping_mul(0x85eb_ca6b);
    x = (x ^ (x >> 13)).wrapping_mul(0xc2b2_ae35);
    x ^ (x >> 16)
}

/// `pid → slot` map: `⌈4 × capacity / 15⌉` lines (entry load ≤ 0.27),
/// each pid in the first line with room from its home on, at most
/// [`MAX_PROBE_LINES`] lines along.
#[derive(Debug)]
pub(super) struct PidIndex {
    pub(super) lines: Vec<IndexLine>,
}

impl PidIndex {
    pub(super) fn new(capacity: usize) -> PidIndex {
        let n = capacity.saturating_mul(4).div_ceil(LINE_ENTRIES).max(1);
        PidIndex {
            lines: vec![IndexLine::EMPTY; n],
        }
    }

    /// Home line of agent `key`: its pid block's hash (salted by its
    /// origin) scaled onto the table.
    #[inline]
    pub(super) fn home(&self, key: u64) -> usize {
        let h = mix((key_pid(key) >> BLOCK_BITS) ^ salt(key));
        ((u64::from(h) * self.lines.len() as u64) >> 32) as usize
    }

    #[inline]
    pub(super) fn next(&self, line: usize) -> usize {
        if line + 1 == self.lines.len() {
            0
        } else {
            line + 1
        }
    }

    /// Lines a chain may span.
    pub(super) fn max_chain(&self) -> usize {
        MAX_PROBE_LINES.min(self.lines.len())
    }

    /// Find agent `key` (confirmed against `slots`).
    #[inline]
    pub(super) fn probe<S: SlotPid>(&self, key: u64, slots: &[S]) -> Probe {
        let hash = key_hash(key);
        let mut line = self.home(key);
        // Fast path: the pid sits at its preferred entry of its home line.
        let pos = preferred(key_pid(key));
        let e = self.lines[line].entries[pos];
        let slot = e.slot();
        if e.tag_matches(hash)
            && slot != IDX_EMPTY
            && slots.get(slot as usize).is_some_and(|s| s.key() == key)
        {
            return Probe::Found { line, pos, slot };
        }
        for _ in 0..self.max_chain() {
            let l = &self.lines[line];
            let mut candidates = l.tag_matches(hash);
            while candidates != 0 {
                let pos = candidates.trailing_zeros() as usize;
                candidates &= candidates - 1;
                let slot = l.entries[pos].slot();
                if slot != IDX_EMPTY && slots.get(slot as usize).is_some_and(|s| s.key() == key) {
                    return Probe::Found { line, pos, slot };
                }
            }
            if l.overflow == 0 {
                break;
            }
            line = self.next(line);
        }
        Probe::Absent
    }

    /// Where an absent agent `key` goes: the first free entry from its home
    /// line on, or `None` if the next [`MAX_PROBE_LINES`] lines are full.
    pub(super) fn vacancy(&self, key: u64) -> Option<Vacancy> {
        let pid = key_pid(key);
        let mut line = self.home(key);
        for passed in 0..self.max_chain() {
            let entries = &self.lines[line].entries;
            let free = |pos: &usize| entries[*pos].slot() == IDX_EMPTY;
            let pos = [preferred(pid), preferred(pid) + PIDS_PER_BLOCK]
                .into_iter()
                .filter(|&p| p < LINE_ENTRIES)
                .find(free)
                .or_else(|| (0..LINE_ENTRIES).find(free));
            if let Some(pos) = pos {
                return Some(Vacancy { line, pos, passed });
            }
            line = self.next(line);
        }
        None
    }

    /// Index agent `key` to `slot` at `v` (from [`PidIndex::vacancy`], no
    /// change to the index since).
    pub(super) fn insert_at(&mut self, key: u64, slot: u32, v: Vacancy) {
        self.lines[v.line].entries[v.pos] = IndexEntry::new(key_hash(key), slot);
        let mut l = self.home(key);
        for _ in 0..v.passed {
            self.lines[l].overflow += 1;
            l = self.next(l);
        }
    }

    /// Unindex agent `key`, found at `line`/`pos` by [`PidIndex::probe`].
    pub(super) fn remove_at(&mut self, key: u64, line: usize, pos: usize) {
        self.lines[line].entries[pos] = IndexEntry::EMPTY;
        let mut l = self.home(key);
        while l != line {
            self.lines[l].overflow -= 1;
            l = self.next(l);
        }
    }

    /// Entries that hold a slot.
    pub(super) fn occupied(&self) -> usize {
        self.lines
            .iter()
            .flat_map(|l| l.entries.iter())
            .filter(|e| e.slot() != IDX_EMPTY)
            .count()
    }

    /// Overflow counts as recomputed from where each pid sits (tests).
    pub(super) fn expected_overflow<S: SlotPid>(&self, slots: &[S]) -> Result<Vec<u32>, String> {
        let mut want = vec![0u32; self.lines.len()];
        for (line, l) in self.lines.iter().enumerate() {
            for e in l.entries.iter().filter(|e| e.slot() != IDX_EMPTY) {
                let key = slots
                    .get(e.slot() as usize)
                    .map(SlotPid::key)
                    .ok_or_else(|| format!("entry slot {} out of range", e.slot()))?;
                let pid = key_pid(key);
                let mut h = self.home(key);
                let mut steps = 0;
                while h != line {
                    want[h] += 1;
                    h = self.next(h);
                    steps += 1;
                    if steps >= self.max_chain() {
                        return Err(format!("pid {pid} sits past its chain budget"));
                    }
                }
            }
        }
        Ok(want)
    }

    /// Hint the CPU to load agent `key`'s home line; no effect on state.
    #[inline]
    pub(super) fn prefetch(&self, key: u64) {
        let i = self.home(key);
        #[cfg(target_arch = "x86_64")]
        {
            let p = self.lines[i..].as_ptr().cast::<i8>();
            // SAFETY: a prefetch hint on an in-bounds pointer; SSE is part
            // of the x86_64 baseline. Never faults, reads no data.
            #[allow(unused_unsafe)]
            unsafe {
                core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(p)
            };
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = i;
        }
    }

    /// Bytes allocated for the lines.
    pub(super) fn allocated_bytes(&self) -> usize {
        core::mem::size_of::<IndexLine>() * self.lines.capacity()
    }

    /// The index holds exactly `len` pids and every overflow count matches
    /// where the pids sit (tests): O(lines).
    pub(super) fn check<S: SlotPid>(&self, slots: &[S], len: usize) -> Result<(), String> {
        let indexed = self.occupied();
        if indexed != len {
            return Err(format!("index holds {indexed}, len {len}"));
        }
        let want = self.expected_overflow(slots)?;
        for (i, (l, w)) in self.lines.iter().zip(want).enumerate() {
            if l.overflow != w {
                return Err(format!("index line {i} overflow {} != {w}", l.overflow));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_lines_are_one_cache_line_each() {
        assert_eq!(core::mem::size_of::<IndexLine>(), 64);
        assert_eq!(core::mem::align_of::<IndexLine>(), 64);
        let e = IndexEntry::new(0xABCD_E123, 77);
        assert_eq!(e.slot(), 77);
        assert!(e.tag_matches(0xABC0_0000 | 0x5_5555));
        assert!(!e.tag_matches(0xABB0_0000));
        assert_eq!(IndexEntry::EMPTY.slot(), IDX_EMPTY);
    }

    /// The vector compare agrees with entry-by-entry compares, and never
    /// reports the overflow word as an entry.
    #[test]
    fn tag_matches_marks_exactly_the_matching_entries() {
        let hash = 0x1230_0000;
        let mut line = IndexLine::EMPTY;
        for pos in [0, 3, 7, 14] {
            line.entries[pos] = IndexEntry::new(hash, pos as u32);
        }
        line.entries[5] = IndexEntry::new(0x1240_0000, 5);
        line.overflow = hash; // same bits as a matching entry
        assert_eq!(line.tag_matches(hash), 1 | 1 << 3 | 1 << 7 | 1 << 14);
        for probe in [0u32, hash, 0x1240_0000, u32::MAX, 0xFFF0_0000] {
            let want = line
                .entries
                .iter()
                .enumerate()
                .filter(|(_, e)| e.tag_matches(probe))
                .fold(0u32, |m, (i, _)| m | 1 << i);
            assert_eq!(line.tag_matches(probe), want, "hash {probe:#x}");
        }
    }

    #[test]
    fn consecutive_pids_share_a_home_line() {
        let index = PidIndex::new(100_000);
        for block in [0u32, 12, 500_000, (u32::MAX >> 3)] {
            let first = u64::from(block << 3);
            let home = index.home(first);
            assert!((0..8).all(|i| index.home(first + i) == home));
            // So do a network origin's (another line, in general).
            let net = first | 7 << 32;
            assert!((0..8).all(|i| index.home(net + i) == index.home(net)));
        }
    }
}
