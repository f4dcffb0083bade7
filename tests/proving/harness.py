"""The proving ground's scenarios, sized by their arguments.

``tests/proving/test_fast.py`` runs each at a size that fits the default suite
(the fast tier, well under a minute); ``tests/proving/full.py`` runs them at
full size and prints a table of figures (the full tier). Every scenario
returns a dict of figures and raises ``AssertionError`` when something was
lost, replayed, torn or unaccounted for.
"""

from __future__ import annotations

import errno
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

import varta
from varta._varta import _testing
from watch_e2e import Watch, audit_rows, http_get, token_file, wait_for

SEC = 1_000_000_000

#: Observer counters that are gauges or settings, not per-datagram outcomes.
GAUGES = {
    "watch_pids_tracked",
    "pid_max_current",
    "tracker_capacity",
    "tracker_eviction_scan_window_max",
    "observer_uds_rcvbuf_bytes",
}


def _snake(kind: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", kind).lower()


def flat_counters(obs: varta.Observer) -> Counter[str]:
    out: Counter[str] = Counter()
    for k, v in obs.counters().items():
        if k in GAUGES:
            continue
        if isinstance(v, dict):
            for kk, vv in v.items():
                out[f"{k}.{kk}"] = vv
        else:
            out[k] = v
    return out


# --- 1. mixed datagram fuzz with exact per-counter accounting --------------------------


def _datagrams(n: int, seed: int, me: int) -> Iterator[tuple[bytes, str]]:
    """*n* datagrams and the one counter each must land in."""
    rng = random.Random(seed)
    nonce = 0
    other = 2 if me != 2 else 3
    sent_nonces: list[int] = []
    for _ in range(n):
        r = rng.random()
        if r < 0.30:
            nonce += 1
            sent_nonces.append(nonce)
            yield varta.encode(varta.Status.OK, me, nonce, nonce, rng.getrandbits(32)), "beats"
        elif r < 0.40 and sent_nonces:
            old = rng.choice(sent_nonces[:-1] or sent_nonces)
            if old >= nonce:
                nonce += 1
                sent_nonces.append(nonce)
                yield varta.encode(varta.Status.OK, me, nonce, nonce, 0), "beats"
            else:
                yield varta.encode(varta.Status.OK, me, old, old, 0), "out_of_order"
        elif r < 0.50:
            yield varta.encode(varta.Status.OK, other, 5, 5, 0), "frame_auth_failures"
        elif r < 0.60:
            length = rng.choice([0, 1, 16, 31, 33, 60, 64, 200])
            yield rng.randbytes(length), "truncated_datagrams"
        else:
            # A mutated frame (CRC fixed half of the time): the decoder names the error.
            while True:
                b = bytearray(varta.encode(varta.Status.OK, me, nonce + 1, nonce + 1, 0))
                for _ in range(rng.randint(1, 4)):
                    b[rng.randrange(28 if rng.random() < 0.5 else 32)] = rng.getrandbits(8)
                if rng.random() < 0.5:
                    b[28:32] = varta.crc32c(bytes(b[:28])).to_bytes(4, "little")
                try:
                    varta.decode(bytes(b))
                except varta.DecodeError as e:
                    yield bytes(b), "decode_errors." + _snake(e.kind)
                    break


def fuzz_datagrams(n: int, seed: int = 11, deadline_s: float = 120.0) -> dict[str, Any]:
    """Send *n* mixed datagrams over the UDS listener (no loss: a full queue
    blocks the sender); every one must land in exactly the counter predicted."""
    d = tempfile.mkdtemp(prefix="varta-fuzz-")
    path = os.path.join(d, "obs.sock")
    obs = varta.Observer(path, 60_000, max_beat_rate=0, global_beat_rate=0, global_beat_burst=0)
    expected: Counter[str] = Counter()
    me = os.getpid()
    failure: list[BaseException] = []

    def sender() -> None:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                for data, counter in _datagrams(n, seed, me):
                    expected[counter] += 1
                    s.sendto(data, path)
        except BaseException as exc:
            failure.append(exc)

    t0 = time.monotonic()
    th = threading.Thread(target=sender)
    th.start()
    try:
        end = time.monotonic() + deadline_s
        got = flat_counters(obs)
        while time.monotonic() < end:
            for _ in obs.poll(0.05):
                pass
            got = flat_counters(obs)
            if not th.is_alive() and sum(got.values()) >= n:
                break
        th.join()
        elapsed = time.monotonic() - t0
        got = flat_counters(obs)
    finally:
        obs.close()
    assert not failure, failure
    assert sum(expected.values()) == n
    counted = sum(got.values())
    diff = {k: (expected[k], got[k]) for k in set(expected) | set(got) if expected[k] != got[k]}
    assert not diff, f"per-counter mismatch (expected, got): {diff}"
    return {"sent": n, "counted": counted, "kinds": len(expected), "seconds": elapsed}


# --- 2. secure replay of a superseded session -----------------------------------------


def secure_replay(frames: int = 30, threshold_ms: int = 200) -> dict[str, Any]:
    """An agent's session A is recorded, superseded (B, then C ages A out of the
    one-deep history), the agent goes silent past the threshold and A's frames
    are replayed: none may be credited and the agent must stay stalled."""
    key = bytes(range(32))
    d = tempfile.mkdtemp(prefix="varta-replay-")
    obs = varta.Observer(
        os.path.join(d, "obs.sock"),
        threshold_ms,
        udp_port=0,
        udp_bind_addr="127.0.0.1",
        keys=[varta.Key.from_bytes(key)],
        udp_trust="untrusted",
        max_beat_rate=0,
        global_beat_rate=0,
        global_beat_burst=0,
    )
    pid = 4242
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    addr = obs.udp_address
    try:
        nonce = 0

        def session(iv: bytes, count: int) -> list[bytes]:
            nonlocal nonce
            out = []
            for ctr in range(count):
                nonce += 1
                pt = varta.encode(varta.Status.OK, pid, nonce * 10, nonce, 0)
                out.append(_testing.seal_shared(key, iv, ctr, pt))
            return out

        recorded = session(b"\xaa" * 8, frames)
        live = recorded + session(b"\xbb" * 8, 3) + session(b"\xcc" * 8, 3)
        for wire in live:
            tx.sendto(wire, addr)
        wait_for(
            "the live beats",
            lambda: (list(obs.poll(0.05)), obs.counters()["beats"])[1] == len(live),
        )
        stalled = wait_for(
            "the agent's stall",
            lambda: [e for e in obs.poll(0.05) if isinstance(e, varta.Stall) and e.pid == pid],
        )
        assert stalled
        # The restart gap (= the threshold) has passed: silent since before the stall.
        for wire in recorded:
            tx.sendto(wire, addr)
        wait_for(
            "the replays refused",
            lambda: (list(obs.poll(0.05)), obs.counters()["secure_replay_refused"])[1] == frames,
        )
        c = obs.counters()
        agent = obs.agent(pid)
        credited = c["beats"] - len(live)
        assert credited == 0, f"{credited} replayed frames credited"
        assert agent is not None and agent.stalled, "the silent agent looks alive"
        return {"replayed": frames, "refused": c["secure_replay_refused"], "credited": credited}
    finally:
        tx.close()
        obs.close()


# --- daemon scenarios -------------------------------------------------------------------

# An agent that beats for argv[2] ms, goes silent for argv[3] ms, and repeats:
# a stall (and a recovery) every cycle.
CYCLING_AGENT = """
import sys, time, varta
agent = varta.Varta.connect(sys.argv[1])
on, off = int(sys.argv[2]) / 1000, int(sys.argv[3]) / 1000
while True:
    end = time.monotonic() + on
    while time.monotonic() < end:
        agent.beat("ok", 1)
        time.sleep(0.02)
    time.sleep(off)
"""

# A recovery program: appends "<own pid> <agent pid>" to argv[1], then sleeps
# argv[2] seconds (a hung child when large).
WITNESS = """
import os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
os.write(fd, f"{os.getpid()} {sys.argv[-1]}\\n".encode())
os.close(fd)
time.sleep(float(sys.argv[2]))
"""


class Agents:
    def __init__(self, sock: Path, n: int, on_ms: int = 150, off_ms: int = 400) -> None:
        self.procs = [
            subprocess.Popen(
                [sys.executable, "-c", CYCLING_AGENT, str(sock), str(on_ms), str(off_ms)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for _ in range(n)
        ]

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
        for p in self.procs:
            p.wait()


def witness_cmd(tmp: Path, sleep_s: float = 0.0) -> tuple[str, Path]:
    script = tmp / "witness.py"
    script.write_text(WITNESS)
    out = tmp / "witnessed.txt"
    return f"{sys.executable} {script} {out} {sleep_s}", out


def witnessed(out: Path) -> list[tuple[int, int]]:
    if not out.exists():
        return []
    pairs = []
    for line in out.read_text().splitlines():
        child, agent = line.split()
        pairs.append((int(child), int(agent)))
    return pairs


def spawn_records(*paths: Path) -> set[int]:
    """Child pids of every ``spawn`` record in the audit files."""
    out = set()
    for p in paths:
        if p.exists():
            out |= {int(r[5]) for r in audit_rows(p) if r[3] == "spawn"}
    return out


def audit_verify(*paths: Path, strict: bool = False) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, "-m", "varta", "audit", "verify"]
    return subprocess.run(
        args + (["--strict"] if strict else []) + [str(p) for p in paths],
        capture_output=True,
        text=True,
        timeout=60,
    )


def check_tsv(*paths: Path) -> int:
    """Every row whole (6 columns, LF-terminated); returns the row count."""
    rows = 0
    for p in paths:
        if not p.exists():
            continue
        data = p.read_bytes()
        assert not data or data.endswith(b"\n"), f"{p}: torn last line"
        for n, line in enumerate(data.decode().splitlines(), 1):
            assert len(line.split("\t")) == 6, f"{p}:{n}: {line!r}"
            rows += 1
    return rows


def torn_tail(tmp: Path) -> dict[str, Any]:
    """The issue's reproduction: a TSV file ending in a torn row, then one beat."""
    tsv = tmp / "e.tsv"
    tsv.write_bytes(b"123456789\tbeat\t4242\t7")
    watch = Watch(tmp, "--export-file", str(tsv))
    try:
        with varta.Varta.connect(str(watch.sock)) as agent:
            assert agent.beat("ok", 1)
        wait_for(
            "the beat row",
            lambda: tsv.read_bytes().count(b"\tbeat\t") >= 1 and tsv.read_bytes().endswith(b"\n"),
        )
    finally:
        code = watch.stop()
    assert code == 0, watch.stderr
    rows = check_tsv(tsv)
    assert b"123456789" not in tsv.read_bytes()
    assert "cut a torn last line" in watch.stderr, watch.stderr
    return {"rows": rows, "torn_cut": 1}


def sigkill_loop(tmp: Path, kills: int, agents: int = 4, seed: int = 3) -> dict[str, Any]:
    """Run the daemon with cycling agents and recovery; SIGKILL it *kills* times
    at random moments (each right after a recovery child ran, or at a random
    delay), restarting it each time. Every child that ran must have a spawn
    record; the audit log must verify; every TSV row must be whole."""
    rng = random.Random(seed)
    cmd, out = witness_cmd(tmp)
    audit, tsv = tmp / "audit.log", tmp / "events.tsv"
    args = (
        "--recovery-exec", cmd, "--recovery-debounce-ms", "0",
        "--recovery-audit-file", str(audit), "--export-file", str(tsv),
        "--export-file-sync-every", "1",
    )  # fmt: skip
    ag: Optional[Agents] = None
    survived = 0
    try:
        for i in range(kills + 1):
            watch = Watch(tmp, *args, threshold_ms=100)
            if ag is not None:
                ag.stop()  # connected to the dead daemon's socket
            ag = Agents(watch.sock, agents)
            if i == kills:
                before = len(witnessed(out))
                wait_for(
                    "a recovery after the last restart", lambda b=before: len(witnessed(out)) > b
                )
                assert watch.stop() == 0, watch.stderr
                break
            if rng.random() < 0.5:
                before = len(witnessed(out))
                wait_for("a recovery child", lambda b=before: len(witnessed(out)) > b, timeout=30)
            else:
                time.sleep(rng.uniform(0.05, 0.6))
            watch.proc.send_signal(signal.SIGKILL)
            watch.wait()
            survived += 1
    finally:
        if ag is not None:
            ag.stop()
    ran = witnessed(out)
    recorded = spawn_records(audit)
    unrecorded = [c for c, _ in ran if c not in recorded]
    assert not unrecorded, f"{len(unrecorded)} of {len(ran)} children ran with no spawn record"
    v = audit_verify(audit)
    assert v.returncode == 0, v.stdout + v.stderr
    rows = check_tsv(tsv)
    lost = sum(int(r[4]) for r in audit_rows(audit) if r[3] == "gap")
    return {
        "kills": survived,
        "children": len(ran),
        "unrecorded": len(unrecorded),
        "audit_lost_in_gaps": lost,
        "tsv_rows": rows,
    }


def scrape(addr: str) -> dict[str, float]:
    """``name{labels}`` -> value from one authenticated ``/metrics`` scrape."""
    head, _, raw = http_get(addr).partition(b"\r\n\r\n")
    assert head.split(b" ", 2)[1] == b"200", head
    body = raw.decode()
    out = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


@contextmanager
def small_tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of *size* mounted on *where* (needs root: CI runs as root)."""
    where.mkdir(exist_ok=True)
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if res.returncode != 0:
        raise AssertionError(
            f"the full-disk case needs root to mount a tmpfs (uid {os.getuid()}): {res.stderr}"
        )
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(path: Path) -> int:
    """Write *path* until the file system is full; returns the bytes written."""
    n = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        chunk = b"\0" * 4096
        while True:
            try:
                n += os.write(fd, chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
        while True:  # the last partial page
            try:
                n += os.write(fd, b"\0")
            except OSError:
                break
    finally:
        os.close(fd)
    return n


def full_disk(tmp: Path, agents: int = 4, refusals: int = 3) -> dict[str, Any]:
    """Audit log and TSV on a small tmpfs; recoveries running; the disk fills up.
    No recovery child may run without its spawn record; the refusals are
    counted; after space returns, spawns resume; every record that was lost
    is named by a gap record; every TSV row is whole."""
    with small_tmpfs(tmp / "small", "256k") as mnt:
        audit, tsv = mnt / "audit.log", mnt / "events.tsv"
        cmd, out = witness_cmd(tmp)  # the witness writes outside the tmpfs
        tok = token_file(tmp)
        watch = Watch(
            tmp,
            "--recovery-exec", cmd, "--recovery-debounce-ms", "0",
            "--recovery-audit-file", str(audit), "--export-file", str(tsv),
            "--prom-addr", "127.0.0.1:0", "--prom-token-file", str(tok),
            "--prom-rate-limit-per-sec", "1000", "--prom-rate-limit-burst", "1000",
            threshold_ms=100,
        )  # fmt: skip
        assert watch.addr is not None
        ag = Agents(watch.sock, agents)
        refused_key = 'varta_recovery_outcomes_total{outcome="refused_audit_unavailable"}'
        try:
            wait_for("recoveries with room on disk", lambda: len(witnessed(out)) >= 3)
            filled = fill(mnt / "filler")
            wait_for(
                "recoveries refused on the full disk",
                lambda: scrape(watch.addr or "").get(refused_key, 0) >= refusals,
                timeout=60,
            )
            during = len(witnessed(out))
            (mnt / "filler").unlink()
            wait_for("recoveries after space returned", lambda: len(witnessed(out)) > during + 2)
            ag.stop()
            m = scrape(watch.addr)
        finally:
            ag.stop()
            code = watch.stop()
        assert code == 0, watch.stderr
        assert "refused_audit_unavailable (No space left on device" in watch.stderr, watch.stderr
        ran = witnessed(out)
        recorded = spawn_records(audit)
        unrecorded = [c for c, _ in ran if c not in recorded]
        assert not unrecorded, f"{len(unrecorded)} of {len(ran)} children ran unaudited"
        v = audit_verify(audit)
        assert v.returncode == 0, v.stdout + v.stderr
        lost = sum(int(r[4]) for r in audit_rows(audit) if r[3] == "gap")
        dropped = m.get("varta_recovery_audit_dropped_total", 0)
        assert lost == dropped, (lost, dropped)
        strict = audit_verify(audit, strict=True)
        assert strict.returncode == (3 if lost else 0), strict.stdout + strict.stderr
        rows = check_tsv(tsv)
        return {
            "filled_bytes": filled,
            "children": len(ran),
            "unrecorded": len(unrecorded),
            "refused_audit_unavailable": int(m.get(refused_key, 0)),
            "audit_dropped": int(dropped),
            "audit_lost_in_gaps": lost,
            "tsv_rows": rows,
            "tsv_rows_dropped": int(m.get("varta_export_rows_dropped_total", 0)),
        }


# An agent that sends argv[2] beats every argv[3] ms and prints how many were sent.
COUNTING_AGENT = """
import sys, time, varta
sent = 0
with varta.Varta.connect(sys.argv[1]) as agent:
    for _ in range(int(sys.argv[2])):
        if agent.beat("ok", 2):
            sent += 1
        time.sleep(int(sys.argv[3]) / 1000)
print(sent)
"""

OPS = Path(__file__).resolve().parents[2] / "ops"


def _read_generations(path: Path) -> list[Path]:
    """PATH's generations oldest first, gzip ones unpacked beside them."""
    import gzip

    gens: list[tuple[int, Path]] = []
    for p in path.parent.iterdir():
        name = p.name
        if name == path.name:
            gens.append((0, p))
        elif name.startswith(path.name + ".") and not name.endswith(".plain"):
            num = name[len(path.name) + 1 :].removesuffix(".gz")
            if num.isdigit():
                if name.endswith(".gz"):
                    plain = p.with_name(p.name[:-3] + ".plain")
                    plain.write_bytes(gzip.decompress(p.read_bytes()))
                    p = plain
                gens.append((int(num), p))
    return [p for _, p in sorted(gens, key=lambda g: -g[0])]


def logrotate_under_load(
    tmp: Path, rotations: int = 4, beats: int = 300, beaters: int = 3
) -> dict[str, Any]:
    """The shipped ``ops/logrotate/varta-watch`` (paths and the reload command
    pointed at this test's daemon) run *rotations* times by logrotate while
    agents beat and recoveries run. Every beat sent has exactly one row across
    the TSV generations; the audit generations verify as one chain with no
    gap; every recovery child has its spawn record."""
    logrotate = "/usr/sbin/logrotate"
    assert os.path.exists(logrotate), "logrotate is not installed (scripts/test.sh installs it)"
    tsv, audit = tmp / "events.tsv", tmp / "recovery-audit.log"
    cmd, out = witness_cmd(tmp)
    watch = Watch(
        tmp,
        "--recovery-exec", cmd, "--recovery-debounce-ms", "0",
        "--recovery-audit-file", str(audit), "--export-file", str(tsv),
        "--max-beat-rate", "0",  # every beat is a row: none rate-limited
        threshold_ms=100,
    )  # fmt: skip
    conf_text = (OPS / "logrotate" / "varta-watch").read_text()
    conf_text = conf_text.replace("/var/log/varta/events.tsv", str(tsv))
    conf_text = conf_text.replace("/var/lib/varta/recovery-audit.log", str(audit))
    conf_text = conf_text.replace(
        "systemctl reload varta-watch.service", f"kill -HUP {watch.proc.pid}"
    )
    assert str(tsv) in conf_text and str(watch.proc.pid) in conf_text
    conf = tmp / "logrotate.conf"
    conf.write_text(conf_text)
    conf.chmod(0o644)
    cyc = Agents(watch.sock, 2)
    counting = [
        subprocess.Popen(
            [sys.executable, "-c", COUNTING_AGENT, str(watch.sock), str(beats), "5"],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(beaters)
    ]
    done_rotations = 0
    try:
        wait_for("rows and a recovery", lambda: tsv.exists() and witnessed(out))
        for _ in range(rotations):
            # logrotate skips an empty file (notifempty): wait for a row first.
            wait_for("rows in the current export file", lambda: tsv.stat().st_size > 0)
            ino = tsv.stat().st_ino
            r = subprocess.run(
                [logrotate, "-f", "-s", str(tmp / "logrotate.state"), str(conf)],
                capture_output=True,
                text=True,
                check=False,
            )
            assert r.returncode == 0, r.stderr
            wait_for(
                "the reopened export file", lambda i=ino: tsv.exists() and tsv.stat().st_ino != i
            )
            wait_for("the reopened audit file", lambda: audit.exists())
            done_rotations += 1
        sent = {p.pid: int(p.communicate(timeout=120)[0]) for p in counting}
    finally:
        for p in counting:
            if p.poll() is None:
                p.kill()
                p.wait()
        cyc.stop()
        code = watch.stop()
    assert code == 0, watch.stderr
    assert watch.proc.returncode == 0
    tsv_gens = _read_generations(tsv)
    rows = check_tsv(*tsv_gens)
    got: Counter[int] = Counter()
    for p in tsv_gens:
        for line in p.read_text().splitlines():
            f = line.split("\t")
            # Regular beats only: leaving its with block, an agent also
            # signs off with a terminal frame (docs/verdicts.md).
            if f[1] == "beat" and int(f[2]) in sent and int(f[3]) != varta.NONCE_TERMINAL:
                got[int(f[2])] += 1
    assert dict(got) == sent, f"beats sent {sent}, rows {dict(got)}"
    audit_gens = _read_generations(audit)
    v = audit_verify(*audit_gens, strict=True)
    assert v.returncode == 0, v.stdout + v.stderr
    ran = witnessed(out)
    unrecorded = [c for c, _ in ran if c not in spawn_records(*audit_gens)]
    assert not unrecorded, unrecorded
    return {
        "rotations": done_rotations,
        "tsv_files": len(tsv_gens),
        "beats_sent": sum(sent.values()),
        "beat_rows": sum(got.values()),
        "tsv_rows": rows,
        "audit_files": len(audit_gens),
        "children": len(ran),
    }


# --- full-tier scenarios ------------------------------------------------------------------

# argv[2] agents forked from one process: each gets 3 beats delivered, then
# goes silent (one stall each). A beat refused because the observer's socket
# queue is full (net.unix.max_dgram_qlen, 10 by default) is retried. Prints
# "ready" once all are forked.
STORM = """
import os, random, sys, time, varta
kids = []
for _ in range(int(sys.argv[2])):
    pid = os.fork()
    if pid == 0:
        try:
            with varta.Varta.connect(sys.argv[1]) as a:
                sent = 0
                while sent < 3:
                    sent += bool(a.beat("ok", 1))
                    time.sleep(random.uniform(0.005, 0.03))
                time.sleep(3600)
        finally:
            os._exit(0)
    kids.append(pid)
print("ready", flush=True)
for k in kids:
    os.waitpid(k, 0)
"""


def _storm(sock: Path, n: int) -> subprocess.Popen[str]:
    p = subprocess.Popen(
        [sys.executable, "-c", STORM, str(sock), str(n)],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    return p


def _end_storm(p: subprocess.Popen[str]) -> None:
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    p.wait()


def recovery_storm(tmp: Path, agents: int = 200, hang: bool = False) -> dict[str, Any]:
    """*agents* agents stall at once; each gets exactly one recovery, every one
    audited (spawn before it ran, complete after). With *hang* the children
    never exit and the timeout kills every one of them."""
    cmd, out = witness_cmd(tmp, 3600.0 if hang else 0.0)
    audit = tmp / "audit.log"
    extra = ("--recovery-timeout-ms", "2000") if hang else ()
    watch = Watch(
        tmp,
        "--recovery-exec", cmd, "--recovery-debounce-ms", "600000",
        "--recovery-audit-file", str(audit), "--tracker-capacity", "1024", *extra,
        threshold_ms=300,
    )  # fmt: skip
    t0 = time.monotonic()
    storm = _storm(watch.sock, agents)
    try:

        def spawns() -> list[list[str]]:
            return [r for r in audit_rows(audit) if r[3] == "spawn"]

        def completes() -> list[list[str]]:
            return [r for r in audit_rows(audit) if r[3] == "complete"]

        wait_for(f"{agents} spawn records", lambda: len(spawns()) >= agents, timeout=300)
        t_spawned = time.monotonic() - t0

        wait_for("every complete record", lambda: len(completes()) >= agents, timeout=300)
        t_done = time.monotonic() - t0
    finally:
        _end_storm(storm)
        code = watch.stop(timeout=60)
    assert code == 0, watch.stderr
    ran = witnessed(out)
    rows = audit_rows(audit)
    spawned = {int(r[5]) for r in rows if r[3] == "spawn"}
    done = [r for r in rows if r[3] == "complete"]
    unrecorded = [c for c, _ in ran if c not in spawned]
    assert not unrecorded, f"{len(unrecorded)} children ran with no spawn record"
    assert len(spawned) == agents, len(spawned)
    assert len({int(r[4]) for r in rows if r[3] == "spawn"}) == agents, "an agent recovered twice"
    # A hung child may be killed by the timeout before its program got to write
    # (a loaded machine); every child that exits by itself has written.
    assert len(ran) == agents or (hang and len(ran) <= agents), (len(ran), agents)
    statuses = Counter(r[6] for r in done)
    if hang:
        assert statuses == {"killed": agents}, statuses
    else:
        assert statuses == {"reaped": agents}, statuses
    v = audit_verify(audit, strict=True)
    assert v.returncode == 0, v.stdout + v.stderr
    return {
        "agents": agents,
        "spawn_records": len(spawned),
        "children_witnessed": len(ran),
        "unrecorded": len(unrecorded),
        "killed": statuses.get("killed", 0),
        "all_spawned_s": round(t_spawned, 1),
        "all_complete_s": round(t_done, 1),
    }


def metrics_abuse(tmp: Path, attackers: int = 200, seconds: float = 5.0) -> dict[str, Any]:
    """Unauthenticated floods, slowloris and oversized requests on ``/metrics``
    while an agent stalls: good scrapes keep being answered, the stall is
    still seen, the daemon exits 0."""
    tok = token_file(tmp)
    tsv = tmp / "events.tsv"
    watch = Watch(
        tmp,
        "--prom-addr", "127.0.0.1:0", "--prom-token-file", str(tok),
        "--prom-rate-limit-per-sec", "0", "--prom-rate-limit-burst", "0",
        "--export-file", str(tsv),
    )  # fmt: skip
    assert watch.addr is not None
    host, port = watch.addr.rsplit(":", 1)
    stop = threading.Event()
    sent = Counter[str]()

    def flood(kind: str) -> None:
        while not stop.is_set():
            try:
                with socket.create_connection((host, int(port)), timeout=2) as s:
                    if kind == "no_token":
                        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                    elif kind == "bad_token":
                        s.sendall(
                            b"GET /metrics HTTP/1.1\r\nAuthorization: Bearer "
                            + b"0" * 64
                            + b"\r\n\r\n"
                        )
                    elif kind == "oversized":
                        s.sendall(b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 65536 + b"\r\n\r\n")
                    else:  # slowloris: a byte at a time, never finishing
                        for _ in range(20):
                            if stop.is_set():
                                break
                            s.sendall(b"G")
                            time.sleep(0.2)
                    sent[kind] += 1
                    try:
                        s.recv(65536)
                    except OSError:
                        pass
            except OSError:
                sent[kind + "_refused"] += 1

    kinds = ["no_token", "bad_token", "oversized", "slowloris"]
    threads = [
        threading.Thread(target=flood, args=(kinds[i % len(kinds)],), daemon=True)
        for i in range(attackers)
    ]
    good = ok = 0
    worst = 0.0
    with varta.Varta.connect(str(watch.sock)) as agent:
        agent.beat("ok", 1)
        for t in threads:
            t.start()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            t1 = time.monotonic()
            good += 1
            try:
                body = http_get(watch.addr)
                ok += body.startswith(b"HTTP/1.0 200 ")
            except OSError:
                pass
            worst = max(worst, time.monotonic() - t1)
            time.sleep(0.1)
        stop.set()
        for t in threads:
            t.join(timeout=10)
    m = scrape(watch.addr)
    code = watch.stop()
    assert code == 0, watch.stderr
    stalls = sum(1 for line in tsv.read_text().splitlines() if line.split("\t")[1] == "stall")
    assert stalls >= 1, "the agent's stall was not seen during the abuse"
    assert ok >= 1, "every good scrape was refused under abuse"
    return {
        "abusive_connections": sum(v for k, v in sent.items() if not k.endswith("_refused")),
        "good_scrapes": f"{ok}/{good}",
        "worst_scrape_s": round(worst, 2),
        "auth_failures": int(m.get("varta_prom_auth_failures_total", 0)),
        "dropped": int(
            sum(v for k, v in m.items() if k.startswith("varta_prom_connections_dropped"))
        ),
        "stall_seen": stalls >= 1,
    }


def signals_keep_the_daemon(tmp: Path) -> dict[str, Any]:
    """SIGHUP (after the export file was renamed away), SIGUSR1 and SIGUSR2: the
    daemon keeps running, writes the next row to a new export file, and stops
    cleanly on SIGTERM (exit 0, socket removed). Before issue 11 SIGHUP killed
    it (exit 129, socket left behind)."""
    tsv = tmp / "e.tsv"
    watch = Watch(tmp, "--export-file", str(tsv))
    try:
        with varta.Varta.connect(str(watch.sock)) as agent:
            assert agent.beat("ok", 1)
            wait_for("the first row", lambda: tsv.exists() and tsv.read_bytes().endswith(b"\n"))
            os.rename(tsv, tmp / "e.tsv.1")
            for sig in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP):
                watch.proc.send_signal(sig)
            wait_for("the reopened export file", tsv.exists)
            assert agent.beat("ok", 2)
            wait_for("a row in the new file", lambda: b"\tbeat\t" in tsv.read_bytes())
    finally:
        code = watch.stop()
    assert code == 0, (code, watch.stderr)
    assert not watch.sock.exists()
    assert "SIGHUP: files reopened" in watch.stderr
    return {"rows_old": check_tsv(tmp / "e.tsv.1"), "rows_new": check_tsv(tsv)}
