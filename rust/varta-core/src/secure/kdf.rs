//! HKDF-SHA256 derivations (`docs/protocol.md#key-derivation`): full Extract + Expand, EMPTY salt
//! everywhere; the key or session/fork salt is the IKM. Info = ASCII label,
//! one NUL byte, then the listed integers little-endian, back to back.
//!
//! All functions work on stack buffers only (no allocation), so the panic
//! path and the receiver's per-datagram agent-key derivation may call them.

use hkdf::Hkdf;
use sha2::Sha256;

use super::keys::{Key, KEY_LEN};
use super::seal::{IV_RANDOM_LEN, SALT_LEN};

/// `"varta-agent-v1\0"`
pub const LABEL_AGENT: &[u8] = b"varta-agent-v1\0";
/// `"varta-iv-prefix-v1\0"`
pub const LABEL_IV_PREFIX: &[u8] = b"varta-iv-prefix-v1\0";
/// `"varta-panic-iv-v1\0"`
pub const LABEL_PANIC_IV: &[u8] = b"varta-panic-iv-v1\0";
/// `"varta-epoch-v1\0"`
pub const LABEL_EPOCH: &[u8] = b"varta-epoch-v1\0";

/// Extract (salt = empty) then Expand `ikm` with the info pieces
/// concatenated. The output lengths used here (8, 32) are far below
/// 255 × HashLen, so Expand cannot fail.
fn hkdf(ikm: &[u8], info: &[&[u8]], okm: &mut [u8]) {
    let hk = Hkdf::<Sha256>::new(None, ikm);
    if hk.expand_multi_info(info, okm).is_err() {
        // Unreachable for okm.len() <= 8160; keep the output non-secret rather than panic.
        okm.fill(0);
    }
}

/// `K_agent = HKDF(M, "varta-agent-v1\0" || u32le(agent_pid))`, 32 bytes.
pub fn derive_agent_key(master: &Key, agent_pid: u32) -> Key {
    let mut okm = [0u8; KEY_LEN];
    hkdf(
        master.as_bytes(),
        &[LABEL_AGENT, &agent_pid.to_le_bytes()],
        &mut okm,
    );
    let key = Key::from_bytes(okm);
    zeroize::Zeroize::zeroize(&mut okm);
    key
}

/// `iv_random = HKDF(session_salt, "varta-iv-prefix-v1\0" || u32le(prefix_index))`, 8 bytes.
pub fn derive_iv_prefix(salt: &[u8; SALT_LEN], prefix_index: u32) -> [u8; IV_RANDOM_LEN] {
    let mut okm = [0u8; IV_RANDOM_LEN];
    hkdf(
        salt,
        &[LABEL_IV_PREFIX, &prefix_index.to_le_bytes()],
        &mut okm,
    );
    okm
}

/// Crash-frame prefix: `HKDF(fork_salt, "varta-panic-iv-v1\0" || u32le(pid) ||
/// u64le(timestamp) || u32le(iv_counter))`, 8 bytes.
pub fn derive_panic_iv_prefix(
    fork_salt: &[u8; SALT_LEN],
    pid: u32,
    timestamp: u64,
    iv_counter: u32,
) -> [u8; IV_RANDOM_LEN] {
    let mut okm = [0u8; IV_RANDOM_LEN];
    hkdf(
        fork_salt,
        &[
            LABEL_PANIC_IV,
            &pid.to_le_bytes(),
            &timestamp.to_le_bytes(),
            &iv_counter.to_le_bytes(),
        ],
        &mut okm,
    );
    okm
}

/// Reserved (never used on the wire): `HKDF(agent_key, "varta-epoch-v1\0" || u64le(epoch))`, 32 bytes.
pub fn derive_epoch_key(agent_key: &Key, epoch: u64) -> Key {
    let mut okm = [0u8; KEY_LEN];
    hkdf(
        agent_key.as_bytes(),
        &[LABEL_EPOCH, &epoch.to_le_bytes()],
        &mut okm,
    );
    let key = Key::from_bytes(okm);
    zeroize::Zeroize::zeroize(&mut okm);
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_lengths_match_the_info_offsets() {
        // docs/protocol.md#key-derivation: integers start at 15, 19, 18, 15.
        assert_eq!(LABEL_AGENT.len(), 15);
        assert_eq!(LABEL_IV_PREFIX.len(), 19);
        assert_eq!(LABEL_PANIC_IV.len(), 18);
        assert_eq!(LABEL_EPOCH.len(), 15);
    }
}
