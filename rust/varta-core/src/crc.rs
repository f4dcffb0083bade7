//! CRC-32C (Castagnoli) as VLP uses it (`docs/protocol.md#crc-32c`).
//!
//! The `crc32c` crate picks the SSE4.2 / ARMv8 CRC instruction at run time and
//! falls back to a slicing table; both give identical results. We keep our own
//! bit-by-bit reference implementation only for tests to cross-check against.

/// CRC-32C of `data` (init `0xFFFFFFFF`, reflected, xorout `0xFFFFFFFF`).
#[inline]
pub fn crc32c(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

/// The table-free reference definition, used by tests to check the fast path.
#[doc(hidden)]
pub fn crc32c_reference(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    crc ^ 0xFFFF_FFFF
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_reference_values() {
        let cases: [(&[u8], u32); 5] = [
            (b"", 0x0000_0000),
            (b"a", 0xc1d0_4330),
            (b"123456789", 0xe306_9283),
            (&[0u8; 32], 0x8a91_36aa),
            (&[0xffu8; 32], 0x62a8_ab43),
        ];
        for (input, want) in cases {
            assert_eq!(crc32c(input), want, "fast path, input {input:02x?}");
            assert_eq!(
                crc32c_reference(input),
                want,
                "reference, input {input:02x?}"
            );
        }
    }
}
