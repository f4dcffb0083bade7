//! Every `secure_frame_vectors` entry of upstream's conformance vectors, plus
//! the extra reference values of `docs/protocol.md#reference-values`, `docs/protocol.md#key-derivation` (panic IV prefix, agent
//! key for pid 2), checked against the core's seal/open and HKDF.

use hkdf::Hkdf;
use serde_json::Value;
use sha2::Sha256;
use varta_core::frame::{Frame, Status};
use varta_core::secure::{
    derive_agent_key, derive_epoch_key, derive_iv_prefix, derive_panic_iv_prefix, open_master,
    open_shared, seal_master, seal_shared, Key,
};

fn vectors() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/vlp-test-vectors.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).expect("vectors file")).expect("json")
}

fn hex_field<const N: usize>(case: &Value, field: &str) -> [u8; N] {
    let s = case[field]
        .as_str()
        .unwrap_or_else(|| panic!("{}: no {field}", case["id"]));
    hex::decode(s)
        .unwrap()
        .try_into()
        .unwrap_or_else(|_| panic!("{}: {field} is not {N} bytes", case["id"]))
}

fn u64_field(case: &Value, field: &str) -> u64 {
    case[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{}: {field}", case["id"]))
}

/// The info bytes a vector pins, rebuilt from the label and integers (so a
/// wrong label/NUL/endianness in our constants would show up here too).
fn info(label: &[u8], ints: &[&[u8]]) -> Vec<u8> {
    let mut v = label.to_vec();
    for i in ints {
        v.extend_from_slice(i);
    }
    v
}

#[test]
fn secure_frame_vectors() {
    let v = vectors();
    let list = v["secure_frame_vectors"].as_array().unwrap();
    let mut kinds_seen = Vec::new();
    for case in list {
        let id = case["id"].as_str().unwrap();
        let kind = case["kind"].as_str().unwrap();
        kinds_seen.push(kind.to_string());
        match kind {
            "shared_key_seal" => {
                let key = Key::from_bytes(hex_field(case, "key_hex"));
                let iv: [u8; 8] = hex_field(case, "iv_random_hex");
                let pt: [u8; 32] = hex_field(case, "plaintext_hex");
                let want: [u8; 60] = hex_field(case, "expected_wire_hex");
                let counter = u64_field(case, "iv_counter") as u32;
                let mut out = [0u8; 60];
                seal_shared(&key, &iv, counter, &pt, &mut out);
                assert_eq!(hex::encode(out), hex::encode(want), "{id}");
                let mut back = [0u8; 32];
                assert!(open_shared(&key, &want, &mut back), "{id}: open");
                assert_eq!(back, pt, "{id}");
                // The plaintext is a valid frame (the docs/protocol.md#reference-values example).
                assert_eq!(
                    Frame::decode(&back).unwrap(),
                    Frame {
                        status: Status::Ok,
                        pid: 2,
                        timestamp: 1000,
                        nonce: 1,
                        payload: 0
                    }
                );
            }
            "master_key_seal" => {
                let master = Key::from_bytes(hex_field(case, "master_key_hex"));
                let pid = u64_field(case, "agent_pid") as u32;
                let agent = derive_agent_key(&master, pid);
                let want_key: [u8; 32] = hex_field(case, "derived_agent_key_hex");
                assert_eq!(agent.as_bytes(), &want_key, "{id}: agent key");
                let iv: [u8; 8] = hex_field(case, "iv_random_hex");
                let pt: [u8; 32] = hex_field(case, "plaintext_hex");
                let want: [u8; 64] = hex_field(case, "expected_wire_hex");
                let counter = u64_field(case, "iv_counter") as u32;
                let mut out = [0u8; 64];
                seal_master(&agent, pid, &iv, counter, &pt, &mut out);
                assert_eq!(hex::encode(out), hex::encode(want), "{id}");
                let mut back = [0u8; 32];
                assert!(open_master(&agent, &want, &mut back), "{id}: open");
                assert_eq!(back, pt, "{id}");
            }
            "kdf_agent_key" => {
                let master = Key::from_bytes(hex_field(case, "master_key_hex"));
                let pid = u64_field(case, "agent_id") as u32;
                let want_info = hex::decode(case["info_hex"].as_str().unwrap()).unwrap();
                assert_eq!(
                    info(b"varta-agent-v1\0", &[&pid.to_le_bytes()]),
                    want_info,
                    "{id}"
                );
                let want: [u8; 32] = hex_field(case, "expected_okm_hex");
                assert_eq!(derive_agent_key(&master, pid).as_bytes(), &want, "{id}");
            }
            "kdf_iv_prefix" => {
                let salt: [u8; 16] = hex_field(case, "session_salt_hex");
                let idx = u64_field(case, "prefix_index") as u32;
                let want_info = hex::decode(case["info_hex"].as_str().unwrap()).unwrap();
                assert_eq!(
                    info(b"varta-iv-prefix-v1\0", &[&idx.to_le_bytes()]),
                    want_info,
                    "{id}"
                );
                let want: [u8; 8] = hex_field(case, "expected_iv_prefix_hex");
                assert_eq!(derive_iv_prefix(&salt, idx), want, "{id}");
            }
            "kdf_epoch_key" => {
                let agent = Key::from_bytes(hex_field(case, "agent_key_hex"));
                let epoch = u64_field(case, "epoch");
                let want_info = hex::decode(case["info_hex"].as_str().unwrap()).unwrap();
                assert_eq!(
                    info(b"varta-epoch-v1\0", &[&epoch.to_le_bytes()]),
                    want_info,
                    "{id}"
                );
                let want: [u8; 32] = hex_field(case, "expected_okm_hex");
                assert_eq!(derive_epoch_key(&agent, epoch).as_bytes(), &want, "{id}");
            }
            other => panic!("{id}: unknown secure vector kind {other}"),
        }
    }
    kinds_seen.sort();
    assert_eq!(
        kinds_seen,
        [
            "kdf_agent_key",
            "kdf_epoch_key",
            "kdf_iv_prefix",
            "master_key_seal",
            "shared_key_seal"
        ],
        "every secure vector kind is covered exactly once"
    );
}

#[test]
fn iv_prefix_vector_description_is_wrong_about_the_salt() {
    // docs/protocol.md#key-derivation: using the session salt as HKDF salt (as the vector's
    // description claims) gives 30cfa718…, not the expected 9fee777f….
    let salt: [u8; 16] = core::array::from_fn(|i| i as u8 + 1);
    let mut okm = [0u8; 8];
    Hkdf::<Sha256>::new(Some(&salt), &salt)
        .expand(b"varta-iv-prefix-v1\0\x07\0\0\0", &mut okm)
        .unwrap();
    assert_eq!(hex::encode(okm), "30cfa71880bffaec");
    assert_eq!(hex::encode(derive_iv_prefix(&salt, 7)), "9fee777f36be69ce");
    // Empty salt, absent salt and 32 zero bytes are the same Extract.
    Hkdf::<Sha256>::new(Some(&[0u8; 32]), &salt)
        .expand(b"varta-iv-prefix-v1\0\x07\0\0\0", &mut okm)
        .unwrap();
    assert_eq!(hex::encode(okm), "9fee777f36be69ce");
    Hkdf::<Sha256>::new(Some(&[]), &salt)
        .expand(b"varta-iv-prefix-v1\0\x07\0\0\0", &mut okm)
        .unwrap();
    assert_eq!(hex::encode(okm), "9fee777f36be69ce");
}

fn m_00_1f() -> Key {
    Key::from_bytes(core::array::from_fn(|i| i as u8))
}

#[test]
fn spec_reference_table_values() {
    // docs/protocol.md#key-derivation reference values not in the vectors file.
    assert_eq!(
        hex::encode(derive_agent_key(&m_00_1f(), 2).as_bytes()),
        "db292f5843a0737aec785a9df270561b343d06e5fe8f89fce72f0869ba77afd5"
    );
    assert_eq!(
        hex::encode(derive_agent_key(&m_00_1f(), 42).as_bytes()),
        "61f5951b2bf1905d5053df0abb027002cba62da1f16d93c6552ff61cb65f2599"
    );
    assert_eq!(
        hex::encode(derive_panic_iv_prefix(&[0xa5; 16], 42, 1000, 7)),
        "e2615ed3e4f44375"
    );
    assert_eq!(
        hex::encode(derive_epoch_key(&m_00_1f(), 100).as_bytes()),
        "cb9fe8cb3db0d8d667b7dd9e72adce07c669d3b27bc68ea69e3cc3c129d601ab"
    );
}

#[test]
fn spec_worked_examples_8_5() {
    let pt: [u8; 32] =
        hex::decode("5641020002000000e80300000000000001000000000000000000000055d0861c")
            .unwrap()
            .try_into()
            .unwrap();
    let iv: [u8; 8] = hex::decode("1122334455667788").unwrap().try_into().unwrap();
    let mut shared = [0u8; 60];
    seal_shared(&m_00_1f(), &iv, 0, &pt, &mut shared);
    assert_eq!(
        hex::encode(shared),
        concat!(
            "1122334455667788",
            "00000000",
            "bcba1b202190b688a08e0a7ac909da44a2023cb7a421fd6428453fd12141c257",
            "b6fd638c55fddf5c621020de1327975a"
        )
    );
    let mut master = [0u8; 64];
    seal_master(
        &derive_agent_key(&m_00_1f(), 2),
        2,
        &iv,
        0,
        &pt,
        &mut master,
    );
    assert_eq!(
        hex::encode(master),
        concat!(
            "02000000",
            "1122334455667788",
            "00000000",
            "efe8fd8c226106641e01fc8fe649f79475e19b4f2093e063987f1c663a5d2f0b",
            "73ba429fadc4c494e2723baff86af9cc"
        )
    );
}

#[test]
fn counter_is_u32_little_endian_in_the_nonce() {
    let mut a = [0u8; 60];
    seal_shared(&m_00_1f(), &[9; 8], 1, &[7; 32], &mut a);
    assert_eq!(&a[8..12], &[1, 0, 0, 0]);
    let mut b = [0u8; 60];
    seal_shared(&m_00_1f(), &[9; 8], 0x0403_0201, &[7; 32], &mut b);
    assert_eq!(&b[8..12], &[1, 2, 3, 4]);
}
