//! Key files (`docs/protocol.md#key-files`): secret-file rules, sender whole-file format,
//! the observer's line-based variants, the 8-key cap, keygen.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use varta_core::secure::keys::{
    load_accepted_key_file, load_key_file, load_master_key_file, load_shared_keys,
    write_new_key_file, KeyFileErrorKind,
};
use varta_core::secure::{Key, KeyError, MAX_SHARED_KEYS};

/// A fresh private directory per test (removed on drop).
struct Dir(PathBuf);

impl Dir {
    fn new() -> Dir {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "varta-keys-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir(&p).unwrap();
        Dir(p)
    }

    /// Write `content` to `name` with `mode` and return the path.
    fn file(&self, name: &str, content: &str, mode: u32) -> PathBuf {
        let p = self.0.join(name);
        fs::write(&p, content).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        p
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

const HEX_A: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

fn hex_n(n: u8) -> String {
    format!("{n:02x}").repeat(32)
}

fn kind(r: Result<Key, varta_core::secure::KeyFileError>) -> KeyFileErrorKind {
    r.expect_err("must fail").kind
}

#[test]
fn sender_file_whole_content_trimmed() {
    let d = Dir::new();
    let p = d.file("k", &format!("\n  {}\t\n", HEX_A.to_uppercase()), 0o600);
    let k = Key::from_file(&p, true).unwrap();
    assert_eq!(k.as_bytes()[..4], [0, 1, 2, 3]);
    // Stricter than 0600 is fine.
    fs::set_permissions(&p, fs::Permissions::from_mode(0o400)).unwrap();
    assert!(Key::from_file(&p, true).is_ok());
    assert!(load_master_key_file(&p).is_ok());
}

#[test]
fn content_errors_are_key_errors() {
    let d = Dir::new();
    let short = d.file("short", "abcd\n", 0o600);
    assert!(matches!(
        kind(Key::from_file(&short, true)),
        KeyFileErrorKind::Key(KeyError::InvalidLength { found: 4 })
    ));
    let bad = d.file("bad", &format!("{}zz", &HEX_A[..62]), 0o600);
    let e = Key::from_file(&bad, true).unwrap_err();
    assert!(!e.is_permission_error());
    assert!(matches!(
        e.kind,
        KeyFileErrorKind::Key(KeyError::InvalidCharacter { position: 62 })
    ));
    // Messages never echo key material.
    assert!(!e.to_string().contains(&HEX_A[..62]));
    // The sender format is not line-based: a comment is content.
    let commented = d.file("c", &format!("# key\n{HEX_A}\n"), 0o600);
    assert!(matches!(
        kind(Key::from_file(&commented, true)),
        KeyFileErrorKind::Key(KeyError::InvalidLength { .. })
    ));
}

#[test]
fn symlink_is_refused_with_checks_and_followed_without() {
    let d = Dir::new();
    let target = d.file("real", HEX_A, 0o600);
    let link = d.0.join("link");
    symlink(&target, &link).unwrap();
    let e = Key::from_file(&link, true).unwrap_err();
    assert!(matches!(e.kind, KeyFileErrorKind::Symlink));
    assert!(e.is_permission_error());
    assert!(e.to_string().contains("must not be a symlink"), "{e}");
    assert!(
        Key::from_file(&link, false).is_ok(),
        "opt-out follows symlinks"
    );
    assert!(matches!(
        load_key_file(&link).unwrap_err().kind,
        KeyFileErrorKind::Symlink
    ));
}

#[test]
fn group_or_other_bits_are_refused() {
    let d = Dir::new();
    for mode in [0o640, 0o604, 0o660, 0o644, 0o610, 0o601, 0o700 | 0o020] {
        let p = d.file(&format!("m{mode:o}"), HEX_A, mode);
        let e = Key::from_file(&p, true).unwrap_err();
        assert!(
            matches!(e.kind, KeyFileErrorKind::InsecureMode { mode: m } if m == mode),
            "{mode:o}: {e}"
        );
        assert!(e.is_permission_error());
        assert!(
            Key::from_file(&p, false).is_ok(),
            "opt-out ignores the mode"
        );
    }
}

#[test]
fn non_regular_files_are_refused() {
    let d = Dir::new();
    let e = Key::from_file(&d.0, true).unwrap_err();
    assert!(matches!(e.kind, KeyFileErrorKind::NotRegular), "{e}");
    // A FIFO is refused without blocking in open (O_NONBLOCK).
    let fifo = d.0.join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let e = Key::from_file(&fifo, true).unwrap_err();
    assert!(matches!(e.kind, KeyFileErrorKind::NotRegular), "{e}");
}

#[test]
fn foreign_owner_is_refused() {
    let d = Dir::new();
    let euid = nix::unistd::geteuid();
    let p: PathBuf = if euid.is_root() {
        // As root we can hand the file to another uid.
        let p = d.file("foreign", HEX_A, 0o600);
        nix::unistd::chown(&p, Some(nix::unistd::Uid::from_raw(4242)), None).unwrap();
        p
    } else {
        // As a normal user, a root-owned file is foreign.
        PathBuf::from("/etc/hostname")
    };
    let e = Key::from_file(&p, true).unwrap_err();
    assert!(
        matches!(e.kind, KeyFileErrorKind::WrongOwner { expected, .. } if expected == euid.as_raw()),
        "{e}"
    );
    assert!(e.is_permission_error());
}

#[test]
fn missing_file_is_an_io_error() {
    let d = Dir::new();
    let e = Key::from_file(&d.0.join("nope"), true).unwrap_err();
    assert_eq!(
        e.io_error().map(std::io::Error::kind),
        Some(std::io::ErrorKind::NotFound)
    );
    assert!(!e.is_permission_error());
}

#[test]
fn oversized_file_is_refused() {
    let d = Dir::new();
    let p = d.file("big", &"#".repeat(70_000), 0o600);
    assert!(matches!(
        load_accepted_key_file(&p).unwrap_err().kind,
        KeyFileErrorKind::TooLarge
    ));
}

#[test]
fn observer_line_based_files() {
    let d = Dir::new();
    let one = d.file(
        "one",
        &format!("# primary key, rotated 2026-01\n\n   {}  \n\n", hex_n(1)),
        0o600,
    );
    assert_eq!(load_key_file(&one).unwrap().as_bytes(), &[1; 32]);

    let two = d.file("two", &format!("{}\n#old\n{}\n", hex_n(2), hex_n(3)), 0o600);
    let e = load_key_file(&two).unwrap_err();
    assert!(matches!(
        e.kind,
        KeyFileErrorKind::MultipleKeys { found: 2 }
    ));
    let acc = load_accepted_key_file(&two).unwrap();
    assert_eq!(acc.len(), 2);
    assert_eq!(acc[1].as_bytes(), &[3; 32]);

    let empty = d.file("empty", "# nothing\n\n", 0o600);
    assert!(matches!(
        load_key_file(&empty).unwrap_err().kind,
        KeyFileErrorKind::NoKey
    ));
    assert!(matches!(
        load_accepted_key_file(&empty).unwrap_err().kind,
        KeyFileErrorKind::NoKey
    ));

    let bad = d.file("bad", &format!("{}\n{}x\n", hex_n(4), hex_n(5)), 0o600);
    let e = load_accepted_key_file(&bad).unwrap_err();
    assert_eq!(e.line, Some(2));
    assert!(e.to_string().contains("line 2"), "{e}");

    // The observer's loaders always check permissions.
    let open = d.file("open", &hex_n(6), 0o644);
    assert!(load_key_file(&open).unwrap_err().is_permission_error());
    assert!(load_master_key_file(&open)
        .unwrap_err()
        .is_permission_error());
    // Master key file is whole-file: no comments.
    assert!(load_master_key_file(&one).is_err());
}

#[test]
fn at_most_eight_shared_keys() {
    let d = Dir::new();
    let primary = d.file("primary", &hex_n(0), 0o600);
    let seven: String = (1..=7).map(|i| hex_n(i) + "\n").collect();
    let acc7 = d.file("acc7", &seven, 0o600);
    let acc1 = d.file("acc1", &hex_n(9), 0o600);
    let keys = load_shared_keys(Some(&primary), &[acc7.as_path()]).unwrap();
    assert_eq!(keys.len(), MAX_SHARED_KEYS);
    assert_eq!(keys[0].as_bytes(), &[0; 32], "primary first");
    assert_eq!(keys[7].as_bytes(), &[7; 32]);
    let e = load_shared_keys(Some(&primary), &[acc7.as_path(), acc1.as_path()]).unwrap_err();
    assert!(matches!(e.kind, KeyFileErrorKind::TooManyKeys { max: 8 }));
    assert_eq!(e.path, acc1);
    // Accepted keys alone (no primary) are allowed by the loader.
    assert_eq!(load_shared_keys(None, &[acc1.as_path()]).unwrap().len(), 1);
}

#[test]
fn keygen_writes_a_private_key_file_and_never_overwrites() {
    let d = Dir::new();
    let p = d.0.join("new.key");
    write_new_key_file(&p).unwrap();
    let meta = fs::metadata(&p).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
    let text = fs::read_to_string(&p).unwrap();
    assert_eq!(text.len(), 65);
    assert!(text.ends_with('\n'));
    assert!(text[..64]
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    // The file passes the strict checks of every loader.
    assert!(Key::from_file(&p, true).is_ok());
    assert!(load_key_file(&p).is_ok());
    // Refuses to overwrite, leaving the original intact.
    let e = write_new_key_file(&p).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists);
    assert_eq!(fs::read_to_string(&p).unwrap(), text);
    // Never follows a (dangling) symlink to create a file elsewhere.
    let elsewhere = d.0.join("elsewhere");
    let link = d.0.join("link.key");
    symlink(&elsewhere, &link).unwrap();
    assert!(write_new_key_file(&link).is_err());
    assert!(!Path::new(&elsewhere).exists());
    // Two keys are different.
    let q = d.0.join("second.key");
    write_new_key_file(&q).unwrap();
    assert_ne!(fs::read_to_string(&q).unwrap(), text);
}
