"""Hang forensics (docs/finding-hangs.md) with real, really hung processes.

Each agent is kernel-attested over the Unix socket, beats a few times and
then hangs; the observer reports ``hung`` and only then captures. Whether a
process was signalled is read from the kernel, not guessed: the processes
that must never be signalled block every real-time signal, so a signal sent
to them would stay pending in ``/proc/PID/status`` (``ShdPnd`` for the
process, ``SigPnd`` for a thread) for the test to see.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

import varta
from observer_helpers import poll_until
from varta import forensics as show
from watch_e2e import Watch, audit_rows, tsv_rows, wait_for

REPO = Path(__file__).resolve().parent.parent
THRESHOLD_MS = 300
MAX_BYTES = 256 * 1024

SDK_AGENT = textwrap.dedent(
    """
    import ctypes, sys, threading, time, varta

    def stuck_here_forever():
        threading.Event().wait()  # LINE-A

    def spinning_here_forever():
        n = 0
        while True:
            n += 1  # LINE-B

    def stuck_in_c():
        ctypes.PyDLL(None).sleep(1000)  # LINE-C

    agent = varta.Varta.connect(sys.argv[1])
    for _ in range(3):
        agent.beat()
        time.sleep(0.02)
    print("hanging", flush=True)
    {"event": stuck_here_forever, "busy": spinning_here_forever, "c": stuck_in_c}[sys.argv[2]]()
    """
)


def line_of(code: str, marker: str) -> int:
    return next(i for i, line in enumerate(code.splitlines(), 1) if marker in line)


def pending_signals(pid: int) -> tuple[int, int]:
    """(ShdPnd, SigPnd) of ``pid``: signals sent to it and not yet delivered."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return int(fields["ShdPnd"], 16), int(fields["SigPnd"], 16)


@pytest.fixture
def obs(tmp_path: Path) -> Iterator[varta.Observer]:
    with varta.Observer(
        str(tmp_path / "o.sock"), THRESHOLD_MS, forensics_dir=str(tmp_path / "fx")
    ) as o:
        yield o


def start(argv: list[str], **kw: Any) -> subprocess.Popen[str]:
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, **kw)
    assert p.stdout is not None
    assert p.stdout.readline().strip() == "hanging"
    return p


def hung_stall(o: varta.Observer, pid: int, within: float = 10.0) -> Any:
    def is_hung(e: Any) -> bool:
        return isinstance(e, varta.Stall) and e.pid == pid and e.verdict is varta.Verdict.HUNG

    seen = poll_until(o, is_hung, within=within)
    return next(e for e in seen if is_hung(e))


def stop(p: subprocess.Popen[str]) -> None:
    p.kill()
    p.wait()
    if p.stdout is not None:
        p.stdout.close()


def capture_of(ev: Any) -> dict[str, Any]:
    assert ev.forensics, ev
    path = Path(ev.forensics)
    st = path.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_size <= MAX_BYTES
    import hashlib

    assert hashlib.sha256(path.read_bytes()).hexdigest() == ev.forensics_sha256
    return show.load(str(path))


@pytest.mark.parametrize(
    ("mode", "func", "marker"),
    [
        ("event", "stuck_here_forever", "LINE-A"),
        ("busy", "spinning_here_forever", "LINE-B"),
        ("c", "stuck_in_c", "LINE-C"),
    ],
)
def test_sdk_capture_names_the_stuck_function_and_line(
    obs: varta.Observer, tmp_path: Path, mode: str, func: str, marker: str
) -> None:
    script = tmp_path / "agent.py"
    script.write_text(SDK_AGENT)
    p = start([sys.executable, str(script), str(obs.socket_path), mode])
    try:
        ev = hung_stall(obs, p.pid)
        doc = capture_of(ev)
        assert p.poll() is None, "the capture must not end the hang"
    finally:
        stop(p)
    assert doc["method"] == "sdk" and doc["pid"] == p.pid and doc["verdict"] == "hung"
    assert doc["start_time"] == ev.generation
    threads = show.parse_traceback(doc["python_traceback"], doc.get("python_threads") or "")
    # The thread that ran the script: its frames end in the script's <module>.
    (main,) = [t for t in threads if any(f[2] == "<module>" for f in t.frames)]
    assert not main.is_helper
    frame = (str(script), line_of(SDK_AGENT, marker), func)
    if mode == "event":
        assert frame in main.frames  # below threading's wait()
    elif mode == "busy":
        # The innermost frame, caught in the loop: at its body or at the jump
        # back, which CPython attributes to the ``while True:`` line above.
        loop_lines = {frame[1], frame[1] - 1}
        assert main.frames[0][::2] == frame[::2] and main.frames[0][1] in loop_lines
    else:
        assert main.frames[0] == frame  # the innermost Python frame
    # The kernel's view of the same process, thread by thread.
    assert doc["threads"][0]["tid"] == p.pid and doc["threads"][0]["state"]
    if mode == "event":
        assert doc["threads"][0]["syscall"] == "futex"
    # Where the SDK's helper could answer (not while C code holds the GIL),
    # the Python threads are named by tid.
    if mode != "c":
        assert main.tid == p.pid and main.name == "MainThread"
    # Shown for a person: the stuck function appears in the listing.
    assert func in show.render(doc)
    assert obs.counters()["forensics_captures"] == {"sdk": 1, "proc": 0}


UPSTREAM_AGENT = textwrap.dedent(
    """
    import os, signal, sys, time
    import varta

    assert varta.__version__ == "0.2.0", varta.__version__
    # Every real-time signal blocked: one sent to us stays pending (ShdPnd).
    signal.pthread_sigmask(
        signal.SIG_BLOCK, range(signal.SIGRTMIN, signal.SIGRTMAX + 1)
    )
    agent = varta.Varta.connect(sys.argv[1])
    for _ in range(3):
        agent.beat(varta.Status.OK)
        time.sleep(0.02)
    print("hanging", flush=True)
    time.sleep(1000)
    """
)


def upstream_python() -> str:
    py = os.environ.get("VARTA_UPSTREAM_PYTHON") or str(REPO / ".venv-upstream" / "bin" / "python")
    assert Path(py).exists(), f"no upstream interpreter at {py} (scripts/test.sh makes it)"
    return py


def test_a_process_without_the_sdk_gets_a_proc_capture_and_no_signal(
    obs: varta.Observer,
) -> None:
    p = start([upstream_python(), "-I", "-c", UPSTREAM_AGENT, str(obs.socket_path)])
    try:
        ev = hung_stall(obs, p.pid)
        doc = capture_of(ev)
        assert pending_signals(p.pid) == (0, 0)
    finally:
        stop(p)
    assert doc["method"] == "proc" and doc["python_traceback"] is None
    assert doc["sdk_signal"] is None
    main = doc["threads"][0]
    assert main["tid"] == p.pid
    assert main["syscall"] in ("clock_nanosleep", "nanosleep", "select"), main
    assert main["wchan"], main
    assert obs.counters()["forensics_captures"] == {"sdk": 0, "proc": 1}


FOREIGN_HEADER_AGENT = textwrap.dedent(
    """
    import faulthandler, os, signal, sys, threading, time, varta

    signal.pthread_sigmask(signal.SIG_BLOCK, range(signal.SIGRTMIN, signal.SIGRTMAX + 1))
    # A channel whose header names another pid (what a forked child would
    # hold had it not set up its own): the observer must not signal us.
    fd = os.memfd_create("varta-forensics", os.MFD_CLOEXEC)
    sig = signal.SIGRTMIN + 6
    os.write(fd, f"varta-forensics v1 pid={os.getppid()} signal={sig} "
                 f"tid={threading.get_native_id()}\\n".encode())
    faulthandler.register(sig, file=fd, all_threads=True)
    agent = varta.Varta.connect(sys.argv[1], forensics=False)
    for _ in range(3):
        agent.beat()
        time.sleep(0.02)
    print("hanging", flush=True)
    threading.Event().wait()
    """
)


def test_a_header_naming_another_pid_is_refused(obs: varta.Observer) -> None:
    p = start([sys.executable, "-c", FOREIGN_HEADER_AGENT, str(obs.socket_path)])
    try:
        ev = hung_stall(obs, p.pid)
        doc = capture_of(ev)
        assert pending_signals(p.pid) == (0, 0)
    finally:
        stop(p)
    assert doc["method"] == "proc"
    assert "another pid" in doc["sdk_note"]
    failures = obs.counters()["forensics_capture_failures"]
    assert failures["pid_mismatch"] == 1


OPTED_OUT_AGENT = textwrap.dedent(
    """
    import os, signal, sys, threading, time, varta

    signal.pthread_sigmask(signal.SIG_BLOCK, range(signal.SIGRTMIN, signal.SIGRTMAX + 1))
    agent = varta.Varta.connect(sys.argv[1], forensics=sys.argv[2] != "keyword")
    for _ in range(3):
        agent.beat()
        time.sleep(0.02)
    fds = []
    for n in os.listdir("/proc/self/fd"):
        try:
            fds.append(os.readlink(f"/proc/self/fd/{n}"))
        except OSError:
            pass  # the listing's own descriptor
    assert not any("varta-forensics" in t for t in fds), fds
    print("hanging", flush=True)
    threading.Event().wait()
    """
)


@pytest.mark.parametrize("how", ["keyword", "env"])
def test_opting_out_means_no_channel_and_no_signal(obs: varta.Observer, how: str) -> None:
    env = dict(os.environ, VARTA_FORENSICS="0" if how == "env" else "1")
    p = start([sys.executable, "-c", OPTED_OUT_AGENT, str(obs.socket_path), how], env=env)
    try:
        doc = capture_of(hung_stall(obs, p.pid))
        assert pending_signals(p.pid) == (0, 0)
    finally:
        stop(p)
    assert doc["method"] == "proc"


def test_the_channel_is_announced_for_this_pid_and_renewed_in_a_fork(tmp_path: Path) -> None:
    code = textwrap.dedent(
        """
        import os, sys, varta, varta._forensics as f
        from varta._varta import _signal_is_default

        def header():
            for n in os.listdir("/proc/self/fd"):
                try:
                    if os.readlink(f"/proc/self/fd/{n}") == "/memfd:varta-forensics (deleted)":
                        with open(f"/proc/self/fd/{n}", "rb") as fh:
                            return fh.readline().decode()
                except OSError:
                    pass

        varta.Varta.connect(sys.argv[1])
        varta.Varta.connect(sys.argv[1])  # idempotent: one channel
        sig, tid = f.channel()
        assert not _signal_is_default(sig)
        h = header()
        assert h.startswith(f"varta-forensics v1 pid={os.getpid()} signal={sig} tid={tid} "), h
        pid = os.fork()
        if pid == 0:
            h2 = header()
            ok = h2.startswith(f"varta-forensics v1 pid={os.getpid()} ") and f.channel()[1] != tid
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        assert status == 0, status
        print("ok")
        """
    )
    with varta.Observer(str(tmp_path / "o.sock"), 1000) as o:
        out = subprocess.run(
            [sys.executable, "-c", code, str(o.socket_path)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert out.returncode == 0 and out.stdout == "ok\n", out.stderr


def test_a_signal_the_application_handles_is_never_taken(tmp_path: Path) -> None:
    code = textwrap.dedent(
        """
        import signal, sys, varta, varta._forensics as f
        taken = f._candidates()
        for s in taken[:-1]:
            signal.signal(s, lambda *a: None)
        varta.Varta.connect(sys.argv[1])
        assert f.channel()[0] == taken[-1], (f.channel(), taken)
        print("ok")
        """
    )
    with varta.Observer(str(tmp_path / "o.sock"), 1000) as o:
        out = subprocess.run(
            [sys.executable, "-c", code, str(o.socket_path)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert out.returncode == 0 and out.stdout == "ok\n", out.stderr


ASYNC_AGENT = textwrap.dedent(
    """
    import asyncio, sys, threading, time, varta
    from varta._loops import WATCHED_LOOPS

    async def awaiting_here_forever():
        await asyncio.Event().wait()

    def run_loop():
        loop = asyncio.new_event_loop()
        WATCHED_LOOPS.add(loop)
        loop.run_until_complete(awaiting_here_forever())

    threading.Thread(target=run_loop, daemon=True).start()
    agent = varta.Varta.connect(sys.argv[1])
    for _ in range(3):
        agent.beat()
        time.sleep(0.02)
    print("hanging", flush=True)
    threading.Event().wait()
    """
)


def test_asyncio_tasks_of_a_watched_loop_are_listed(obs: varta.Observer) -> None:
    p = start([sys.executable, "-c", ASYNC_AGENT, str(obs.socket_path)])
    try:
        doc = capture_of(hung_stall(obs, p.pid))
    finally:
        stop(p)
    assert doc["method"] == "sdk"
    assert "awaiting_here_forever" in doc["asyncio_tasks"]
    assert "1 tasks" in doc["asyncio_tasks"]


DEEP_AGENT = textwrap.dedent(
    """
    import sys, threading, time, varta

    def a_function_with_a_rather_long_name_so_that_every_frame_line_is_wide(n, ev):
        if n:
            return a_function_with_a_rather_long_name_so_that_every_frame_line_is_wide(n - 1, ev)
        ev.wait()

    gate = threading.Event()
    for _ in range(90):
        threading.Thread(
            target=a_function_with_a_rather_long_name_so_that_every_frame_line_is_wide,
            args=(90, gate), daemon=True,
        ).start()
    agent = varta.Varta.connect(sys.argv[1])
    for _ in range(3):
        agent.beat()
        time.sleep(0.02)
    print("hanging", flush=True)
    gate.wait()
    """
)


def test_a_capture_is_cut_to_256_kib_and_counted(obs: varta.Observer) -> None:
    p = start([sys.executable, "-c", DEEP_AGENT, str(obs.socket_path)])
    try:
        ev = hung_stall(obs, p.pid)
        doc = capture_of(ev)  # checks the size bound
    finally:
        stop(p)
    assert doc["truncated"] is True
    assert doc["method"] == "sdk"
    assert obs.counters()["forensics_truncated"] == 1


def test_old_and_surplus_captures_are_pruned(tmp_path: Path) -> None:
    fx = tmp_path / "fx"
    fx.mkdir()
    old = time.time() - 3600
    for i in range(4):
        f = fx / f"hang-1-{i}.json"
        f.write_text("{}")
        os.utime(f, (old + i, old + i))
    (fx / "notes.txt").write_text("not a capture")
    fresh = fx / "hang-2-9.json"
    fresh.write_text("{}")
    with varta.Observer(
        str(tmp_path / "o.sock"),
        THRESHOLD_MS,
        forensics_dir=str(fx),
        forensics_keep=2,
        forensics_max_age_s=600,
    ) as o:
        p = start([upstream_python(), "-I", "-c", UPSTREAM_AGENT, str(o.socket_path)])
        try:
            ev = hung_stall(o, p.pid)
        finally:
            stop(p)
    # The new capture and the fresh one are the two kept; the hour-old ones
    # went (by age and by count); other files are left alone.
    assert sorted(x.name for x in fx.iterdir()) == sorted(
        [Path(ev.forensics).name, "hang-2-9.json", "notes.txt"]
    )


def test_forensics_show_errors_are_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "something else"}')
    for args in (["show", str(tmp_path / "missing.json")], ["show", str(bad)], ["list"], []):
        r = subprocess.run(
            [sys.executable, "-m", "varta", "forensics", *args], capture_output=True, text=True
        )
        assert r.returncode == 2, r
        assert r.stdout == "" and r.stderr.count("\n") == 1, r.stderr
        assert r.stderr.startswith("python -m varta forensics: ")


RECORDER = textwrap.dedent(
    """
    import os, sys
    # Recovery runs after the capture: the file is already there.
    with open(sys.argv[1], "a") as f:
        f.write(" ".join(sorted(os.listdir(sys.argv[2]))) + "\\n")
    """
)


def test_the_daemon_logs_audits_and_exports_the_capture_before_recovery(tmp_path: Path) -> None:
    fx, out = tmp_path / "fx", tmp_path / "recovered.txt"
    tsv, audit = tmp_path / "events.tsv", tmp_path / "audit.log"
    rec = tmp_path / "rec.py"
    rec.write_text(RECORDER)
    watch = Watch(
        tmp_path,
        "--forensics-dir", str(fx),
        "--recovery-exec", f"{sys.executable} {rec} {out} {fx}",
        "--recovery-audit-file", str(audit),
        "--export-file", str(tsv),
        threshold_ms=THRESHOLD_MS,
    )  # fmt: skip
    script = tmp_path / "agent.py"
    script.write_text(SDK_AGENT)
    p = start([sys.executable, str(script), str(watch.sock), "event"])
    try:
        listed = wait_for("the recovery run", lambda: out.exists() and out.read_text())
    finally:
        stop(p)
        code = watch.stop()
    assert code == 0, watch.stderr
    (capture,) = [x for x in fx.iterdir() if x.name.startswith("hang-")]
    assert listed.split() == [capture.name]
    import hashlib

    sha = hashlib.sha256(capture.read_bytes()).hexdigest()
    assert f"agent.py[{p.pid}]" in watch.stderr  # named as the OS knows it
    assert f"recovery for agent.py[{p.pid}]: started child" in watch.stderr
    assert f"where it is stuck: {capture}" in watch.stderr
    rows = [r for r in tsv_rows(tsv) if r[1] == "forensics"]
    assert rows == [[rows[0][0], "forensics", str(p.pid), "-", sha, str(capture)]]
    kinds = [r[3] for r in audit_rows(audit)]
    assert kinds[:5] == ["boot", "forensics", "identity", "verdict", "spawn"], kinds
    record = audit_rows(audit)[1]
    assert record[4:7] == [str(p.pid), sha, str(capture)]
    r = subprocess.run(
        [sys.executable, "-m", "varta", "audit", "verify", str(audit)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    shown = subprocess.run(
        [sys.executable, "-m", "varta", "forensics", "show", str(capture)],
        capture_output=True,
        text=True,
    )
    assert shown.returncode == 0 and "stuck_here_forever" in shown.stdout, shown


def test_forensics_flags_are_checked(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("")
    bad = Watch(tmp_path, "--forensics-dir", str(f), wait_ready=False)
    assert bad.wait() == 1
    assert "--forensics-dir" in bad.stderr and "not a directory" in bad.stderr.lower()
    r = subprocess.run(
        [sys.executable, "-m", "varta", "watch", "--socket", str(tmp_path / "s"),
         "--threshold-ms", "100", "--forensics-keep", "-1"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 2 and "--forensics-keep" in r.stderr
