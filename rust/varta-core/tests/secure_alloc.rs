//! No heap allocation on the secure hot paths: seal, open, HKDF, the sender
//! session's next_wire/commit (including a prefix rotation) and the
//! receiver's whole `open` path (accept, replay, decrypt failure, truncated,
//! decode error, master-key derivation, new senders, full table, sweeps).
//!
//! A counting global allocator counts per thread, so the other tests of this
//! binary running in parallel do not disturb the measurement.
//!
//! Iteration counts are modest because varta-core is built at opt-level 0 in
//! the dev profile, where the generic RustCrypto code instantiated here runs
//! ~30x slower than optimised; zero allocations over a few thousand
//! operations (crossing a prefix rotation, a full table and sweeps) already
//! covers every branch.

use varta_core::frame::{Frame, Status};
use varta_core::secure::{
    derive_agent_key, derive_epoch_key, derive_iv_prefix, derive_panic_iv_prefix, open_master,
    open_shared, seal_master, seal_panic_frame, seal_shared, Key, Opened, ReceiverConfig,
    SecureReceiver, SecureSession, EVICTION_TTL_NS, MAX_SENDER_STATES,
};

mod common;

use common::count_allocs;

#[global_allocator]
static GLOBAL: common::Counting = common::Counting;

fn frame(pid: u32, nonce: u64) -> Frame {
    Frame {
        status: Status::Ok,
        pid,
        timestamp: nonce,
        nonce,
        payload: 0,
    }
}

#[test]
fn the_counter_works() {
    assert!(count_allocs(|| drop(std::hint::black_box(vec![1u8; 10]))) >= 1);
}

#[test]
fn seal_open_and_kdf_do_not_allocate() {
    let k = Key::from_bytes([1; 32]);
    let salt = [2u8; 16];
    let pt = frame(5, 1).encode();
    let n = count_allocs(|| {
        for i in 0..1_000u32 {
            let iv = derive_iv_prefix(&salt, i);
            let mut w = [0u8; 60];
            seal_shared(&k, &iv, i, &pt, &mut w);
            let mut back = [0u8; 32];
            assert!(open_shared(&k, &w, &mut back));
            let agent = derive_agent_key(&k, i);
            let mut wm = [0u8; 64];
            let mut ptm = pt;
            ptm[4..8].copy_from_slice(&i.to_le_bytes());
            seal_master(&agent, i, &iv, i, &ptm, &mut wm);
            assert!(open_master(&agent, &wm, &mut back));
            std::hint::black_box(derive_epoch_key(&agent, u64::from(i)));
            std::hint::black_box(derive_panic_iv_prefix(&salt, i, 1, i));
            seal_panic_frame(&k, &salt, 5, 1, i, &pt, &mut w);
        }
    });
    assert_eq!(n, 0, "allocations in seal/open/HKDF");
}

#[test]
fn session_beats_do_not_allocate() {
    let mut shared = SecureSession::with_salt_shared(Key::from_bytes([3; 32]), [4; 16]);
    shared.set_position_for_test(0, u32::MAX - 1_000);
    let mut master = SecureSession::new_master(Key::from_bytes([5; 32]), 77).unwrap();
    let mut out = [0u8; 64];
    let n = count_allocs(|| {
        for i in 0..3_000u64 {
            shared
                .next_wire(&frame(77, i + 1).encode(), &mut out)
                .unwrap();
            if i % 5 != 0 {
                shared.commit();
            }
            master
                .next_wire(&frame(77, i + 1).encode(), &mut out)
                .unwrap();
            master.commit();
        }
    });
    assert_eq!(n, 0, "allocations in next_wire/commit");
    assert_eq!(
        shared.prefix_index(),
        1,
        "the run crossed a prefix rotation"
    );
}

#[test]
fn receiver_open_does_not_allocate() {
    let k = Key::from_bytes([6; 32]);
    let m = Key::from_bytes([7; 32]);
    let mut rx = SecureReceiver::new(ReceiverConfig {
        shared_keys: vec![Key::from_bytes([8; 32]), k.clone()],
        master_key: Some(m.clone()),
        session_restart_gap_ns: 1_000_000_000,
    })
    .unwrap();
    // Pre-seal everything outside the measured region.
    let senders = MAX_SENDER_STATES as u32 + 10;
    let mut wires: Vec<[u8; 60]> = Vec::new();
    for pid in 0..senders {
        let mut w = [0u8; 60];
        seal_shared(&k, &[1; 8], 0, &frame(100 + pid, 1).encode(), &mut w);
        wires.push(w);
    }
    let mut masters: Vec<[u8; 64]> = Vec::new();
    for c in 0..500u32 {
        let mut w = [0u8; 64];
        let pid = 50;
        seal_master(
            &derive_agent_key(&m, pid),
            pid,
            &[2; 8],
            c,
            &frame(pid, u64::from(c) + 1).encode(),
            &mut w,
        );
        masters.push(w);
    }
    let mut bad_crc = frame(60, 1).encode();
    bad_crc[30] ^= 1;
    let mut decode_err = [0u8; 60];
    seal_shared(&k, &[3; 8], 0, &bad_crc, &mut decode_err);
    let mut tampered = wires[0];
    tampered[20] ^= 1;

    let mut accepted = 0;
    let n = count_allocs(|| {
        for (i, w) in wires.iter().enumerate() {
            // New senders until the table is full, then fail-closed refusals
            // (each forcing a sweep).
            if let Opened::Accepted(_) = rx.open(w, i as u64) {
                accepted += 1;
            }
            rx.open(w, i as u64); // replay
        }
        for (i, w) in masters.iter().enumerate() {
            rx.open(w, 2_000 + i as u64);
            rx.open(&tampered, 0);
            rx.open(&decode_err, 0);
            rx.open(&w[..63], 0);
        }
        // Far in the future: the periodic sweep evicts everyone.
        rx.open(&wires[0], 10 * EVICTION_TTL_NS);
    });
    assert_eq!(n, 0, "allocations in SecureReceiver::open");
    assert_eq!(accepted, MAX_SENDER_STATES);
    let c = rx.counters();
    assert!(c.sender_state_full >= 10 && c.secure_replay_refused > 0);
    assert!(c.frame_decrypt_failures >= 500 && c.truncated_datagrams >= 500);
}
