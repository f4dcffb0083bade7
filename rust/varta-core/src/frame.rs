//! The 32-byte VLP v0.2 frame: encoding and normative-order decoding
//! (`docs/protocol.md#frame-layout`). Knows nothing of sockets or Python.

use crate::crc::crc32c;
use core::fmt;

pub const MAGIC: [u8; 2] = [0x56, 0x41];
pub const VERSION: u8 = 0x02;
pub const FRAME_LEN: usize = 32;
/// Nonce reserved for crash-terminal frames (always paired with `Critical`).
pub const NONCE_TERMINAL: u64 = u64::MAX;
/// Timestamp value that must never appear on the wire.
pub const TIMESTAMP_RESERVED: u64 = u64::MAX;

/// Status byte (`docs/protocol.md#status-byte`). `Stall` is synthesised by the observer and is
/// never valid on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Status {
    Ok = 0,
    Degraded = 1,
    Critical = 2,
    Stall = 3,
}

impl Status {
    /// Any of the four known codes (including `Stall`); `None` otherwise.
    #[inline]
    pub const fn from_u8(b: u8) -> Option<Status> {
        match b {
            0 => Some(Status::Ok),
            1 => Some(Status::Degraded),
            2 => Some(Status::Critical),
            3 => Some(Status::Stall),
            _ => None,
        }
    }

    /// Lower-case name, as in the TSV export and conformance vectors.
    pub const fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Degraded => "degraded",
            Status::Critical => "critical",
            Status::Stall => "stall",
        }
    }

    /// Case-insensitive name lookup (`"ok"`, `"DEGRADED"`, …).
    pub fn from_name(name: &str) -> Option<Status> {
        [
            Status::Ok,
            Status::Degraded,
            Status::Critical,
            Status::Stall,
        ]
        .into_iter()
        .find(|s| s.as_str().eq_ignore_ascii_case(name))
    }
}

/// A decoded (or to-be-encoded) frame. The CRC is a wire artefact, not a field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Frame {
    pub status: Status,
    pub pid: u32,
    pub timestamp: u64,
    pub nonce: u64,
    pub payload: u32,
}

/// Why a 32-byte buffer is not a valid frame. The set is closed (`docs/protocol.md#decode-errors`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DecodeError {
    BadMagic,
    BadVersion,
    BadCrc { expected: u32, actual: u32 },
    BadStatus(u8),
    StallOnWire,
    BadPid(u32),
    BadTimestamp(u64),
    BadNonce { nonce: u64, status: Status },
}

impl DecodeError {
    /// Variant name, e.g. `"BadCrc"` (Python's `DecodeError.kind`).
    pub const fn kind(&self) -> &'static str {
        match self {
            DecodeError::BadMagic => "BadMagic",
            DecodeError::BadVersion => "BadVersion",
            DecodeError::BadCrc { .. } => "BadCrc",
            DecodeError::BadStatus(_) => "BadStatus",
            DecodeError::StallOnWire => "StallOnWire",
            DecodeError::BadPid(_) => "BadPid",
            DecodeError::BadTimestamp(_) => "BadTimestamp",
            DecodeError::BadNonce { .. } => "BadNonce",
        }
    }

    /// Prometheus label value for `varta_decode_errors_total{kind}`.
    pub const fn metric_label(&self) -> &'static str {
        match self {
            DecodeError::BadMagic => "bad_magic",
            DecodeError::BadVersion => "bad_version",
            DecodeError::BadCrc { .. } => "bad_crc",
            DecodeError::BadStatus(_) => "bad_status",
            DecodeError::StallOnWire => "stall_on_wire",
            DecodeError::BadPid(_) => "bad_pid",
            DecodeError::BadTimestamp(_) => "bad_timestamp",
            DecodeError::BadNonce { .. } => "bad_nonce",
        }
    }

    /// Every metric label, in a fixed order (for zero-filled exports).
    pub const ALL_LABELS: [&'static str; 8] = [
        "bad_magic",
        "bad_version",
        "bad_status",
        "bad_pid",
        "bad_timestamp",
        "bad_nonce",
        "stall_on_wire",
        "bad_crc",
    ];
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::BadMagic => write!(f, "varta-vlp: bad magic"),
            DecodeError::BadVersion => write!(f, "varta-vlp: unsupported version"),
            DecodeError::BadCrc { expected, actual } => write!(
                f,
                "varta-vlp: CRC mismatch (expected {expected:#010x}, carried {actual:#010x})"
            ),
            DecodeError::BadStatus(b) => write!(f, "varta-vlp: unknown status byte {b:#04x}"),
            DecodeError::StallOnWire => write!(f, "varta-vlp: Stall status is observer-only"),
            DecodeError::BadPid(p) => write!(f, "varta-vlp: reserved pid {p}"),
            DecodeError::BadTimestamp(t) => write!(f, "varta-vlp: reserved timestamp {t}"),
            DecodeError::BadNonce { nonce, status } => write!(
                f,
                "varta-vlp: terminal nonce {nonce:#x} with non-Critical status {}",
                status.as_str()
            ),
        }
    }
}

impl std::error::Error for DecodeError {}

impl Frame {
    /// Serialise into `out` (bytes 0..28 little-endian, CRC-32C at 28..32).
    /// A pure serialiser: any value that fits a field is written, sentinels
    /// included, so tests can build negative frames.
    #[inline]
    pub fn encode_into(&self, out: &mut [u8; FRAME_LEN]) {
        out[0..2].copy_from_slice(&MAGIC);
        out[2] = VERSION;
        out[3] = self.status as u8;
        out[4..8].copy_from_slice(&self.pid.to_le_bytes());
        out[8..16].copy_from_slice(&self.timestamp.to_le_bytes());
        out[16..24].copy_from_slice(&self.nonce.to_le_bytes());
        out[24..28].copy_from_slice(&self.payload.to_le_bytes());
        let crc = crc32c(&out[0..28]);
        out[28..32].copy_from_slice(&crc.to_le_bytes());
    }

    #[inline]
    pub fn encode(&self) -> [u8; FRAME_LEN] {
        let mut out = [0u8; FRAME_LEN];
        self.encode_into(&mut out);
        out
    }

    /// Decode with the normative check order (`docs/protocol.md#decoding-order`): the first
    /// failing check wins.
    pub fn decode(buf: &[u8; FRAME_LEN]) -> Result<Frame, DecodeError> {
        if buf[0..2] != MAGIC {
            return Err(DecodeError::BadMagic);
        }
        if buf[2] != VERSION {
            return Err(DecodeError::BadVersion);
        }
        let expected = crc32c(&buf[0..28]);
        let actual = u32::from_le_bytes([buf[28], buf[29], buf[30], buf[31]]);
        if expected != actual {
            return Err(DecodeError::BadCrc { expected, actual });
        }
        let status = match Status::from_u8(buf[3]) {
            None => return Err(DecodeError::BadStatus(buf[3])),
            Some(Status::Stall) => return Err(DecodeError::StallOnWire),
            Some(s) => s,
        };
        let pid = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
        if pid <= 1 {
            return Err(DecodeError::BadPid(pid));
        }
        let timestamp = u64::from_le_bytes(buf[8..16].try_into().expect("8 bytes"));
        if timestamp == TIMESTAMP_RESERVED {
            return Err(DecodeError::BadTimestamp(timestamp));
        }
        let nonce = u64::from_le_bytes(buf[16..24].try_into().expect("8 bytes"));
        if nonce == NONCE_TERMINAL && status != Status::Critical {
            return Err(DecodeError::BadNonce { nonce, status });
        }
        let payload = u32::from_le_bytes([buf[24], buf[25], buf[26], buf[27]]);
        Ok(Frame {
            status,
            pid,
            timestamp,
            nonce,
            payload,
        })
    }

    /// Decode a slice of any length; `None` if it is not exactly 32 bytes
    /// (receivers count those as truncated and never decode them).
    #[inline]
    pub fn decode_slice(buf: &[u8]) -> Option<Result<Frame, DecodeError>> {
        let arr: &[u8; FRAME_LEN] = buf.try_into().ok()?;
        Some(Frame::decode(arr))
    }

    /// True for a crash-terminal frame (`Critical` + `NONCE_TERMINAL`).
    #[inline]
    pub fn is_terminal(&self) -> bool {
        self.nonce == NONCE_TERMINAL
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn status() -> impl Strategy<Value = Status> {
        prop_oneof![
            Just(Status::Ok),
            Just(Status::Degraded),
            Just(Status::Critical)
        ]
    }

    #[test]
    fn worked_examples() {
        let ok = Frame {
            status: Status::Ok,
            pid: 2,
            timestamp: 0,
            nonce: 1,
            payload: 0,
        };
        assert_eq!(
            hex::encode(ok.encode()),
            "56410200020000000000000000000000010000000000000000000000e4116baa"
        );
        let term = Frame {
            status: Status::Critical,
            pid: 2,
            timestamp: 999,
            nonce: NONCE_TERMINAL,
            payload: 0,
        };
        assert_eq!(
            hex::encode(term.encode()),
            "5641020202000000e703000000000000ffffffffffffffff00000000a299eeed"
        );
        assert_eq!(Frame::decode(&term.encode()), Ok(term));
    }

    fn resealed(mut b: [u8; 32]) -> [u8; 32] {
        let crc = crc32c(&b[..28]);
        b[28..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Each row breaks one more check than the row before it, so the expected
    /// variant is the first failing check in the normative order.
    #[test]
    fn every_error_in_normative_order() {
        let base = Frame {
            status: Status::Ok,
            pid: 0,
            timestamp: u64::MAX,
            nonce: u64::MAX,
            payload: 0,
        }
        .encode();
        // pid 0 + reserved ts + terminal nonce with Ok: BadPid comes first.
        assert_eq!(Frame::decode(&base), Err(DecodeError::BadPid(0)));
        let mut b = base;
        b[3] = 3;
        assert_eq!(Frame::decode(&resealed(b)), Err(DecodeError::StallOnWire));
        b[3] = 0xEE;
        assert_eq!(
            Frame::decode(&resealed(b)),
            Err(DecodeError::BadStatus(0xEE))
        );
        let carried = u32::from_le_bytes(b[28..].try_into().unwrap());
        assert_eq!(
            Frame::decode(&b),
            Err(DecodeError::BadCrc {
                expected: crc32c(&b[..28]),
                actual: carried
            })
        );
        b[2] = 1;
        assert_eq!(Frame::decode(&b), Err(DecodeError::BadVersion));
        b[0] = 0;
        assert_eq!(Frame::decode(&b), Err(DecodeError::BadMagic));

        let ts = Frame {
            status: Status::Degraded,
            pid: 7,
            timestamp: u64::MAX,
            nonce: u64::MAX,
            payload: 0,
        };
        assert_eq!(
            Frame::decode(&ts.encode()),
            Err(DecodeError::BadTimestamp(u64::MAX))
        );
        let nonce = Frame { timestamp: 5, ..ts };
        assert_eq!(
            Frame::decode(&nonce.encode()),
            Err(DecodeError::BadNonce {
                nonce: u64::MAX,
                status: Status::Degraded
            })
        );
        let pid1 = Frame { pid: 1, ..nonce };
        assert_eq!(Frame::decode(&pid1.encode()), Err(DecodeError::BadPid(1)));
        let terminal = Frame {
            status: Status::Critical,
            ..nonce
        };
        assert_eq!(Frame::decode(&terminal.encode()), Ok(terminal));
    }

    #[test]
    fn decode_slice_rejects_other_lengths() {
        assert!(Frame::decode_slice(&[0u8; 31]).is_none());
        assert!(Frame::decode_slice(&[0u8; 33]).is_none());
        assert!(Frame::decode_slice(&[0u8; 32]).is_some());
    }

    proptest! {
        #[test]
        fn roundtrip(status in status(), pid in 2u32.., timestamp in 0u64..u64::MAX, nonce in 0u64..u64::MAX, payload: u32) {
            let f = Frame { status, pid, timestamp, nonce, payload };
            prop_assert_eq!(Frame::decode(&f.encode()), Ok(f));
        }

        #[test]
        fn any_single_bit_flip_is_rejected(pid in 2u32.., nonce in 0u64..u64::MAX, bit in 0usize..256) {
            let f = Frame { status: Status::Ok, pid, timestamp: 1, nonce, payload: 0 };
            let mut b = f.encode();
            b[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(Frame::decode(&b).is_err());
        }

        #[test]
        fn fast_crc_matches_reference(data: Vec<u8>) {
            prop_assert_eq!(crc32c(&data), crate::crc::crc32c_reference(&data));
        }
    }
}
