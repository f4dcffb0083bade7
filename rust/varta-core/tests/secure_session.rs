//! Sender-side session (`docs/protocol.md#session-salt-and-iv-prefix`, `docs/protocol.md#fork-rotation`): counter lifecycle,
//! speculative prefix rotation committed only on success, reseed, master mode.

use varta_core::frame::{Frame, Status};
use varta_core::secure::{
    derive_agent_key, derive_iv_prefix, open_master, open_shared, Key, SecureSession, SessionError,
    SessionMode,
};

fn frame(pid: u32, nonce: u64) -> [u8; 32] {
    Frame {
        status: Status::Ok,
        pid,
        timestamp: nonce * 10,
        nonce,
        payload: 0,
    }
    .encode()
}

fn nonce_of(wire: &[u8]) -> ([u8; 8], u32) {
    (
        wire[..8].try_into().unwrap(),
        u32::from_le_bytes(wire[8..12].try_into().unwrap()),
    )
}

const SALT: [u8; 16] = [0x5a; 16];

#[test]
fn starts_at_prefix_0_counter_0_and_counts_only_commits() {
    let k = Key::from_bytes([1; 32]);
    let mut s = SecureSession::with_salt_shared(k.clone(), SALT);
    assert_eq!(s.mode(), SessionMode::Shared);
    assert_eq!(s.wire_len(), 60);
    assert_eq!(
        (s.prefix_index(), s.counter(), *s.iv_random()),
        (0, 0, derive_iv_prefix(&SALT, 0))
    );
    let mut out = [0u8; 64];
    // Two failed sends: same position both times, nothing advances.
    for _ in 0..2 {
        assert_eq!(s.next_wire(&frame(10, 1), &mut out), Ok(60));
        assert_eq!(nonce_of(&out), (derive_iv_prefix(&SALT, 0), 0));
        s.abandon();
        assert!(!s.commit(), "nothing pending after abandon");
    }
    assert_eq!(s.counter(), 0);
    // Success: commit advances by exactly one.
    s.next_wire(&frame(10, 1), &mut out).unwrap();
    assert!(s.commit());
    assert!(!s.commit(), "double commit is a no-op");
    assert_eq!(s.counter(), 1);
    s.next_wire(&frame(10, 2), &mut out).unwrap();
    assert_eq!(nonce_of(&out).1, 1);
    let wire: [u8; 60] = out[..60].try_into().unwrap();
    let mut pt = [0u8; 32];
    assert!(open_shared(&k, &wire, &mut pt));
    assert_eq!(pt, frame(10, 2));
}

#[test]
fn rotation_before_the_counter_wraps_is_committed_only_on_success() {
    let k = Key::from_bytes([2; 32]);
    let mut s = SecureSession::with_salt_shared(k, SALT);
    let mut out = [0u8; 64];
    s.set_position_for_test(0, u32::MAX - 1);
    // Last counter of prefix 0 is 0xFFFF_FFFE.
    s.next_wire(&frame(10, 1), &mut out).unwrap();
    assert_eq!(nonce_of(&out), (derive_iv_prefix(&SALT, 0), u32::MAX - 1));
    s.commit();
    assert_eq!((s.prefix_index(), s.counter()), (0, u32::MAX));
    // 0xFFFF_FFFF is never sent: the candidate is prefix 1, counter 0.
    s.next_wire(&frame(10, 2), &mut out).unwrap();
    assert_eq!(nonce_of(&out), (derive_iv_prefix(&SALT, 1), 0));
    // The send fails: the rotation is not committed...
    s.abandon();
    assert_eq!((s.prefix_index(), s.counter()), (0, u32::MAX));
    // ...and the retry computes the same candidate again.
    s.next_wire(&frame(10, 2), &mut out).unwrap();
    assert_eq!(nonce_of(&out), (derive_iv_prefix(&SALT, 1), 0));
    s.commit();
    assert_eq!((s.prefix_index(), s.counter()), (1, 1));
    assert_eq!(*s.iv_random(), derive_iv_prefix(&SALT, 1));
}

#[test]
fn prefix_space_exhaustion_needs_a_reconnect() {
    let mut s = SecureSession::with_salt_shared(Key::from_bytes([3; 32]), SALT);
    let mut out = [0u8; 64];
    s.set_position_for_test(u32::MAX, u32::MAX - 1);
    s.next_wire(&frame(10, 1), &mut out).unwrap();
    s.commit();
    assert_eq!(
        s.next_wire(&frame(10, 2), &mut out),
        Err(SessionError::PrefixSpaceExhausted)
    );
    assert!(!s.commit());
    // A reseed gives a fresh salt at prefix 0, counter 0.
    let fresh = s.reseeded(10).unwrap();
    assert_ne!(fresh.salt(), s.salt());
    assert_eq!((fresh.prefix_index(), fresh.counter()), (0, 0));
    assert_eq!(*fresh.iv_random(), derive_iv_prefix(fresh.salt(), 0));
    let io: std::io::Error = SessionError::PrefixSpaceExhausted.into();
    assert!(io.to_string().contains("reconnect"));
}

#[test]
fn fresh_sessions_draw_fresh_salts() {
    let k = Key::from_bytes([4; 32]);
    let a = SecureSession::new_shared(k.clone()).unwrap();
    let b = SecureSession::new_shared(k).unwrap();
    assert_ne!(a.salt(), b.salt());
    assert_ne!(a.iv_random(), b.iv_random());
}

#[test]
fn reseeded_leaves_the_original_untouched() {
    let mut s = SecureSession::with_salt_shared(Key::from_bytes([5; 32]), SALT);
    let mut out = [0u8; 64];
    s.next_wire(&frame(10, 1), &mut out).unwrap();
    s.commit();
    let replacement = s.reseeded(10).unwrap();
    assert_eq!(s.salt(), &SALT);
    assert_eq!(s.counter(), 1);
    assert_eq!(replacement.counter(), 0);
}

#[test]
fn master_mode_seals_with_the_cached_agent_key_and_rederives_on_reseed() {
    let m = Key::from_bytes(core::array::from_fn(|i| i as u8));
    let mut s = SecureSession::with_salt_master(m.clone(), 2, SALT);
    assert_eq!(
        (s.mode(), s.wire_len(), s.pid()),
        (SessionMode::Master, 64, Some(2))
    );
    let mut out = [0u8; 64];
    assert_eq!(s.next_wire(&frame(2, 1), &mut out), Ok(64));
    assert_eq!(&out[..4], &2u32.to_le_bytes());
    assert_eq!(&out[4..12], &derive_iv_prefix(&SALT, 0));
    let mut pt = [0u8; 32];
    assert!(open_master(&derive_agent_key(&m, 2), &out, &mut pt));
    assert_eq!(pt, frame(2, 1));
    s.commit();

    // A frame for another pid (forked child that did not reconnect) is refused.
    assert_eq!(
        s.next_wire(&frame(3, 2), &mut out),
        Err(SessionError::PidMismatch {
            session_pid: 2,
            frame_pid: 3
        })
    );
    // Reseed for the child's pid: K_agent re-derived, frames open with it.
    s.reseed(3).unwrap();
    assert_eq!((s.pid(), s.counter()), (Some(3), 0));
    s.next_wire(&frame(3, 2), &mut out).unwrap();
    assert_eq!(&out[..4], &3u32.to_le_bytes());
    assert!(open_master(&derive_agent_key(&m, 3), &out, &mut pt));
    assert!(!open_master(&derive_agent_key(&m, 2), &out, &mut pt));
}

#[test]
fn no_nonce_repeats_over_a_long_run_with_failures_and_rotations() {
    use std::collections::HashSet;
    let mut s = SecureSession::with_salt_shared(Key::from_bytes([6; 32]), SALT);
    let mut out = [0u8; 64];
    let mut sent = HashSet::new();
    s.set_position_for_test(0, u32::MAX - 500);
    for i in 0..2000u64 {
        s.next_wire(&frame(10, i + 1), &mut out).unwrap();
        if i % 7 == 3 {
            s.abandon(); // failed send: nothing on the wire
            continue;
        }
        assert!(sent.insert(nonce_of(&out)), "nonce reused at step {i}");
        s.commit();
    }
    assert_eq!(s.prefix_index(), 1);
}
