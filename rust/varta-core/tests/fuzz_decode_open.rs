//! Fuzz target (proptest, with shrinking) for the frame decoder and the secure
//! open path. `cargo fuzz` needs a nightly toolchain and libFuzzer, which the
//! project's machines do not build; proptest's generators and shrinking take
//! their place here.
//!
//! `cargo test -p varta-core --test fuzz_decode_open` runs a few hundred cases
//! per property (part of the default suite). The proving ground's full tier
//! (`python tests/proving/full.py`) sets `VARTA_FUZZ_CASES` to run many more.

use proptest::prelude::*;
use varta_core::frame::{Frame, Status, FRAME_LEN};
use varta_core::secure::{seal_shared, Key, Opened, ReceiverConfig, SecureReceiver};

fn cases() -> u32 {
    std::env::var("VARTA_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

fn receiver() -> SecureReceiver {
    SecureReceiver::new(ReceiverConfig {
        shared_keys: vec![Key::from_bytes([7; 32])],
        master_key: Some(Key::from_bytes([9; 32])),
        session_restart_gap_ns: 1_000_000_000,
    })
    .expect("keys")
}

fn counted(r: &SecureReceiver) -> u64 {
    let c = r.counters();
    c.truncated_datagrams + c.frame_decrypt_failures + c.secure_replay_refused + c.sender_state_full
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    /// Any 32 bytes: decode never panics, and what decodes re-encodes to the same bytes.
    #[test]
    fn decode_is_total_and_round_trips(bytes in prop::array::uniform32(any::<u8>())) {
        if let Ok(f) = Frame::decode(&bytes) {
            prop_assert_eq!(f.encode(), bytes);
        }
    }

    /// A valid frame with bytes changed and its CRC recomputed (so the
    /// field checks, not the CRC, decide): never a panic, and anything that
    /// decodes re-encodes to the same bytes.
    #[test]
    fn mutated_frames_with_fixed_crc_round_trip_or_fail(
        pid in 2u32..4_000_000,
        nonce in 1u64..u64::MAX - 1,
        timestamp in any::<u64>(),
        payload in any::<u32>(),
        edits in prop::collection::vec((0usize..FRAME_LEN - 4, any::<u8>()), 1..6),
    ) {
        let f = Frame { status: Status::Ok, pid, timestamp, nonce, payload };
        let mut b = f.encode();
        prop_assert_eq!(Frame::decode(&b), Ok(f));
        for (at, v) in edits {
            b[at] = v;
        }
        let crc = varta_core::crc32c(&b[..FRAME_LEN - 4]);
        b[FRAME_LEN - 4..].copy_from_slice(&crc.to_le_bytes());
        if let Ok(g) = Frame::decode(&b) {
            prop_assert_eq!(g.encode(), b);
        }
    }

    /// Any slice: decode_slice answers None exactly for a wrong length.
    #[test]
    fn decode_slice_is_total(bytes in prop::collection::vec(any::<u8>(), 0..80)) {
        let r = Frame::decode_slice(&bytes);
        prop_assert_eq!(r.is_none(), bytes.len() != FRAME_LEN);
    }

    /// Arbitrary datagrams: open never panics and every rejection is counted once.
    #[test]
    fn open_is_total_and_counts_every_rejection(
        datagrams in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..100), 1..20),
    ) {
        let mut rx = receiver();
        for (i, d) in datagrams.iter().enumerate() {
            let before = counted(&rx);
            let opened = rx.open(d, i as u64);
            let after = counted(&rx);
            match opened {
                Opened::Rejected(_) => prop_assert_eq!(after, before + 1),
                _ => prop_assert_eq!(after, before),
            }
        }
    }

    /// A sealed frame with any byte changed never opens; the untouched one opens
    /// once, and a second time is a replay.
    #[test]
    fn tampered_sealed_frames_never_open(
        pid in 2u32..4_000_000,
        nonce in 1u64..u64::MAX - 1,
        iv in prop::array::uniform8(any::<u8>()),
        counter in any::<u32>(),
        at in 0usize..60,
        flip in 1u8..=255,
    ) {
        let frame = Frame { status: Status::Ok, pid, timestamp: 1, nonce, payload: 3 };
        let mut wire = [0u8; 60];
        seal_shared(&Key::from_bytes([7; 32]), &iv, counter, &frame.encode(), &mut wire);
        let mut rx = receiver();
        let mut bad = wire;
        bad[at] ^= flip;
        prop_assert!(!matches!(rx.open(&bad, 0), Opened::Accepted(_)));
        prop_assert_eq!(rx.open(&wire, 0), Opened::Accepted(frame));
        prop_assert!(matches!(rx.open(&wire, 1), Opened::Rejected(_)));
    }
}
