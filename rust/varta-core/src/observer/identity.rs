//! Who a kernel-attested agent is, as the OS says (`docs/observer.md#agent-identity`):
//! its command name, a shortened command line, its systemd unit and its
//! container id. Read once per process — when the tracker pins a new
//! (pid, start time) — never on the per-beat path; the parsers are pure and
//! tested over real-looking `/proc/<pid>/cgroup` contents.

use super::procfs::{self, Comm};
use std::sync::Arc;

/// Longest shortened command line kept, in bytes (cut on a char boundary,
/// ending in `…`).
pub const CMDLINE_MAX: usize = 120;
/// Hex digits of a container id kept (`docker ps` shows 12).
pub const CONTAINER_ID_LEN: usize = 12;

/// What the OS said about one process, read once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcIdentity {
    /// `/proc/<pid>/comm`.
    pub comm: Option<Comm>,
    /// [`shorten_cmdline`] of `/proc/<pid>/cmdline`.
    pub cmdline: Option<Arc<str>>,
    /// The systemd unit (`ingest.service`, `session-3.scope`).
    pub unit: Option<Arc<str>>,
    /// The short container id, when the process runs in one.
    pub container: Option<Arc<str>>,
}

impl ProcIdentity {
    /// Read `pid`'s identity from `/proc` (missing parts stay `None`).
    pub fn read(pid: u32) -> ProcIdentity {
        let comm = procfs::comm(pid);
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
            .ok()
            .and_then(|raw| shorten_cmdline(&raw))
            .map(Arc::from);
        let (unit, container) = std::fs::read(format!("/proc/{pid}/cgroup"))
            .map(|raw| parse_cgroup(&String::from_utf8_lossy(&raw)))
            .unwrap_or((None, None));
        ProcIdentity {
            comm,
            cmdline,
            unit: unit.map(Arc::from),
            container: container.map(Arc::from),
        }
    }

    /// The name a person knows the process by: the first word of the
    /// command line (the script for an interpreter), else the comm.
    pub fn name(&self) -> Option<String> {
        self.cmdline
            .as_deref()
            .and_then(|c| c.split(' ').next())
            .filter(|w| !w.is_empty())
            .map(str::to_owned)
            .or_else(|| self.comm.map(|c| c.to_string_lossy()))
    }
}

/// Interpreters whose script, not themselves, names the process.
fn is_interpreter(base: &str) -> bool {
    let stem = base.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
    matches!(
        stem,
        "python" | "pypy" | "node" | "nodejs" | "ruby" | "perl" | "php" | "sh" | "bash" | "dash"
    ) || base.starts_with("python")
}

fn basename(arg: &str) -> &str {
    arg.rsplit('/').next().unwrap_or(arg)
}

/// `/proc/<pid>/cmdline` (NUL-separated arguments) shortened for people:
/// the program's base name, or for an interpreter the script's base name
/// (`/usr/bin/python3 -u /opt/app/worker.py --queue ingest` →
/// `worker.py --queue ingest`; `python3 -m app.worker` → `app.worker`),
/// then the other arguments; control characters become spaces and the
/// result is cut at [`CMDLINE_MAX`] bytes. `None` for an empty command
/// line (a kernel thread, a zombie).
pub fn shorten_cmdline(raw: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(raw);
    let args: Vec<&str> = text
        .trim_end_matches('\0')
        .split('\0')
        .filter(|a| !a.is_empty())
        .collect();
    let first = *args.first()?;
    let mut words: Vec<&str> = Vec::with_capacity(args.len());
    let prog = basename(first);
    let mut rest = &args[1..];
    if is_interpreter(prog) {
        // Skip the interpreter's own options up to the script or `-m mod`.
        let mut i = 0;
        let mut found = None;
        while i < rest.len() {
            let a = rest[i];
            if a == "-c" {
                break; // inline code: the interpreter and its arguments
            }
            if a == "-m" {
                found = rest.get(i + 1).map(|m| (i + 2, *m));
                break;
            }
            if !a.starts_with('-') {
                found = Some((i + 1, basename(a)));
                break;
            }
            i += 1;
        }
        match found {
            Some((next, name)) => {
                words.push(name);
                rest = &rest[next.min(rest.len())..];
            }
            None => words.push(prog),
        }
    } else {
        words.push(prog);
    }
    words.extend_from_slice(rest);
    let joined = words.join(" ");
    let mut out: String = joined
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if out.len() > CMDLINE_MAX {
        let mut cut = CMDLINE_MAX - '…'.len_utf8();
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push('…');
    }
    (!out.trim().is_empty()).then_some(out)
}

/// A unit's name: `*.service` or `*.scope` (slices group units, they are
/// not one).
fn is_unit(component: &str) -> bool {
    (component.ends_with(".service") || component.ends_with(".scope"))
        && component.len() > ".scope".len()
}

/// A container id: 64 hex digits (docker, containerd, CRI-O, podman all
/// use them; shorter hex names, e.g. a sandbox's 32-digit group, are not).
fn is_hex_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The container id in one cgroup path component: `docker-<id>.scope`,
/// `cri-containerd-<id>.scope`, `crio-<id>.scope`, `libpod-<id>.scope`
/// (systemd driver), or a bare 64-hex id (`/docker/<id>`,
/// `/kubepods/burstable/pod…/<id>`, cgroupfs driver).
fn container_of(component: &str) -> Option<&str> {
    let body = component.strip_suffix(".scope").unwrap_or(component);
    let id = [
        "docker-",
        "cri-containerd-",
        "crio-",
        "libpod-",
        "containerd-",
    ]
    .iter()
    .find_map(|p| body.strip_prefix(p))
    .unwrap_or(body);
    is_hex_id(id).then_some(id)
}

/// `(unit, container)` from `/proc/<pid>/cgroup`. The cgroup v2 line
/// (`0::/…`) is preferred, then v1's `name=systemd` hierarchy, then any
/// line. The unit is the deepest `.service`/`.scope` component (a user
/// service under `user@1000.service` names itself; a delegated subgroup
/// inside a service names the service); the container id is the deepest
/// id-like component, cut to [`CONTAINER_ID_LEN`] digits.
pub fn parse_cgroup(text: &str) -> (Option<String>, Option<String>) {
    let mut v2 = None;
    let mut systemd = None;
    let mut others = Vec::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(ctl), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if id == "0" && ctl.is_empty() {
            v2 = Some(path);
        } else if ctl == "name=systemd" {
            systemd = Some(path);
        } else {
            others.push(path);
        }
    }
    let unit_paths = v2.into_iter().chain(systemd).chain(others.iter().copied());
    let mut unit = None;
    let mut container = None;
    for path in unit_paths {
        let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
        if unit.is_none() {
            unit = comps
                .iter()
                .rev()
                .find(|c| is_unit(c))
                .map(|c| c.to_string());
        }
        if container.is_none() {
            container = comps
                .iter()
                .rev()
                .find_map(|c| container_of(c))
                .map(|id| id[..CONTAINER_ID_LEN.min(id.len())].to_ascii_lowercase());
        }
        if unit.is_some() && container.is_some() {
            break;
        }
    }
    (unit, container)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f2b9c1d7e8a6b5c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c";

    fn cmd(args: &[&str]) -> Option<String> {
        let mut raw = Vec::new();
        for a in args {
            raw.extend_from_slice(a.as_bytes());
            raw.push(0);
        }
        shorten_cmdline(&raw)
    }

    #[test]
    fn command_lines_name_the_script_not_the_interpreter() {
        assert_eq!(
            cmd(&[
                "/usr/bin/python3",
                "-u",
                "/opt/app/worker.py",
                "--queue",
                "ingest"
            ])
            .as_deref(),
            Some("worker.py --queue ingest")
        );
        assert_eq!(
            cmd(&["python3.11", "-m", "app.worker", "-v"]).as_deref(),
            Some("app.worker -v")
        );
        assert_eq!(
            cmd(&["/usr/sbin/nginx", "-g", "daemon off;"]).as_deref(),
            Some("nginx -g daemon off;")
        );
        assert_eq!(cmd(&["/usr/bin/python3"]).as_deref(), Some("python3"));
        assert_eq!(
            cmd(&["bash", "-c", "sleep 9"]).as_deref(),
            Some("bash -c sleep 9")
        );
        assert_eq!(cmd(&[]), None);
        assert_eq!(shorten_cmdline(b"\0\0"), None);
        // Tabs and newlines cannot break a TSV row or a log line.
        assert_eq!(cmd(&["w", "a\tb\nc"]).as_deref(), Some("w a b c"));
        let long = cmd(&["w", &"é".repeat(200)]).unwrap();
        assert!(long.len() <= CMDLINE_MAX && long.ends_with('…'), "{long}");
    }

    #[test]
    fn system_units_from_cgroup_v2_and_v1() {
        assert_eq!(
            parse_cgroup("0::/system.slice/ingest.service\n"),
            (Some("ingest.service".into()), None)
        );
        // A delegated subgroup inside a service names the service.
        assert_eq!(
            parse_cgroup("0::/system.slice/ingest.service/workers/w1\n").0,
            Some("ingest.service".into())
        );
        let v1 = "12:pids:/system.slice/ingest.service\n\
                  4:memory:/system.slice/ingest.service\n\
                  1:name=systemd:/system.slice/ingest.service\n";
        assert_eq!(parse_cgroup(v1).0, Some("ingest.service".into()));
        // Hybrid: the v2 line wins.
        let hybrid = "1:name=systemd:/system.slice/old.service\n0::/system.slice/new.service\n";
        assert_eq!(parse_cgroup(hybrid).0, Some("new.service".into()));
    }

    #[test]
    fn user_units_scopes_and_nothing() {
        assert_eq!(
            parse_cgroup(
                "0::/user.slice/user-1000.slice/user@1000.service/app.slice/sync.service\n"
            )
            .0,
            Some("sync.service".into())
        );
        assert_eq!(
            parse_cgroup("0::/user.slice/user-1000.slice/session-3.scope\n").0,
            Some("session-3.scope".into())
        );
        assert_eq!(parse_cgroup("0::/\n"), (None, None));
        assert_eq!(parse_cgroup("0::/user.slice\n"), (None, None));
        assert_eq!(parse_cgroup(""), (None, None));
        assert_eq!(parse_cgroup("garbage\n::\n"), (None, None));
    }

    #[test]
    fn container_ids_from_each_runtime() {
        let short = Some(ID[..12].to_string());
        for path in [
            format!("0::/system.slice/docker-{ID}.scope"),
            format!("0::/docker/{ID}"),
            format!(
                "0::/kubepods.slice/kubepods-burstable.slice/\
                 kubepods-burstable-pod0a1b2c3d_4e5f_6a7b_8c9d_0e1f2a3b4c5d.slice/cri-containerd-{ID}.scope"
            ),
            format!("0::/kubepods/besteffort/pod0a1b2c3d-4e5f-6a7b-8c9d-0e1f2a3b4c5d/{ID}"),
            format!("0::/machine.slice/libpod-{ID}.scope/container"),
            format!("0::/kubepods.slice/kubepods-pod1.slice/crio-{ID}.scope"),
            format!("11:memory:/docker/{ID}\n1:name=systemd:/docker/{ID}"),
        ] {
            assert_eq!(parse_cgroup(&path).1, short, "{path}");
        }
        // Under systemd the container's scope is also its unit.
        assert_eq!(
            parse_cgroup(&format!("0::/system.slice/docker-{ID}.scope")).0,
            Some(format!("docker-{ID}.scope"))
        );
        // Neither is a 32-digit group of some other manager.
        assert_eq!(
            parse_cgroup("4:memory:/process_api/873a87c3b9f87954cc0885d540fd7d7d\n0::/\n").1,
            None
        );
        // A pod uid is not a container id.
        assert_eq!(
            parse_cgroup("0::/kubepods/burstable/pod0a1b2c3d-4e5f-6a7b-8c9d-0e1f2a3b4c5d\n").1,
            None
        );
    }

    #[test]
    fn the_name_is_the_script_else_the_comm() {
        let mut id = ProcIdentity {
            comm: Some(Comm::new(b"python3")),
            cmdline: Some("worker.py --queue ingest".into()),
            ..ProcIdentity::default()
        };
        assert_eq!(id.name().as_deref(), Some("worker.py"));
        id.cmdline = None;
        assert_eq!(id.name().as_deref(), Some("python3"));
        assert_eq!(ProcIdentity::default().name(), None);
    }

    #[test]
    fn this_process_reads_itself() {
        let me = ProcIdentity::read(std::process::id());
        assert!(me.comm.is_some());
        assert!(me.cmdline.is_some());
    }
}
