//! Stall deadlines (`docs/observer.md#stall-detection`): which armed slot is due next, in
//! O(1) per re-arm and O(expired) per expiry pass.
//!
//! Every armed deadline is `last accepted beat + threshold` with one global
//! threshold, and beats are recorded at a non-decreasing observer time. So
//! deadlines are *armed in non-decreasing order*, and a queue ordered by
//! deadline is just a FIFO: re-arming a slot unlinks it (O(1), intrusive
//! doubly-linked list over slot indices) and appends it at the tail; expiry
//! pops from the head while the head is due. This is a one-bucket calendar
//! queue — cheaper than a timer wheel (no cascading) or a heap (no
//! O(log n) sift per beat) for this access pattern.
//!
//! Correctness does not depend on the ordering assumption: [`DeadlineList::arm`]
//! walks backwards from the tail to the sorted position, so an out-of-order
//! deadline (a caller passing an earlier `now`) costs O(k) for the k entries it
//! overtakes, never a wrong expiry order.
//!
//! Memory: one `Link` (prev, next, due: 16 bytes) per slot, allocated at construction.

/// "No entry" in a prev/next/head/tail position.
const NIL: u32 = u32::MAX;
/// `prev` value of a slot that is not armed.
const UNARMED: u32 = u32::MAX - 1;

#[derive(Clone, Copy, Debug)]
struct Link {
    prev: u32,
    next: u32,
    due: u64,
}

const UNARMED_LINK: Link = Link {
    prev: UNARMED,
    next: NIL,
    due: 0,
};

/// A deadline-ordered intrusive list over slot indices `0..capacity`.
#[derive(Debug)]
pub struct DeadlineList {
    links: Vec<Link>,
    head: u32,
    tail: u32,
    len: usize,
}

impl DeadlineList {
    /// Bytes of deadline state per slot.
    pub const BYTES_PER_SLOT: usize = core::mem::size_of::<Link>();

    /// Room for slot indices `0..capacity` (`capacity < u32::MAX - 1`).
    pub fn new(capacity: usize) -> DeadlineList {
        assert!(capacity < UNARMED as usize, "deadline capacity too large");
        DeadlineList {
            links: vec![UNARMED_LINK; capacity],
            head: NIL,
            tail: NIL,
            len: 0,
        }
    }

    /// Number of armed slots.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The deadline of `idx` if armed.
    pub fn due(&self, idx: u32) -> Option<u64> {
        let l = self.links.get(idx as usize)?;
        (l.prev != UNARMED).then_some(l.due)
    }

    /// The earliest armed deadline and its slot.
    pub fn peek(&self) -> Option<(u32, u64)> {
        let l = self.links.get(self.head as usize)?;
        Some((self.head, l.due))
    }

    /// Arm (or re-arm) `idx` to fire at `due`. O(1) when `due` is not earlier
    /// than the latest armed deadline (the normal case).
    pub fn arm(&mut self, idx: u32, due: u64) {
        if idx as usize >= self.links.len() {
            return;
        }
        self.disarm(idx);
        // Find the insertion point: after the last entry with due <= `due`.
        let mut after = self.tail;
        while after != NIL {
            let l = self.links[after as usize];
            if l.due <= due {
                break;
            }
            after = l.prev;
        }
        let next = if after == NIL {
            self.head
        } else {
            self.links[after as usize].next
        };
        self.links[idx as usize] = Link {
            prev: after,
            next,
            due,
        };
        if after == NIL {
            self.head = idx;
        } else {
            self.links[after as usize].next = idx;
        }
        if next == NIL {
            self.tail = idx;
        } else {
            self.links[next as usize].prev = idx;
        }
        self.len += 1;
    }

    /// Remove `idx` from the list if armed; returns whether it was.
    pub fn disarm(&mut self, idx: u32) -> bool {
        let Some(&l) = self.links.get(idx as usize) else {
            return false;
        };
        if l.prev == UNARMED {
            return false;
        }
        if l.prev == NIL {
            self.head = l.next;
        } else {
            self.links[l.prev as usize].next = l.next;
        }
        if l.next == NIL {
            self.tail = l.prev;
        } else {
            self.links[l.next as usize].prev = l.prev;
        }
        self.links[idx as usize] = UNARMED_LINK;
        self.len -= 1;
        true
    }

    /// Push every armed deadline back by `by_ns` (saturating). A constant
    /// shift keeps the order, so this is one pass and no relinking.
    pub fn shift_all(&mut self, by_ns: u64) {
        let mut i = self.head;
        while i != NIL {
            let link = &mut self.links[i as usize];
            link.due = link.due.saturating_add(by_ns);
            i = link.next;
        }
    }

    /// Pop the earliest deadline if it is `<= now_ns`.
    pub fn pop_due(&mut self, now_ns: u64) -> Option<(u32, u64)> {
        let (idx, due) = self.peek()?;
        if due > now_ns {
            return None;
        }
        self.disarm(idx);
        Some((idx, due))
    }

    /// Armed `(slot, due)` pairs in deadline order (tests, diagnostics).
    pub fn iter(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        let mut cur = self.head;
        core::iter::from_fn(move || {
            let l = self.links.get(cur as usize)?;
            let out = (cur, l.due);
            cur = l.next;
            Some(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fifo_when_armed_in_order() {
        let mut d = DeadlineList::new(4);
        d.arm(2, 10);
        d.arm(0, 10);
        d.arm(3, 20);
        assert_eq!(d.pop_due(9), None);
        assert_eq!(d.pop_due(10), Some((2, 10)));
        assert_eq!(d.pop_due(10), Some((0, 10)));
        assert_eq!(d.pop_due(19), None);
        assert_eq!(d.peek(), Some((3, 20)));
        assert_eq!(d.len(), 1);
    }

    #[test]
    fn shift_all_pushes_every_deadline_back_in_order() {
        let mut d = DeadlineList::new(4);
        d.arm(1, 10);
        d.arm(2, 15);
        d.shift_all(100);
        assert_eq!(d.pop_due(109), None);
        // A deadline armed after the shift still sorts by its due time.
        d.arm(3, 112);
        assert_eq!(
            d.iter().collect::<Vec<_>>(),
            vec![(1, 110), (3, 112), (2, 115)]
        );
        assert_eq!(d.pop_due(110), Some((1, 110)));
    }

    #[test]
    fn rearm_moves_to_the_tail() {
        let mut d = DeadlineList::new(3);
        d.arm(0, 1);
        d.arm(1, 2);
        d.arm(0, 3);
        assert_eq!(d.iter().collect::<Vec<_>>(), vec![(1, 2), (0, 3)]);
        assert!(d.disarm(1));
        assert!(!d.disarm(1));
        assert_eq!(d.due(1), None);
        assert_eq!(d.due(0), Some(3));
        assert_eq!(d.iter().collect::<Vec<_>>(), vec![(0, 3)]);
    }

    #[test]
    fn out_of_order_arm_is_still_sorted() {
        let mut d = DeadlineList::new(4);
        d.arm(0, 50);
        d.arm(1, 10);
        d.arm(2, 30);
        d.arm(3, 30);
        assert_eq!(
            d.iter().collect::<Vec<_>>(),
            vec![(1, 10), (2, 30), (3, 30), (0, 50)]
        );
    }

    #[derive(Clone, Debug)]
    enum Op {
        Arm(u32, u64),
        Disarm(u32),
        Pop(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u32..16, 0u64..100).prop_map(|(i, d)| Op::Arm(i, d)),
            1 => (0u32..16).prop_map(Op::Disarm),
            2 => (0u64..100).prop_map(Op::Pop),
        ]
    }

    proptest! {
        /// Against a model: a map slot -> (due, arm sequence number); pops
        /// take the smallest (due, seq).
        #[test]
        fn matches_a_sorted_model(ops in proptest::collection::vec(op(), 0..200)) {
            let mut d = DeadlineList::new(16);
            let mut model: std::collections::BTreeMap<u32, (u64, u64)> = Default::default();
            let mut seq = 0u64;
            for op in ops {
                match op {
                    Op::Arm(i, due) => { d.arm(i, due); seq += 1; model.insert(i, (due, seq)); }
                    Op::Disarm(i) => { prop_assert_eq!(d.disarm(i), model.remove(&i).is_some()); }
                    Op::Pop(now) => {
                        let want = model.iter().min_by_key(|(_, v)| **v).map(|(k, v)| (*k, v.0))
                            .filter(|(_, due)| *due <= now);
                        if let Some((k, _)) = want { model.remove(&k); }
                        prop_assert_eq!(d.pop_due(now), want);
                    }
                }
                prop_assert_eq!(d.len(), model.len());
            }
        }
    }
}
