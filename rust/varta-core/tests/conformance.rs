//! Runs every entry of upstream's conformance vectors (`tests/vlp-test-vectors.json`,
//! copied byte for byte from `shared/conformance`) against the core.

use serde_json::Value;
use varta_core::frame::{DecodeError, Frame, Status};

fn vectors() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/vlp-test-vectors.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).expect("vectors file")).expect("json")
}

fn u64_field(v: &Value) -> u64 {
    match v {
        Value::Number(n) => n.as_u64().expect("u64"),
        Value::String(s) => u64::from_str_radix(s.trim_start_matches("0x"), 16).expect("hex u64"),
        other => panic!("not an integer: {other}"),
    }
}

#[test]
fn crc32c_vectors() {
    let v = vectors();
    let list = v["crc32c_vectors"].as_array().unwrap();
    assert_eq!(list.len(), 5);
    for case in list {
        let input = hex::decode(case["input_hex"].as_str().unwrap()).unwrap();
        let want = u32::from_str_radix(case["expected_crc_hex"].as_str().unwrap(), 16).unwrap();
        assert_eq!(varta_core::crc32c(&input), want, "{}", case["id"]);
    }
}

fn expected_error(name: &str, wire: &[u8; 32]) -> DecodeError {
    // Variant fields are recomputed from the wire bytes; the name is what the vector pins.
    let err = Frame::decode(wire).expect_err("vector must not decode");
    assert_eq!(err.kind(), name, "wrong variant");
    err
}

#[test]
fn frame_vectors() {
    let v = vectors();
    let list = v["frame_vectors"].as_array().unwrap();
    assert!(!list.is_empty());
    for case in list {
        let id = case["id"].as_str().unwrap();
        let wire_hex = case["expected_wire_hex"]
            .as_str()
            .or_else(|| case["wire_hex"].as_str())
            .unwrap_or_else(|| panic!("{id}: no wire hex"));
        let wire: [u8; 32] = hex::decode(wire_hex).unwrap().try_into().unwrap();
        match case["expected_decode_error"].as_str() {
            None => {
                let inp = &case["inputs"];
                let frame = Frame {
                    status: Status::from_name(inp["status"].as_str().unwrap()).unwrap(),
                    pid: inp["pid"].as_u64().unwrap() as u32,
                    timestamp: u64_field(&inp["timestamp"]),
                    nonce: u64_field(&inp["nonce"]),
                    payload: inp["payload"].as_u64().unwrap() as u32,
                };
                assert_eq!(frame.encode(), wire, "{id}: encode");
                assert_eq!(Frame::decode(&wire), Ok(frame), "{id}: decode");
            }
            Some(name) => {
                let err = expected_error(name, &wire);
                if let DecodeError::BadCrc { expected, actual } = err {
                    assert_eq!(expected, varta_core::crc32c(&wire[..28]), "{id}");
                    assert_eq!(
                        actual,
                        u32::from_le_bytes(wire[28..].try_into().unwrap()),
                        "{id}"
                    );
                }
            }
        }
    }
}
