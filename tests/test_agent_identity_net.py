"""Per-host agents over UDP (docs/observer.md#agent-identity): an agent is
(sender, pid), so equal pids on two hosts — here senders bound to 127.0.0.1
and 127.0.0.2 — are two agents over plaintext and secure UDP alike; each
stalls on its own and both count against the tracker capacity, while the
Unix socket keeps pid identity."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from typing import Any, Callable

import pytest

import varta
from test_net_observer import KEY_A, MASTER, plain, seal_master, seal_shared, vkey
from varta import BeatOrigin

PID = 4242
HOSTS = ("127.0.0.1", "127.0.0.2")
THRESHOLD_MS = 400


@pytest.fixture
def senders() -> Iterator[dict[str, socket.socket]]:
    out = {}
    try:
        for host in HOSTS:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((host, 0))
            out[host] = s
        yield out
    finally:
        for s in out.values():
            s.close()


def poll_for(obs: varta.Observer, pred: Callable[[], bool], within: float = 5.0) -> list[Any]:
    seen: list[Any] = []
    end = time.monotonic() + within
    while time.monotonic() < end:
        seen.extend(obs.poll(timeout=0.05))
        if pred():
            return seen
    raise AssertionError(f"condition not met within {within}s; saw {seen!r}")


Seal = Callable[[int, int, bytes], bytes]


def PLAIN(counter: int, nonce: int, iv: bytes) -> bytes:
    return plain(PID, nonce)


def SHARED(counter: int, nonce: int, iv: bytes) -> bytes:
    return seal_shared(KEY_A, iv, counter, plain(PID, nonce))


def MASTER_SEAL(counter: int, nonce: int, iv: bytes) -> bytes:
    return seal_master(MASTER, PID, iv, counter, plain(PID, nonce))


TRANSPORTS = {
    "plaintext": (dict(plaintext_udp=True), PLAIN),
    "secure": (dict(keys=[vkey(KEY_A)]), SHARED),
    "master": (dict(master_key=vkey(MASTER)), MASTER_SEAL),
}


@pytest.mark.parametrize("transport", sorted(TRANSPORTS))
def test_equal_pids_on_two_hosts_are_two_agents_that_stall_apart(
    transport: str, senders: dict[str, socket.socket]
) -> None:
    kw, seal = TRANSPORTS[transport]
    with varta.Observer(
        None, THRESHOLD_MS, udp_port=0, udp_bind_addr="127.0.0.1", max_beat_rate=0, **kw
    ) as obs:
        assert obs.udp_address is not None
        ivs = {h: os.urandom(8) for h in HOSTS}
        # The second host's nonces run far behind the first's: with pid-only
        # keying its frames were dropped as out of order.
        start = {HOSTS[0]: 1000, HOSTS[1]: 1}
        for i in range(3):
            for h in HOSTS:
                senders[h].sendto(seal(i + 1, start[h] + i, ivs[h]), obs.udp_address)

        def both_tracked() -> bool:
            return all((a := obs.agent(PID, peer=h)) is not None and a.beats == 3 for h in HOSTS)

        poll_for(obs, both_tracked)
        agents = sorted((a.peer, a.pid, a.last_nonce) for a in obs.agents())
        assert agents == [(HOSTS[0], PID, 1002), (HOSTS[1], PID, 3)]
        assert all(a.origin is BeatOrigin.NETWORK_UNVERIFIED for a in obs.agents())
        c = obs.counters()
        assert c["out_of_order"] == 0 and c["secure_replay_refused"] == 0
        # Host 1 keeps beating, host 2 falls silent: only host 2 stalls.
        stalls: list[varta.Stall] = []
        n = 3
        end = time.monotonic() + 4 * THRESHOLD_MS / 1000
        while time.monotonic() < end:
            senders[HOSTS[0]].sendto(
                seal(n + 1, start[HOSTS[0]] + n, ivs[HOSTS[0]]), obs.udp_address
            )
            n += 1
            stalls.extend(e for e in obs.poll(timeout=0.05) if isinstance(e, varta.Stall))
        assert [(s.pid, s.peer) for s in stalls] == [(PID, HOSTS[1])]
        one = obs.agent(PID, peer=HOSTS[0])
        two = obs.agent(PID, peer=HOSTS[1])
        assert one is not None and not one.stalled and one.stalls == 0
        assert two is not None and two.stalled and two.stalls == 1
        rows = obs.pid_rows()
        assert [(pid, peer) for pid, peer, _unit, _comm in rows.identities()] == [
            (PID, HOSTS[0]),
            (PID, HOSTS[1]),
        ]


def test_capacity_counts_each_host_s_agent(senders: dict[str, socket.socket]) -> None:
    with varta.Observer(
        None, 10_000, udp_port=0, udp_bind_addr="127.0.0.1", plaintext_udp=True, capacity=1
    ) as obs:
        assert obs.udp_address is not None
        senders[HOSTS[0]].sendto(plain(PID, 1), obs.udp_address)
        poll_for(obs, lambda: obs.agent(PID, peer=HOSTS[0]) is not None)
        senders[HOSTS[1]].sendto(plain(PID, 1), obs.udp_address)
        poll_for(obs, lambda: obs.counters()["tracker_capacity_exceeded"] == 1)
        assert obs.agent(PID, peer=HOSTS[1]) is None
        assert [a.peer for a in obs.agents()] == [HOSTS[0]]
        assert obs.counters()["tracker_peer_table_full"] == 0


def test_the_unix_socket_keeps_pid_identity(tmp_path: Any) -> None:
    """Two datagrams from this process over the Unix socket are one agent,
    with no sender (`peer` None) whatever route they took locally."""
    path = str(tmp_path / "obs.sock")
    pid = os.getpid()
    with varta.Observer(path, 10_000, max_beat_rate=0) as obs:
        for nonce in (1, 2):
            u = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            try:
                u.sendto(plain(pid, nonce), path)
            finally:
                u.close()
        poll_for(obs, lambda: (a := obs.agent(pid)) is not None and a.beats == 2)
        (only,) = obs.agents()
        assert only.pid == pid and only.peer is None
        assert only.origin is BeatOrigin.KERNEL_ATTESTED


def test_a_live_secure_session_replayed_from_another_host_is_refused(
    senders: dict[str, socket.socket],
) -> None:
    """A session belongs to the address that first used it: replaying host
    1's frames from host 2 creates no agent (docs/security.md)."""
    with varta.Observer(
        None, 10_000, udp_port=0, udp_bind_addr="127.0.0.1", keys=[vkey(KEY_A)], max_beat_rate=0
    ) as obs:
        assert obs.udp_address is not None
        iv = os.urandom(8)
        frames = [SHARED(i + 1, i + 1, iv) for i in range(3)]
        for f in frames:
            senders[HOSTS[0]].sendto(f, obs.udp_address)
        poll_for(obs, lambda: (a := obs.agent(PID, peer=HOSTS[0])) is not None and a.beats == 3)
        for f in frames:
            senders[HOSTS[1]].sendto(f, obs.udp_address)
        poll_for(obs, lambda: obs.counters()["secure_replay_refused"] == 3)
        assert obs.agent(PID, peer=HOSTS[1]) is None
        assert [a.peer for a in obs.agents()] == [HOSTS[0]]
