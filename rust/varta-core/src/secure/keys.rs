//! 32-byte keys, their hex encoding and the secret-file rules (`docs/protocol.md#key-files`,
//! `docs/agent.md#keys`).
//!
//! Key material lives only in [`Key`] (zeroized on drop, never printed) and in
//! `Zeroizing` scratch buffers while a file is being parsed.

use core::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Key length in bytes (ChaCha20-Poly1305 key, HKDF output for agent keys).
pub const KEY_LEN: usize = 32;
/// Hex characters in an encoded key.
pub const KEY_HEX_LEN: usize = 2 * KEY_LEN;
/// varta decision (`docs/protocol.md#secure-receiver`): at most 8 shared keys (primary + accepted).
pub const MAX_SHARED_KEYS: usize = 8;
/// Key files larger than this are refused (a key file is a few lines).
pub const MAX_KEY_FILE_LEN: usize = 64 * 1024;

/// A 32-byte symmetric key: a shared key, a master key or a derived agent key.
///
/// Zeroized on drop; `Debug` never shows the bytes. There is deliberately no
/// `PartialEq` (comparisons of secrets belong in constant-time code) and no
/// `Display`/hex export: the only way out is [`Key::as_bytes`], for the crypto
/// calls in this crate and for tests.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Key([u8; KEY_LEN]);

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(<redacted>)")
    }
}

/// Why bytes or text are not a key. Messages never echo key material.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyError {
    /// Trimmed text is not exactly 64 characters long (`found` = its length in bytes).
    InvalidLength { found: usize },
    /// A character that is not `0-9a-fA-F` at `position` (0-based, in the trimmed text).
    InvalidCharacter { position: usize },
    /// Raw key bytes that are not exactly 32 bytes long.
    InvalidByteLength { found: usize },
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::InvalidLength { found } => write!(
                f,
                "invalid key length: expected {KEY_HEX_LEN} hex characters, got {found}"
            ),
            KeyError::InvalidCharacter { position } => write!(
                f,
                "invalid character in key at position {position}: expected 0-9, a-f or A-F"
            ),
            KeyError::InvalidByteLength { found } => {
                write!(
                    f,
                    "invalid key length: expected {KEY_LEN} bytes, got {found}"
                )
            }
        }
    }
}

impl std::error::Error for KeyError {}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl Key {
    pub const fn from_bytes(bytes: [u8; KEY_LEN]) -> Key {
        Key(bytes)
    }

    pub fn from_slice(bytes: &[u8]) -> Result<Key, KeyError> {
        let arr: [u8; KEY_LEN] = bytes
            .try_into()
            .map_err(|_| KeyError::InvalidByteLength { found: bytes.len() })?;
        Ok(Key(arr))
    }

    /// Exactly 64 hex characters (either case, no `0x`) after trimming ASCII
    /// whitespace.
    pub fn from_hex(text: &str) -> Result<Key, KeyError> {
        Key::from_hex_bytes(text.as_bytes())
    }

    /// [`Key::from_hex`] over raw bytes (file content need not be UTF-8).
    pub fn from_hex_bytes(text: &[u8]) -> Result<Key, KeyError> {
        let t = text.trim_ascii();
        if t.len() != KEY_HEX_LEN {
            return Err(KeyError::InvalidLength { found: t.len() });
        }
        let mut out = Key([0u8; KEY_LEN]);
        for (i, pair) in t.chunks_exact(2).enumerate() {
            let hi = hex_val(pair[0]).ok_or(KeyError::InvalidCharacter { position: 2 * i })?;
            let lo = hex_val(pair[1]).ok_or(KeyError::InvalidCharacter {
                position: 2 * i + 1,
            })?;
            out.0[i] = (hi << 4) | lo;
        }
        Ok(out)
    }

    /// A fresh random key from OS entropy (`getrandom(2)`).
    pub fn generate() -> io::Result<Key> {
        let mut k = Key([0u8; KEY_LEN]);
        super::os_entropy(&mut k.0)?;
        Ok(k)
    }

    /// The key bytes, for the crypto calls. Do not copy them anywhere that is
    /// not zeroized.
    pub const fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Sender key file (SDK `Key.from_file`) and master key file: the whole
    /// file, trimmed, is one key. With `check_permissions` the secret-file
    /// rules apply (see [`read_secret_file`]); without them the path is opened
    /// like any file (symlinks followed, no owner/mode checks).
    pub fn from_file(path: &Path, check_permissions: bool) -> Result<Key, KeyFileError> {
        let content = read_secret_file(path, check_permissions)?;
        Key::from_hex_bytes(&content)
            .map_err(|e| KeyFileError::new(path, None, KeyFileErrorKind::Key(e)))
    }

    /// Lower-case hex, in a buffer that is zeroized when dropped.
    fn to_hex_line(&self) -> Zeroizing<[u8; KEY_HEX_LEN + 1]> {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = Zeroizing::new([0u8; KEY_HEX_LEN + 1]);
        for (i, b) in self.0.iter().enumerate() {
            out[2 * i] = DIGITS[usize::from(b >> 4)];
            out[2 * i + 1] = DIGITS[usize::from(b & 0x0f)];
        }
        out[KEY_HEX_LEN] = b'\n';
        out
    }
}

/// What went wrong with a key file.
#[derive(Debug)]
pub enum KeyFileErrorKind {
    /// The file could not be opened or read (missing, no access, …).
    Io(io::Error),
    /// The path's last component is a symlink (`O_NOFOLLOW` refused it).
    Symlink,
    /// Not a regular file (directory, FIFO, device, socket).
    NotRegular,
    /// Owned by another uid than the process's effective uid.
    WrongOwner { owner: u32, expected: u32 },
    /// Group or other permission bits set (`mode & 0o077 != 0`).
    InsecureMode { mode: u32 },
    /// Larger than [`MAX_KEY_FILE_LEN`].
    TooLarge,
    /// A line (or the whole file) is not a key.
    Key(KeyError),
    /// No key line at all.
    NoKey,
    /// `--key-file` must hold exactly one key.
    MultipleKeys { found: usize },
    /// Loading this file would exceed [`MAX_SHARED_KEYS`].
    TooManyKeys { max: usize },
}

/// A key file error with the path (and line, for line-based files) it refers to.
#[derive(Debug)]
pub struct KeyFileError {
    pub path: PathBuf,
    /// 1-based line number for content errors in line-based files.
    pub line: Option<usize>,
    pub kind: KeyFileErrorKind,
}

impl KeyFileError {
    fn new(path: &Path, line: Option<usize>, kind: KeyFileErrorKind) -> KeyFileError {
        KeyFileError {
            path: path.to_path_buf(),
            line,
            kind,
        }
    }

    /// A violation of the secret-file rules (symlink, not regular, owner,
    /// mode): Python's `PermissionError`.
    pub fn is_permission_error(&self) -> bool {
        matches!(
            self.kind,
            KeyFileErrorKind::Symlink
                | KeyFileErrorKind::NotRegular
                | KeyFileErrorKind::WrongOwner { .. }
                | KeyFileErrorKind::InsecureMode { .. }
        )
    }

    /// The OS error, if the file could not be opened or read.
    pub fn io_error(&self) -> Option<&io::Error> {
        match &self.kind {
            KeyFileErrorKind::Io(e) => Some(e),
            _ => None,
        }
    }

    /// The message without the path prefix (for exceptions carrying the
    /// filename separately).
    pub fn reason(&self) -> String {
        let at = match self.line {
            Some(n) => format!("line {n}: "),
            None => String::new(),
        };
        let why = match &self.kind {
            KeyFileErrorKind::Io(e) => e.to_string(),
            KeyFileErrorKind::Symlink => "must not be a symlink".to_string(),
            KeyFileErrorKind::NotRegular => "must be a regular file".to_string(),
            KeyFileErrorKind::WrongOwner { owner, expected } => {
                format!("owned by uid {owner}, expected uid {expected}")
            }
            KeyFileErrorKind::InsecureMode { mode } => format!(
                "insecure permissions {mode:04o}: group/other bits set (must be 0600 or stricter)"
            ),
            KeyFileErrorKind::TooLarge => {
                format!("larger than {MAX_KEY_FILE_LEN} bytes; not a key file")
            }
            KeyFileErrorKind::Key(e) => e.to_string(),
            KeyFileErrorKind::NoKey => "no key found (only blank or # lines)".to_string(),
            KeyFileErrorKind::MultipleKeys { found } => {
                format!("expected exactly one key, found {found}")
            }
            KeyFileErrorKind::TooManyKeys { max } => {
                format!("too many shared keys: at most {max} (primary + accepted) may be loaded")
            }
        };
        format!("{at}{why}")
    }
}

impl fmt::Display for KeyFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "key file {}: {}", self.path.display(), self.reason())
    }
}

impl std::error::Error for KeyFileError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            KeyFileErrorKind::Io(e) => Some(e),
            KeyFileErrorKind::Key(e) => Some(e),
            _ => None,
        }
    }
}

/// Open `path` for reading. With `check`: `O_RDONLY|O_NOFOLLOW` (a symlink is
/// refused atomically at open), then `fstat` on that same descriptor: regular
/// file, owner == effective uid, `mode & 0o077 == 0`. `O_NONBLOCK` keeps a
/// FIFO planted at the path from blocking the open; it is rejected as not
/// regular right after.
fn open_secret(path: &Path, check: bool) -> Result<File, KeyFileError> {
    let err = |kind| KeyFileError::new(path, None, kind);
    let mut opts = OpenOptions::new();
    opts.read(true);
    if check {
        opts.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
    }
    let file = opts.open(path).map_err(|e| {
        if check && e.raw_os_error() == Some(libc::ELOOP) {
            err(KeyFileErrorKind::Symlink)
        } else {
            err(KeyFileErrorKind::Io(e))
        }
    })?;
    if check {
        let meta = file.metadata().map_err(|e| err(KeyFileErrorKind::Io(e)))?;
        if !meta.file_type().is_file() {
            return Err(err(KeyFileErrorKind::NotRegular));
        }
        let expected = nix::unistd::geteuid().as_raw();
        if meta.uid() != expected {
            return Err(err(KeyFileErrorKind::WrongOwner {
                owner: meta.uid(),
                expected,
            }));
        }
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(err(KeyFileErrorKind::InsecureMode { mode }));
        }
    }
    Ok(file)
}

/// Read a secret file into a buffer that is zeroized on drop. With `check`:
/// `O_RDONLY|O_NOFOLLOW` (symlink → "must not be a symlink"), then `fstat` on
/// that descriptor: regular file, owner == effective uid, `mode & 0o077 == 0`. The content is read from the descriptor that was
/// checked, never by reopening the path.
pub fn read_secret_file(path: &Path, check: bool) -> Result<Zeroizing<Vec<u8>>, KeyFileError> {
    let mut file = open_secret(path, check)?;
    // Fixed-size buffer: a growing Vec would leave copies of the secret in
    // freed memory.
    let mut buf = Zeroizing::new(vec![0u8; MAX_KEY_FILE_LEN + 1]);
    let mut n = 0;
    loop {
        match file.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(r) => {
                n += r;
                if n > MAX_KEY_FILE_LEN {
                    return Err(KeyFileError::new(path, None, KeyFileErrorKind::TooLarge));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(KeyFileError::new(path, None, KeyFileErrorKind::Io(e))),
        }
    }
    buf.truncate(n);
    Ok(buf)
}

/// Parse the observer's line-based format: trim each line, skip blank lines
/// and lines starting with `#`, every other line is one key. On error returns
/// the 1-based line number and the problem.
pub fn parse_key_lines(content: &[u8]) -> Result<Vec<Key>, (usize, KeyError)> {
    let mut keys = Vec::new();
    for (i, line) in content.split(|&b| b == b'\n').enumerate() {
        let t = line.trim_ascii();
        if t.is_empty() || t[0] == b'#' {
            continue;
        }
        keys.push(Key::from_hex_bytes(t).map_err(|e| (i + 1, e))?);
    }
    Ok(keys)
}

fn load_lines(path: &Path) -> Result<Vec<Key>, KeyFileError> {
    let content = read_secret_file(path, true)?;
    let keys = parse_key_lines(&content)
        .map_err(|(line, e)| KeyFileError::new(path, Some(line), KeyFileErrorKind::Key(e)))?;
    if keys.is_empty() {
        return Err(KeyFileError::new(path, None, KeyFileErrorKind::NoKey));
    }
    Ok(keys)
}

/// Observer `--key-file`: line-based, exactly one key, secret-file checks always on.
pub fn load_key_file(path: &Path) -> Result<Key, KeyFileError> {
    let mut keys = load_lines(path)?;
    if keys.len() != 1 {
        let found = keys.len();
        return Err(KeyFileError::new(
            path,
            None,
            KeyFileErrorKind::MultipleKeys { found },
        ));
    }
    Ok(keys.remove(0))
}

/// Observer `--accepted-key-file`: line-based, one or more keys, checks always on.
pub fn load_accepted_key_file(path: &Path) -> Result<Vec<Key>, KeyFileError> {
    load_lines(path)
}

/// Observer `--master-key-file`: the whole file, trimmed, is one key; checks always on.
pub fn load_master_key_file(path: &Path) -> Result<Key, KeyFileError> {
    Key::from_file(path, true)
}

/// The observer's shared key list: the `--key-file` key first (if any), then
/// every accepted file's keys in order. More than [`MAX_SHARED_KEYS`] in
/// total is an error naming the file that went over.
pub fn load_shared_keys(
    key_file: Option<&Path>,
    accepted_files: &[&Path],
) -> Result<Vec<Key>, KeyFileError> {
    let mut keys = Vec::new();
    if let Some(p) = key_file {
        keys.push(load_key_file(p)?);
    }
    for p in accepted_files {
        keys.extend(load_accepted_key_file(p)?);
        if keys.len() > MAX_SHARED_KEYS {
            return Err(KeyFileError::new(
                p,
                None,
                KeyFileErrorKind::TooManyKeys {
                    max: MAX_SHARED_KEYS,
                },
            ));
        }
    }
    Ok(keys)
}

/// `keygen`: write a fresh random key to a new file as 64 lower-case hex
/// characters and a newline, mode 0600. The file is created with
/// `O_CREAT|O_EXCL|O_NOFOLLOW` (an existing file or symlink is never
/// overwritten or followed), the mode is set exactly with `fchmod` (whatever
/// the umask), and the data is fsynced. On a write failure the partial file
/// is removed.
pub fn write_new_key_file(path: &Path) -> io::Result<()> {
    let key = Key::generate()?;
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    let written = (|| {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        file.write_all(&key.to_hex_line()[..])?;
        file.sync_all()
    })();
    if let Err(e) = written {
        drop(file);
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_both_cases() {
        let lower = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
        let k = Key::from_hex(&format!("  {}\n", lower.to_uppercase())).unwrap();
        assert_eq!(k.as_bytes()[31], 0x1f);
        assert_eq!(&k.to_hex_line()[..64], lower.as_bytes());
        assert_eq!(k.to_hex_line()[64], b'\n');
    }

    #[test]
    fn hex_errors() {
        assert_eq!(
            Key::from_hex("abc").unwrap_err(),
            KeyError::InvalidLength { found: 3 }
        );
        let with_0x = format!("0x{}", "ab".repeat(31));
        assert_eq!(
            Key::from_hex(&with_0x).unwrap_err(),
            KeyError::InvalidCharacter { position: 1 }
        );
        let bad = format!("{}g", "a".repeat(63));
        assert_eq!(
            Key::from_hex(&bad).unwrap_err(),
            KeyError::InvalidCharacter { position: 63 }
        );
        assert_eq!(
            Key::from_slice(&[0u8; 31]).unwrap_err(),
            KeyError::InvalidByteLength { found: 31 }
        );
    }

    #[test]
    fn debug_is_redacted() {
        let k = Key::from_bytes([0xab; 32]);
        let s = format!("{k:?}");
        assert_eq!(s, "Key(<redacted>)");
    }

    #[test]
    fn line_parsing() {
        let a = "aa".repeat(32);
        let b = "BB".repeat(32);
        let text = format!("# rotation\n\n  {a}  \r\n#old\n{b}\n");
        let keys = parse_key_lines(text.as_bytes()).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].as_bytes(), &[0xaa; 32]);
        assert_eq!(keys[1].as_bytes(), &[0xbb; 32]);
        let bad = format!("{a}\nnot a key\n");
        assert_eq!(
            parse_key_lines(bad.as_bytes()).unwrap_err(),
            (2, KeyError::InvalidLength { found: 9 })
        );
    }
}
