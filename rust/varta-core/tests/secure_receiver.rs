//! The secure receive path (`docs/protocol.md#secure-receiver`): round trips, every rejection with
//! its counter, trial-count accounting, master path, replay rules, the
//! bounded sender table.

use varta_core::frame::{DecodeError, Frame, Status, NONCE_TERMINAL};
use varta_core::secure::{
    derive_agent_key, seal_master, seal_shared, Key, Opened, ReceiverConfig, ReceiverError,
    RejectReason, SecureCounters, SecureReceiver, SecureSession, EVICTION_INTERVAL_NS,
    EVICTION_TTL_NS, MAX_SENDER_STATES, MAX_SHARED_KEYS,
};

const SEC: u64 = 1_000_000_000;
const GAP: u64 = 5 * SEC;

fn key(b: u8) -> Key {
    Key::from_bytes([b; 32])
}

fn frame(pid: u32, nonce: u64) -> Frame {
    Frame {
        status: Status::Ok,
        pid,
        timestamp: 1000 + nonce,
        nonce,
        payload: 7,
    }
}

fn terminal(pid: u32, ts: u64) -> Frame {
    Frame {
        status: Status::Critical,
        pid,
        timestamp: ts,
        nonce: NONCE_TERMINAL,
        payload: 0,
    }
}

fn shared(k: &Key, iv: [u8; 8], counter: u32, f: &Frame) -> [u8; 60] {
    let mut out = [0u8; 60];
    seal_shared(k, &iv, counter, &f.encode(), &mut out);
    out
}

fn master(m: &Key, iv: [u8; 8], counter: u32, f: &Frame) -> [u8; 64] {
    let mut out = [0u8; 64];
    seal_master(
        &derive_agent_key(m, f.pid),
        f.pid,
        &iv,
        counter,
        &f.encode(),
        &mut out,
    );
    out
}

fn receiver(shared_keys: Vec<Key>, master_key: Option<Key>) -> SecureReceiver {
    SecureReceiver::new(ReceiverConfig {
        shared_keys,
        master_key,
        session_restart_gap_ns: GAP,
    })
    .unwrap()
}

fn counters(decrypt: u64, replay: u64, full: u64, attempts: u64, truncated: u64) -> SecureCounters {
    SecureCounters {
        frame_decrypt_failures: decrypt,
        secure_replay_refused: replay,
        sender_state_full: full,
        secure_aead_attempts: attempts,
        truncated_datagrams: truncated,
    }
}

#[test]
fn shared_round_trip() {
    let mut rx = receiver(vec![key(1)], None);
    let f = frame(4242, 1);
    assert_eq!(
        rx.open(&shared(&key(1), [3; 8], 0, &f), 0),
        Opened::Accepted(f)
    );
    assert_eq!(rx.counters(), counters(0, 0, 0, 1, 0));
    assert_eq!(rx.senders(), 1);
}

#[test]
fn master_round_trip_and_inner_pid_binding() {
    let m = key(9);
    let mut rx = receiver(vec![], Some(m.clone()));
    let f = frame(777, 1);
    assert_eq!(rx.open(&master(&m, [1; 8], 0, &f), 0), Opened::Accepted(f));

    // A frame whose plaintext pid differs from its wire pid does not open,
    // even though the tag is valid (sealed with the wire pid's agent key).
    let inner = frame(778, 2);
    let mut wire = [0u8; 64];
    seal_master(
        &derive_agent_key(&m, 777),
        777,
        &[1; 8],
        1,
        &inner.encode(),
        &mut wire,
    );
    assert_eq!(
        rx.open(&wire, 0),
        Opened::Rejected(RejectReason::DecryptFailed)
    );

    // Changing the cleartext wire pid (AAD and key selector) breaks the tag.
    let mut moved = master(&m, [1; 8], 2, &frame(777, 3));
    moved[0] ^= 1;
    assert_eq!(
        rx.open(&moved, 0),
        Opened::Rejected(RejectReason::DecryptFailed)
    );
    assert_eq!(rx.counters(), counters(2, 0, 0, 3, 0));
}

#[test]
fn tampering_any_byte_is_a_decrypt_failure() {
    let mut rx = receiver(vec![key(1)], None);
    let good = shared(&key(1), [5; 8], 0, &frame(100, 1));
    for i in 0..60 {
        let mut bad = good;
        bad[i] ^= 0x80;
        assert_eq!(
            rx.open(&bad, 0),
            Opened::Rejected(RejectReason::DecryptFailed),
            "byte {i}"
        );
    }
    let m = key(2);
    let mut rxm = receiver(vec![], Some(m.clone()));
    let good = master(&m, [5; 8], 0, &frame(100, 1));
    for i in 0..64 {
        let mut bad = good;
        bad[i] ^= 0x01;
        assert_eq!(
            rxm.open(&bad, 0),
            Opened::Rejected(RejectReason::DecryptFailed),
            "byte {i}"
        );
    }
    assert_eq!(rx.counters(), counters(60, 0, 0, 60, 0));
    assert_eq!(rxm.counters(), counters(64, 0, 0, 64, 0));
    // Nothing was allocated for the failures; the untouched frames still open.
    assert_eq!(rx.senders(), 0);
    assert!(matches!(
        rx.open(&shared(&key(1), [5; 8], 0, &frame(100, 1)), 0),
        Opened::Accepted(_)
    ));
    assert!(matches!(rxm.open(&good, 0), Opened::Accepted(_)));
}

#[test]
fn wrong_key_is_a_decrypt_failure_never_bad_crc() {
    let mut rx = receiver(vec![key(1), key(2)], Some(key(3)));
    assert_eq!(
        rx.open(&shared(&key(4), [0; 8], 0, &frame(10, 1)), 0),
        Opened::Rejected(RejectReason::DecryptFailed)
    );
    assert_eq!(
        rx.open(&master(&key(4), [0; 8], 0, &frame(10, 1)), 0),
        Opened::Rejected(RejectReason::DecryptFailed)
    );
    // 60-byte: both shared keys (master never tried); 64-byte: both + master.
    assert_eq!(rx.counters(), counters(2, 0, 0, 2 + 3, 0));
}

#[test]
fn truncated_and_overlong_datagrams() {
    let mut rx = receiver(vec![key(1)], Some(key(2)));
    let good = shared(&key(1), [0; 8], 0, &frame(10, 1));
    for len in [0usize, 1, 32, 59, 61, 63, 65, 100] {
        let mut buf = vec![0u8; len];
        let n = len.min(60);
        buf[..n].copy_from_slice(&good[..n]);
        assert_eq!(
            rx.open(&buf, 0),
            Opened::Rejected(RejectReason::Truncated),
            "len {len}"
        );
    }
    // A plain 32-byte frame is never secure input.
    assert_eq!(
        rx.open(&frame(10, 1).encode(), 0),
        Opened::Rejected(RejectReason::Truncated)
    );
    assert_eq!(rx.counters(), counters(0, 0, 0, 0, 9));
}

#[test]
fn every_key_is_tried_and_the_first_success_wins() {
    let keys: Vec<Key> = (1..=MAX_SHARED_KEYS as u8).map(key).collect();
    let mut rx = receiver(keys, None);
    // A frame sealed with the last accepted key opens...
    let f = frame(50, 1);
    assert_eq!(
        rx.open(&shared(&key(8), [0; 8], 0, &f), 0),
        Opened::Accepted(f)
    );
    // ...and one sealed with the primary key still costs all eight trials.
    let g = frame(51, 1);
    assert_eq!(
        rx.open(&shared(&key(1), [0; 8], 0, &g), 0),
        Opened::Accepted(g)
    );
    assert_eq!(rx.counters().secure_aead_attempts, 16);
}

#[test]
fn too_many_or_no_keys_is_a_startup_error() {
    let nine: Vec<Key> = (0..9).map(key).collect();
    assert_eq!(
        SecureReceiver::new(ReceiverConfig {
            shared_keys: nine,
            master_key: None,
            session_restart_gap_ns: GAP
        })
        .unwrap_err(),
        ReceiverError::TooManySharedKeys { found: 9 }
    );
    assert_eq!(
        SecureReceiver::new(ReceiverConfig {
            shared_keys: vec![],
            master_key: None,
            session_restart_gap_ns: GAP
        })
        .unwrap_err(),
        ReceiverError::NoKeys
    );
}

#[test]
fn master_frame_is_also_trialled_with_shared_keys() {
    // Upstream behaviour: a 64-byte datagram whose body[4..64] is a valid
    // shared-key 60-byte frame opens on the shared path; wire[0..4] is then
    // ignored and identity comes from the inner pid.
    let mut rx = receiver(vec![key(1)], Some(key(2)));
    let f = frame(321, 1);
    let body = shared(&key(1), [4; 8], 0, &f);
    let mut wire = [0u8; 64];
    wire[..4].copy_from_slice(&999u32.to_le_bytes());
    wire[4..].copy_from_slice(&body);
    assert_eq!(rx.open(&wire, 0), Opened::Accepted(f));
    // One shared trial + the (failing) master trial both ran.
    assert_eq!(rx.counters(), counters(0, 0, 0, 2, 0));
}

#[test]
fn rotated_out_key_stops_working() {
    let old = key(0x0d);
    let new = key(0x0e);
    let mut both = receiver(vec![new.clone(), old.clone()], None);
    assert!(matches!(
        both.open(&shared(&old, [1; 8], 0, &frame(60, 1)), 0),
        Opened::Accepted(_)
    ));
    assert!(matches!(
        both.open(&shared(&new, [2; 8], 0, &frame(61, 1)), 0),
        Opened::Accepted(_)
    ));
    // The operator drops the old key from the accepted list.
    let mut only_new = receiver(vec![new.clone()], None);
    assert_eq!(
        only_new.open(&shared(&old, [1; 8], 1, &frame(60, 2)), 0),
        Opened::Rejected(RejectReason::DecryptFailed)
    );
    assert!(matches!(
        only_new.open(&shared(&new, [2; 8], 1, &frame(61, 2)), 0),
        Opened::Accepted(_)
    ));
    assert_eq!(only_new.counters().frame_decrypt_failures, 1);
}

#[test]
fn decode_error_after_open_allocates_no_state() {
    let mut rx = receiver(vec![key(1)], None);
    let mut pt = frame(70, 1).encode();
    pt[28] ^= 1; // break the CRC inside the sealed plaintext
    let mut wire = [0u8; 60];
    seal_shared(&key(1), &[0; 8], 0, &pt, &mut wire);
    assert!(matches!(
        rx.open(&wire, 0),
        Opened::Decode(DecodeError::BadCrc { .. })
    ));
    // pid 1 is reserved.
    let mut pid1 = [0u8; 60];
    let mut raw = frame(2, 1).encode();
    raw[4..8].copy_from_slice(&1u32.to_le_bytes());
    let crc = varta_core::crc32c(&raw[..28]);
    raw[28..].copy_from_slice(&crc.to_le_bytes());
    seal_shared(&key(1), &[0; 8], 1, &raw, &mut pid1);
    assert_eq!(rx.open(&pid1, 0), Opened::Decode(DecodeError::BadPid(1)));
    assert_eq!(rx.senders(), 0);
    assert_eq!(rx.counters(), counters(0, 0, 0, 2, 0));
}

#[test]
fn replayed_datagram_is_refused() {
    let mut rx = receiver(vec![key(1)], None);
    let w = shared(&key(1), [1; 8], 0, &frame(80, 1));
    assert!(matches!(rx.open(&w, 0), Opened::Accepted(_)));
    assert_eq!(rx.open(&w, 1), Opened::Rejected(RejectReason::Replay));
    // Much later (beyond the restart gap) the same datagram is still stale.
    assert_eq!(
        rx.open(&w, 60 * SEC),
        Opened::Rejected(RejectReason::Replay)
    );
    assert_eq!(rx.counters().secure_replay_refused, 2);
}

#[test]
fn counters_within_a_prefix_are_strictly_increasing_with_gaps_allowed() {
    let mut rx = receiver(vec![key(1)], None);
    let k = key(1);
    assert!(matches!(
        rx.open(&shared(&k, [1; 8], 5, &frame(81, 5)), 0),
        Opened::Accepted(_)
    ));
    assert!(matches!(
        rx.open(&shared(&k, [1; 8], 9, &frame(81, 9)), 0),
        Opened::Accepted(_)
    ));
    // Backward reorder within the prefix is refused.
    assert_eq!(
        rx.open(&shared(&k, [1; 8], 7, &frame(81, 7)), 0),
        Opened::Rejected(RejectReason::Replay)
    );
    // Any u32 counter is acceptable on receipt, u32::MAX included.
    assert!(matches!(
        rx.open(&shared(&k, [1; 8], u32::MAX, &frame(81, 10)), 0),
        Opened::Accepted(_)
    ));
}

#[test]
fn previous_prefix_is_remembered_one_deep_and_stale_prefixes_are_refused() {
    let mut rx = receiver(vec![key(1)], None);
    let k = key(1);
    let (a, b, c) = ([0xa; 8], [0xb; 8], [0xc; 8]);
    let pid = 90;
    let open = |rx: &mut SecureReceiver, iv, ctr, nonce| {
        rx.open(&shared(&k, iv, ctr, &frame(pid, nonce)), SEC)
    };
    assert!(matches!(open(&mut rx, a, 0, 1), Opened::Accepted(_)));
    assert!(matches!(open(&mut rx, a, 1, 2), Opened::Accepted(_)));
    // New prefix b with a higher nonce: accepted, a becomes "previous".
    assert!(matches!(open(&mut rx, b, 0, 3), Opened::Accepted(_)));
    // A late frame of prefix a (counter beyond a's last) is still accepted.
    assert!(matches!(open(&mut rx, a, 2, 4), Opened::Accepted(_)));
    // But not one at or below a's last counter.
    assert_eq!(
        open(&mut rx, a, 1, 2),
        Opened::Rejected(RejectReason::Replay)
    );
    // Prefix c pushes a out of the history.
    assert!(matches!(open(&mut rx, c, 0, 5), Opened::Accepted(_)));
    // Now a is an aged-out (stale) prefix: its frames have nonces below the
    // high-water mark and are refused, even with a fresh-looking counter.
    assert_eq!(
        open(&mut rx, a, 3, 4),
        Opened::Rejected(RejectReason::Replay)
    );
    // b is the previous prefix and still works above its last counter.
    assert!(matches!(open(&mut rx, b, 1, 6), Opened::Accepted(_)));
    assert_eq!(rx.counters().secure_replay_refused, 2);
}

#[test]
fn new_session_after_restart_gap_but_not_before() {
    let mut rx = receiver(vec![key(1)], None);
    let k = key(1);
    let pid = 91;
    assert!(matches!(
        rx.open(&shared(&k, [1; 8], 0, &frame(pid, 100)), 0),
        Opened::Accepted(_)
    ));
    // A recycled pid (new process, new salt) starts again at nonce 1.
    let restart = shared(&k, [2; 8], 0, &frame(pid, 1));
    assert_eq!(
        rx.open(&restart, GAP - 1),
        Opened::Rejected(RejectReason::Replay)
    );
    // Silent for the full gap (measured from the last *accept*): new session.
    assert_eq!(rx.open(&restart, GAP), Opened::Accepted(frame(pid, 1)));
    // The reset made prefix 2 current and retired prefix 1 for good: even a
    // frame above every high-water mark under it is a replay now.
    assert_eq!(
        rx.open(&shared(&k, [1; 8], 1, &frame(pid, 101)), GAP),
        Opened::Rejected(RejectReason::Replay),
        "a superseded session is never accepted again"
    );
    assert_eq!(
        rx.open(&shared(&k, [1; 8], 2, &frame(pid, 102)), 1000 * GAP),
        Opened::Rejected(RejectReason::Replay)
    );
}

#[test]
fn terminal_frames_use_their_own_high_water_and_never_reset_the_session() {
    let mut rx = receiver(vec![key(1)], None);
    let k = key(1);
    let pid = 92;
    assert!(matches!(
        rx.open(&shared(&k, [1; 8], 0, &frame(pid, 50)), 0),
        Opened::Accepted(_)
    ));
    // Crash frames arrive under their own per-firing prefixes.
    let crash = shared(&k, [7; 8], 0, &terminal(pid, 5000));
    assert_eq!(rx.open(&crash, SEC), Opened::Accepted(terminal(pid, 5000)));
    // The same crash frame replayed much later: the prefix is now current, counter not fresh.
    assert_eq!(
        rx.open(&crash, 100 * SEC),
        Opened::Rejected(RejectReason::Replay)
    );
    // A captured crash frame under yet another prefix with an older
    // timestamp: refused, and, even though the sender is silent far beyond
    // the gap, a terminal frame never triggers the session reset.
    let old_crash = shared(&k, [8; 8], 0, &terminal(pid, 4000));
    assert_eq!(
        rx.open(&old_crash, 100 * SEC),
        Opened::Rejected(RejectReason::Replay)
    );
    // A newer crash frame is fine.
    assert!(matches!(
        rx.open(&shared(&k, [9; 8], 0, &terminal(pid, 6000)), 100 * SEC),
        Opened::Accepted(_)
    ));
    // Regular beats keep their own high-water (50): nonce 51 on a new prefix passes.
    assert!(matches!(
        rx.open(&shared(&k, [10; 8], 0, &frame(pid, 51)), 100 * SEC),
        Opened::Accepted(_)
    ));
}

#[test]
fn replay_state_is_keyed_by_the_inner_pid() {
    // Master frames of two pids with the same IV/counter do not collide;
    // identity is the authenticated inner pid, not the source address.
    let m = key(3);
    let mut rx = receiver(vec![], Some(m.clone()));
    assert!(matches!(
        rx.open(&master(&m, [1; 8], 0, &frame(1000, 1)), 0),
        Opened::Accepted(_)
    ));
    assert!(matches!(
        rx.open(&master(&m, [1; 8], 0, &frame(1001, 1)), 0),
        Opened::Accepted(_)
    ));
    assert_eq!(rx.senders(), 2);
}

#[test]
fn sender_table_full_fails_closed_and_never_evicts_live_state() {
    let k = key(1);
    let mut rx = receiver(vec![k.clone()], None);
    let base = 10_000u32;
    for i in 0..MAX_SENDER_STATES as u32 {
        let f = frame(base + i, 1);
        assert_eq!(rx.open(&shared(&k, [1; 8], 0, &f), 0), Opened::Accepted(f));
    }
    assert_eq!(rx.senders(), MAX_SENDER_STATES);
    // One more sender: refused, counted, nothing evicted.
    let late = frame(99, 1);
    let late_wire = shared(&k, [1; 8], 0, &late);
    assert_eq!(
        rx.open(&late_wire, SEC),
        Opened::Rejected(RejectReason::SenderTableFull)
    );
    assert_eq!(rx.counters().sender_state_full, 1);
    assert_eq!(rx.senders(), MAX_SENDER_STATES);
    // Known senders keep working while the table is full.
    let f = frame(base, 2);
    assert_eq!(
        rx.open(&shared(&k, [1; 8], 1, &f), SEC),
        Opened::Accepted(f)
    );

    // Just before the TTL nobody is dead yet, even though the forced sweep runs.
    let almost = EVICTION_TTL_NS - 1;
    assert_eq!(
        rx.open(&late_wire, almost),
        Opened::Rejected(RejectReason::SenderTableFull)
    );
    // At the TTL everyone but `base` (seen at 1 s) has been silent long
    // enough: the forced sweep frees room and the new sender gets in.
    assert_eq!(rx.open(&late_wire, EVICTION_TTL_NS), Opened::Accepted(late));
    assert_eq!(rx.senders(), 2, "the recently seen sender survived");
    assert_eq!(rx.counters().sender_state_full, 2);
}

#[test]
fn periodic_sweep_evicts_silent_senders() {
    let k = key(1);
    let mut rx = receiver(vec![k.clone()], None);
    assert!(matches!(
        rx.open(&shared(&k, [1; 8], 0, &frame(500, 1)), 0),
        Opened::Accepted(_)
    ));
    assert!(matches!(
        rx.open(&shared(&k, [1; 8], 0, &frame(501, 1)), EVICTION_TTL_NS / 2),
        Opened::Accepted(_)
    ));
    // Sweeps run at most every EVICTION_INTERVAL: the first one (due at
    // 60 s) already ran during the second open; the next after TTL evicts 500.
    assert_eq!(rx.maybe_sweep(EVICTION_TTL_NS), 1);
    assert_eq!(rx.senders(), 1);
    assert_eq!(rx.maybe_sweep(EVICTION_TTL_NS + 1), 0, "not due again yet");
    assert_eq!(
        rx.maybe_sweep(EVICTION_TTL_NS + EVICTION_INTERVAL_NS + EVICTION_TTL_NS / 2),
        1
    );
    assert_eq!(rx.senders(), 0);
    // An evicted sender's session stays retired; a new session is simply new.
    assert_eq!(
        rx.open(&shared(&k, [1; 8], 1, &frame(500, 2)), 2 * EVICTION_TTL_NS),
        Opened::Rejected(RejectReason::Replay)
    );
    assert!(matches!(
        rx.open(&shared(&k, [9; 8], 0, &frame(500, 1)), 2 * EVICTION_TTL_NS),
        Opened::Accepted(_)
    ));
}

#[test]
fn session_frames_open_end_to_end_across_rotation_and_reseed() {
    let k = key(0x42);
    let mut rx = receiver(vec![k.clone()], Some(key(0x43)));
    let mut s = SecureSession::new_shared(k).unwrap();
    let mut out = [0u8; 64];
    let pid = 600;
    let mut nonce = 0;
    let mut send = |s: &mut SecureSession, rx: &mut SecureReceiver| {
        nonce += 1;
        let f = frame(pid, nonce);
        let n = s.next_wire(&f.encode(), &mut out).unwrap();
        assert_eq!(n, 60);
        assert_eq!(rx.open(&out[..n], 0), Opened::Accepted(f));
        s.commit();
    };
    send(&mut s, &mut rx);
    send(&mut s, &mut rx);
    s.set_position_for_test(0, u32::MAX - 1);
    send(&mut s, &mut rx); // counter u32::MAX - 1
    send(&mut s, &mut rx); // rotated: prefix 1, counter 0
    assert_eq!(s.prefix_index(), 1);
    s.reseed(pid).unwrap();
    send(&mut s, &mut rx); // new salt, prefix 0, counter 0: a new prefix with a higher nonce
    assert_eq!(rx.counters().secure_replay_refused, 0);

    let mut sm = SecureSession::new_master(key(0x43), pid).unwrap();
    for _ in 0..3 {
        nonce += 1;
        let f = frame(pid, nonce);
        let n = sm.next_wire(&f.encode(), &mut out).unwrap();
        assert_eq!(n, 64);
        assert_eq!(rx.open(&out[..n], 0), Opened::Accepted(f));
        sm.commit();
    }
}
