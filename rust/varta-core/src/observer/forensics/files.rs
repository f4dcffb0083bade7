//! Capture files (`docs/finding-hangs.md`): the JSON rendering within the
//! size bound, the atomic private write with its SHA-256, the directory and
//! its pruning.

use super::super::tracker::StallInfo;
use super::capture::Found;
use super::threads::ThreadState;
use super::{FILE_PREFIX, FILE_SUFFIX};
use sha2::{Digest, Sha256};
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// A JSON string literal.
pub fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_opt(s: Option<&str>) -> String {
    s.map_or_else(|| "null".to_owned(), json_str)
}

fn thread_json(t: &ThreadState) -> String {
    let stack = match &t.stack {
        None => "null".to_owned(),
        Some(frames) => format!(
            "[{}]",
            frames
                .iter()
                .map(|f| json_str(f))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    format!(
        "{{\"tid\": {}, \"comm\": {}, \"state\": {}, \"wchan\": {}, \"syscall\": {}, \"syscall_raw\": {}, \"stack\": {}}}",
        t.tid,
        json_str(&t.comm),
        json_opt(t.state.map(|c| c.to_string()).as_deref()),
        json_opt(t.wchan.as_deref()),
        json_opt(t.syscall.as_deref()),
        json_opt(t.syscall_raw.as_deref()),
        stack,
    )
}

/// The capture as JSON, at most `max_bytes` (text and threads are cut and
/// `truncated` set when it would be larger).
pub fn render(info: &StallInfo, f: &mut Found, unix_ns: u64, max_bytes: usize) -> String {
    let lossy = |b: &Option<Vec<u8>>| {
        b.as_deref()
            .map(|b| String::from_utf8_lossy(b).into_owned())
    };
    let mut traceback = lossy(&f.traceback);
    let mut tasks = lossy(&f.tasks);
    let names = lossy(&f.thread_names);
    let mut threads: Vec<String> = f.threads.iter().map(thread_json).collect();
    loop {
        let doc = format!(
            concat!(
                "{{\n  \"format\": \"varta-forensics-capture/1\",\n",
                "  \"pid\": {},\n  \"comm\": {},\n  \"start_time\": {},\n",
                "  \"verdict\": {},\n  \"method\": {},\n",
                "  \"captured_unix_ns\": {},\n  \"silent_ns\": {},\n  \"capture_ns\": {},\n",
                "  \"sdk_signal\": {},\n  \"sdk_note\": {},\n  \"truncated\": {},\n",
                "  \"threads\": [{}],\n",
                "  \"python_traceback\": {},\n  \"python_threads\": {},\n",
                "  \"asyncio_tasks\": {}\n}}\n"
            ),
            info.pid,
            json_opt(info.comm.map(|c| c.to_string_lossy()).as_deref()),
            info.generation
                .map_or_else(|| "null".to_owned(), |g| g.to_string()),
            json_str(info.verdict.as_str()),
            json_str(f.method),
            unix_ns,
            info.observer_ns.saturating_sub(info.last_ns),
            f.capture_ns,
            f.sdk_signal
                .map_or_else(|| "null".to_owned(), |s| s.to_string()),
            json_opt(f.sdk_note),
            f.truncated,
            if threads.is_empty() {
                String::new()
            } else {
                format!("\n    {}\n  ", threads.join(",\n    "))
            },
            json_opt(traceback.as_deref()),
            json_opt(names.as_deref()),
            json_opt(tasks.as_deref()),
        );
        if doc.len() <= max_bytes {
            return doc;
        }
        f.truncated = true;
        // Cut the largest part first: threads beyond the first, then the
        // asyncio section, then the traceback's tail.
        let over = doc.len() - max_bytes;
        if threads.len() > 1 {
            threads.pop();
        } else if let Some(t) = tasks.as_mut().filter(|t| !t.is_empty()) {
            cut_tail(t, over + 64);
        } else if let Some(t) = traceback.as_mut().filter(|t| !t.is_empty()) {
            cut_tail(t, over + 64);
        } else if !threads.is_empty() {
            threads.clear();
        } else {
            return doc; // nothing left to cut (cannot happen with sane bounds)
        }
    }
}

fn cut_tail(s: &mut String, by: usize) {
    let mut keep = s.len().saturating_sub(by);
    while keep > 0 && !s.is_char_boundary(keep) {
        keep -= 1;
    }
    s.truncate(keep);
    s.push_str("\n[cut at the size bound]\n");
}

fn lowercase_hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[usize::from(b >> 4)] as char);
        s.push(HEX[usize::from(b & 15)] as char);
    }
    s
}

/// Write `body` as `dir/name` (a temporary file, fsync, rename; mode 0600);
/// returns the path and the body's SHA-256 (lowercase hex).
pub fn write_capture(dir: &Path, name: &str, body: &[u8]) -> io::Result<(PathBuf, String)> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let path = dir.join(name);
    let res = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(&tmp)?;
        f.write_all(body)?;
        f.sync_all()?;
        fs::rename(&tmp, &path)
    })();
    if let Err(e) = res {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok((path, lowercase_hex(&Sha256::digest(body))))
}

/// Remove captures beyond the newest `keep` and older than `max_age`.
pub fn prune(dir: &Path, keep: usize, max_age: Option<Duration>) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let mut files: Vec<(SystemTime, PathBuf)> = entries
        .flatten()
        .filter(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            n.starts_with(FILE_PREFIX) && n.ends_with(FILE_SUFFIX)
        })
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    files.sort_by(|a, b| b.cmp(a)); // newest first
    let now = SystemTime::now();
    let mut removed = 0;
    for (i, (mtime, path)) in files.iter().enumerate() {
        let too_many = keep > 0 && i >= keep;
        let too_old = max_age.is_some_and(|a| now.duration_since(*mtime).is_ok_and(|d| d > a));
        if (too_many || too_old) && fs::remove_file(path).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// Create the capture directory (mode 0700) if it does not exist.
pub fn prepare_dir(dir: &Path) -> io::Result<()> {
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} is not a directory", dir.display()),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir),
        Err(e) => Err(e),
    }
}
