//! The `/proc` capture (`docs/finding-hangs.md`): every thread's state,
//! `wchan`, current syscall and kernel stack, and their parsers.

use super::super::procfs;
use super::MAX_THREADS;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// One thread as `/proc/<pid>/task/<tid>` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ThreadState {
    pub tid: u32,
    pub comm: String,
    pub state: Option<char>,
    pub wchan: Option<String>,
    /// The syscall's name (or number), `running`, or `user` (not in one).
    pub syscall: Option<String>,
    pub syscall_raw: Option<String>,
    /// Kernel stack frames (needs `CAP_SYS_ADMIN`); `None` when unreadable.
    pub stack: Option<Vec<String>>,
}

fn read_text(path: &Path, max: usize) -> Option<String> {
    use std::io::Read;
    let f = fs::File::open(path).ok()?;
    let mut buf = Vec::new();
    f.take(max as u64).read_to_end(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf).into_owned())
}

/// Names of the syscalls a hang usually sits in (x86_64 and aarch64
/// numbers); anything else is shown by number.
pub fn syscall_name(nr: i64) -> Option<&'static str> {
    #[cfg(target_arch = "x86_64")]
    const TABLE: &[(i64, &str)] = &[
        (0, "read"),
        (1, "write"),
        (7, "poll"),
        (23, "select"),
        (34, "pause"),
        (35, "nanosleep"),
        (43, "accept"),
        (45, "recvfrom"),
        (47, "recvmsg"),
        (61, "wait4"),
        (202, "futex"),
        (230, "clock_nanosleep"),
        (232, "epoll_wait"),
        (270, "pselect6"),
        (271, "ppoll"),
        (281, "epoll_pwait"),
        (288, "accept4"),
        (441, "epoll_pwait2"),
    ];
    #[cfg(target_arch = "aarch64")]
    const TABLE: &[(i64, &str)] = &[
        (22, "epoll_pwait"),
        (63, "read"),
        (64, "write"),
        (72, "pselect6"),
        (73, "ppoll"),
        (98, "futex"),
        (101, "nanosleep"),
        (115, "clock_nanosleep"),
        (202, "accept"),
        (207, "recvfrom"),
        (212, "recvmsg"),
        (242, "accept4"),
        (260, "wait4"),
        (441, "epoll_pwait2"),
    ];
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    const TABLE: &[(i64, &str)] = &[];
    TABLE.iter().find(|(n, _)| *n == nr).map(|(_, s)| *s)
}

/// `/proc/<pid>/task/<tid>/syscall`: `running`, `-1 sp pc` (not in a
/// syscall: `user`) or `nr arg… sp pc`; returns the name or number.
pub fn parse_syscall(text: &str) -> Option<String> {
    let first = text.split_whitespace().next()?;
    if first == "running" {
        return Some("running".to_owned());
    }
    let nr: i64 = first.parse().ok()?;
    if nr < 0 {
        return Some("user".to_owned());
    }
    Some(syscall_name(nr).map_or_else(|| format!("syscall {nr}"), str::to_owned))
}

/// `/proc/<pid>/task/<tid>/stack`: one `[<0>] symbol+0x…/0x…` per line;
/// returns the symbols with their offsets.
pub fn parse_stack(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            let l = match l.find("] ") {
                Some(i) if l.starts_with('[') => &l[i + 2..],
                _ => l,
            };
            (!l.is_empty()).then(|| l.to_owned())
        })
        .collect()
}

/// `/proc/<pid>/task/<tid>/wchan`: a symbol, or `0` when running.
pub fn parse_wchan(text: &str) -> Option<String> {
    let t = text.trim();
    (!t.is_empty() && t != "0").then(|| t.to_owned())
}

/// Every thread of `pid` (main thread first), at most [`MAX_THREADS`].
pub fn read_threads(pid: u32) -> io::Result<Vec<ThreadState>> {
    let base = PathBuf::from(format!("/proc/{pid}/task"));
    let mut tids: Vec<u32> = fs::read_dir(&base)?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    tids.sort_unstable();
    if let Some(i) = tids.iter().position(|&t| t == pid) {
        tids.remove(i);
        tids.insert(0, pid);
    }
    tids.truncate(MAX_THREADS);
    let mut out = Vec::with_capacity(tids.len());
    for tid in tids {
        let dir = base.join(tid.to_string());
        let stat = read_text(&dir.join("stat"), 1024);
        let state = stat
            .as_deref()
            .and_then(|s| procfs::parse_stat_state(s.as_bytes()))
            .map(|(c, _)| c as char);
        let syscall_raw = read_text(&dir.join("syscall"), 256).map(|s| s.trim().to_owned());
        out.push(ThreadState {
            tid,
            comm: read_text(&dir.join("comm"), 64)
                .map(|s| s.trim_end_matches('\n').to_owned())
                .unwrap_or_default(),
            state,
            wchan: read_text(&dir.join("wchan"), 256).and_then(|s| parse_wchan(&s)),
            syscall: syscall_raw.as_deref().and_then(parse_syscall),
            syscall_raw,
            stack: read_text(&dir.join("stack"), 8192).map(|s| parse_stack(&s)),
        });
    }
    Ok(out)
}
