//! Unit tests of the hang forensics.

use super::*;
use std::fs;

#[test]
fn syscall_lines() {
    assert_eq!(parse_syscall("running\n").as_deref(), Some("running"));
    assert_eq!(parse_syscall("-1 0x7ffd 0x7f00\n").as_deref(), Some("user"));
    #[cfg(target_arch = "x86_64")]
    assert_eq!(
        parse_syscall("202 0x7f 0x80 0x0 0x0 0x0 0x0 0x7ffd 0x7f00").as_deref(),
        Some("futex")
    );
    assert_eq!(parse_syscall("9999 0x1").as_deref(), Some("syscall 9999"));
    assert_eq!(parse_syscall(""), None);
    assert_eq!(parse_syscall("garbage"), None);
}

#[test]
fn stack_and_wchan() {
    let text = "[<0>] futex_wait_queue+0x60/0xa0\n[<0>] do_syscall_64+0x5d/0x170\n\n";
    assert_eq!(
        parse_stack(text),
        vec!["futex_wait_queue+0x60/0xa0", "do_syscall_64+0x5d/0x170"]
    );
    assert_eq!(
        parse_wchan("futex_wait_queue"),
        Some("futex_wait_queue".into())
    );
    assert_eq!(parse_wchan("0"), None);
    assert_eq!(parse_wchan(""), None);
}

#[test]
fn headers() {
    let rt = libc::SIGRTMIN() + 6;
    let line = format!("varta-forensics v1 pid=42 signal={rt} tid=43 request_fd=7 extra=1\n");
    assert_eq!(
        parse_header(line.as_bytes()),
        Some(Header {
            pid: 42,
            signal: rt,
            tid: Some(43),
            request_fd: Some(7)
        })
    );
    // Only real-time signals, a pid and a signal are required.
    let kill = format!("varta-forensics v1 pid=42 signal={}", libc::SIGKILL);
    assert_eq!(parse_header(kill.as_bytes()), None);
    assert_eq!(parse_header(b"varta-forensics v1 signal=40"), None);
    assert_eq!(parse_header(b"varta-forensics v2 pid=1 signal=40"), None);
    assert_eq!(parse_header(b"varta-forensics v1 pid=x signal=40"), None);
}

#[test]
fn own_threads_are_read() {
    let me = std::process::id();
    let t = read_threads(me).unwrap();
    assert_eq!(t[0].tid, me);
    assert!(t[0].state.is_some());
    assert!(!t[0].comm.is_empty());
}

#[test]
fn helper_answer_splits() {
    let (n, t) =
        split_helper(b"thread 0x01 native_id=5 name='M'\nloop 0 (L): 1 tasks\nStack for x\n");
    assert_eq!(n, b"thread 0x01 native_id=5 name='M'\n");
    assert_eq!(t, b"loop 0 (L): 1 tasks\nStack for x\n");
}

#[test]
fn json_strings_escape() {
    assert_eq!(json_str("a\"b\\c\n\u{1}"), "\"a\\\"b\\\\c\\n\\u0001\"");
}

#[test]
fn render_respects_the_size_bound() {
    let info = StallInfo {
        pid: 7,
        last_nonce: 1,
        last_ns: 0,
        origin: super::super::tracker::BeatOrigin::KernelAttested,
        pid_ns_inode: None,
        generation: Some(1),
        observer_ns: 5,
        verdict: Verdict::Hung,
        cause: None,
        comm: None,
        forensics: None,
        forensics_sha256: None,
        peer: None,
        cmdline: None,
        unit: None,
        container: None,
    };
    let mut f = Found {
        method: "sdk",
        traceback: Some(vec![b'x'; 10_000]),
        threads: vec![ThreadState::default(); 100],
        ..Found::default()
    };
    let doc = render(&info, &mut f, 1, 4096);
    assert!(doc.len() <= 4096, "{}", doc.len());
    assert!(f.truncated);
    assert!(doc.contains("\"truncated\": true"));
    let mut g = Found {
        method: "proc",
        ..Found::default()
    };
    assert!(!render(&info, &mut g, 1, 4096).contains("\"truncated\": true"));
}

#[test]
fn files_are_private_and_pruned() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("varta-forensics-test-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    prepare_dir(&dir).unwrap();
    for i in 0..5 {
        let (p, sha) = write_capture(&dir, &format!("hang-1-{i}.json"), b"{}").unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            sha,
            "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
    }
    fs::write(dir.join("other.txt"), b"x").unwrap();
    assert_eq!(prune(&dir, 2, None), 3);
    let left = fs::read_dir(&dir).unwrap().count();
    assert_eq!(left, 3); // two captures and the unrelated file
    fs::remove_dir_all(&dir).unwrap();
}
