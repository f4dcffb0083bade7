//! Wire layouts of the secure frames and the seal/open primitives
//! (`docs/protocol.md#secure-transport`). IETF ChaCha20-Poly1305 (RFC 8439), 12-byte nonce =
//! `iv_random(8) || u32le(iv_counter)` = the 12 wire bytes after the optional
//! pid, tag after the ciphertext.
//!
//! Shared (60 B): `iv_random[8] | iv_counter[4] | ct[32] | tag[16]`, AAD empty.
//! Master (64 B): `pid[4] | iv_random[8] | iv_counter[4] | ct[32] | tag[16]`,
//! AAD = wire[0..4], key = `derive_agent_key(M, pid)`.
//!
//! Everything works in place on caller-provided fixed-size buffers: no
//! allocation, no entropy, async-signal-safe (pure computation).

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Nonce, Tag};

use super::kdf::derive_panic_iv_prefix;
use super::keys::Key;
use crate::frame::FRAME_LEN;

/// Session / fork salt length (HKDF IKM for IV prefixes).
pub const SALT_LEN: usize = 16;
/// `iv_random` (IV prefix) length.
pub const IV_RANDOM_LEN: usize = 8;
/// AEAD nonce length (`iv_random || u32le(counter)`).
pub const NONCE_LEN: usize = 12;
/// Poly1305 tag length.
pub const TAG_LEN: usize = 16;
/// Cleartext pid prefix of a master-key frame.
pub const PID_LEN: usize = 4;
/// Shared-key secure frame.
pub const SHARED_WIRE_LEN: usize = NONCE_LEN + FRAME_LEN + TAG_LEN; // 60
/// Master-key secure frame.
pub const MASTER_WIRE_LEN: usize = PID_LEN + SHARED_WIRE_LEN; // 64
/// Largest secure frame; receivers read into a buffer longer than this.
pub const MAX_WIRE_LEN: usize = MASTER_WIRE_LEN;

const _: () = assert!(SHARED_WIRE_LEN == 60 && MASTER_WIRE_LEN == 64);

pub(crate) fn cipher(key: &Key) -> ChaCha20Poly1305 {
    ChaCha20Poly1305::new(key.as_bytes().into())
}

/// Encrypt `body[NONCE_LEN..NONCE_LEN+32]` in place, nonce = `body[..12]`,
/// tag into `body[44..60]`. `body` is the 60-byte shared layout (the master
/// layout minus its pid prefix).
fn seal_body(c: &ChaCha20Poly1305, aad: &[u8], body: &mut [u8; SHARED_WIRE_LEN]) {
    let (nonce, rest) = body.split_at_mut(NONCE_LEN);
    let (ct, tag_out) = rest.split_at_mut(FRAME_LEN);
    match c.encrypt_in_place_detached(Nonce::from_slice(nonce), aad, ct) {
        Ok(tag) => tag_out.copy_from_slice(&tag),
        // Only possible for messages over 2^38 bytes. Never leave plaintext
        // behind: the frame becomes unopenable zeros.
        Err(_) => {
            ct.fill(0);
            tag_out.fill(0);
        }
    }
}

/// Decrypt the 60-byte `body` into `out`. Returns whether the tag verified;
/// `out` holds the plaintext only then (it is zeroed on failure).
fn open_body(
    c: &ChaCha20Poly1305,
    aad: &[u8],
    body: &[u8; SHARED_WIRE_LEN],
    out: &mut [u8; FRAME_LEN],
) -> bool {
    out.copy_from_slice(&body[NONCE_LEN..NONCE_LEN + FRAME_LEN]);
    let tag = Tag::from_slice(&body[NONCE_LEN + FRAME_LEN..]);
    let ok = c
        .decrypt_in_place_detached(Nonce::from_slice(&body[..NONCE_LEN]), aad, out, tag)
        .is_ok();
    if !ok {
        out.fill(0);
    }
    ok
}

fn write_nonce(body: &mut [u8; SHARED_WIRE_LEN], iv_random: &[u8; IV_RANDOM_LEN], counter: u32) {
    body[..IV_RANDOM_LEN].copy_from_slice(iv_random);
    body[IV_RANDOM_LEN..NONCE_LEN].copy_from_slice(&counter.to_le_bytes());
}

/// Seal a 32-byte frame into the 60-byte shared-key layout (AAD empty).
pub fn seal_shared(
    key: &Key,
    iv_random: &[u8; IV_RANDOM_LEN],
    iv_counter: u32,
    plaintext: &[u8; FRAME_LEN],
    out: &mut [u8; SHARED_WIRE_LEN],
) {
    seal_shared_with(&cipher(key), iv_random, iv_counter, plaintext, out);
}

pub(crate) fn seal_shared_with(
    c: &ChaCha20Poly1305,
    iv_random: &[u8; IV_RANDOM_LEN],
    iv_counter: u32,
    plaintext: &[u8; FRAME_LEN],
    out: &mut [u8; SHARED_WIRE_LEN],
) {
    write_nonce(out, iv_random, iv_counter);
    out[NONCE_LEN..NONCE_LEN + FRAME_LEN].copy_from_slice(plaintext);
    seal_body(c, &[], out);
}

fn split_master(
    wire: &mut [u8; MASTER_WIRE_LEN],
) -> (&mut [u8; PID_LEN], &mut [u8; SHARED_WIRE_LEN]) {
    let (pid, body) = wire.split_at_mut(PID_LEN);
    (
        pid.try_into().expect("4-byte split"),
        body.try_into().expect("60-byte split"),
    )
}

/// Seal a 32-byte frame into the 64-byte master-key layout with the already
/// derived `agent_key` (= `derive_agent_key(M, agent_pid)`): wire[0..4] =
/// u32le(agent_pid), which is also the whole AAD. The caller writes the same
/// pid into the plaintext (bytes 4..8); the receiver checks they match.
pub fn seal_master(
    agent_key: &Key,
    agent_pid: u32,
    iv_random: &[u8; IV_RANDOM_LEN],
    iv_counter: u32,
    plaintext: &[u8; FRAME_LEN],
    out: &mut [u8; MASTER_WIRE_LEN],
) {
    seal_master_with(
        &cipher(agent_key),
        agent_pid,
        iv_random,
        iv_counter,
        plaintext,
        out,
    );
}

pub(crate) fn seal_master_with(
    c: &ChaCha20Poly1305,
    agent_pid: u32,
    iv_random: &[u8; IV_RANDOM_LEN],
    iv_counter: u32,
    plaintext: &[u8; FRAME_LEN],
    out: &mut [u8; MASTER_WIRE_LEN],
) {
    let (pid, body) = split_master(out);
    *pid = agent_pid.to_le_bytes();
    write_nonce(body, iv_random, iv_counter);
    body[NONCE_LEN..NONCE_LEN + FRAME_LEN].copy_from_slice(plaintext);
    seal_body(c, &pid[..], body);
}

/// A secure crash frame (`docs/protocol.md#secure-crash-frames`): prefix =
/// `derive_panic_iv_prefix(fork_salt, pid, timestamp, counter)`, wire counter
/// = `counter`, sealed in the shared layout. `pid`/`timestamp` must be the
/// ones encoded in `plaintext`. Allocation-free and entropy-free.
pub fn seal_panic_frame(
    key: &Key,
    fork_salt: &[u8; super::seal::SALT_LEN],
    pid: u32,
    timestamp: u64,
    counter: u32,
    plaintext: &[u8; FRAME_LEN],
    out: &mut [u8; SHARED_WIRE_LEN],
) {
    let prefix = derive_panic_iv_prefix(fork_salt, pid, timestamp, counter);
    seal_shared(key, &prefix, counter, plaintext, out);
}

/// Open a 60-byte shared-key frame with one key. True (and `out` = the
/// plaintext) iff the tag verifies. Does not decode the plaintext.
pub fn open_shared(key: &Key, wire: &[u8; SHARED_WIRE_LEN], out: &mut [u8; FRAME_LEN]) -> bool {
    open_body(&cipher(key), &[], wire, out)
}

pub(crate) fn open_shared_with(
    c: &ChaCha20Poly1305,
    body: &[u8; SHARED_WIRE_LEN],
    out: &mut [u8; FRAME_LEN],
) -> bool {
    open_body(c, &[], body, out)
}

/// The wire pid of a master frame (u32 LE at 0..4).
pub fn master_wire_pid(wire: &[u8; MASTER_WIRE_LEN]) -> u32 {
    u32::from_le_bytes([wire[0], wire[1], wire[2], wire[3]])
}

/// The 60-byte body of a master frame (wire[4..64]), as the shared trials see it.
pub(crate) fn master_body(wire: &[u8; MASTER_WIRE_LEN]) -> &[u8; SHARED_WIRE_LEN] {
    wire[PID_LEN..].try_into().expect("60-byte body")
}

/// Open a 64-byte master frame with the agent key derived for its wire pid
/// (AAD = wire[0..4]) and require inner pid (plaintext 4..8) == wire pid. A
/// mismatch is a failed open (`out` zeroed), exactly like a bad tag.
pub fn open_master(
    agent_key: &Key,
    wire: &[u8; MASTER_WIRE_LEN],
    out: &mut [u8; FRAME_LEN],
) -> bool {
    let aad = &wire[..PID_LEN];
    if !open_body(&cipher(agent_key), aad, master_body(wire), out) {
        return false;
    }
    if out[4..8] != wire[..PID_LEN] {
        out.fill(0);
        return false;
    }
    true
}
