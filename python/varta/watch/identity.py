"""How the daemon names an agent (``docs/observer.md#agent-identity``).

Works on anything with the identity attributes of ``varta.Stall`` and
``varta.AgentInfo`` — ``pid``, ``peer``, ``comm``, ``cmdline``, ``unit``,
``container`` (missing ones count as unknown)::

    worker.py[6172] in ingest.service
    python3[6172] in container 4f2b9c1d7e8a
    pid 4242 on 127.0.0.2
    pid 6172                       (nothing known)
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing is not loaded at run time (docs/operations.md#resources)
if TYPE_CHECKING:
    from typing import Optional

FIELDS = ("peer", "comm", "unit", "container", "cmdline")


def _get(obj: object, name: str) -> Optional[str]:
    value = getattr(obj, name, None)
    return value if isinstance(value, str) and value else None


def name_of(obj: object) -> Optional[str]:
    """The name a person knows the process by: the first word of its short
    command line (the script, for an interpreter), else its comm."""
    cmdline = _get(obj, "cmdline")
    if cmdline:
        first = cmdline.split(" ", 1)[0]
        if first:
            return first
    return _get(obj, "comm")


def agent_label(obj: object) -> str:
    """``worker.py[6172] in ingest.service``, ``pid 4242 on 127.0.0.2``, or
    plain ``pid 6172`` when nothing is known."""
    pid = int(getattr(obj, "pid", 0))
    name = name_of(obj)
    out = f"{name}[{pid}]" if name else f"pid {pid}"
    unit = _get(obj, "unit")
    container = _get(obj, "container")
    if unit:
        out += f" in {unit}"
    elif container:
        out += f" in container {container}"
    peer = _get(obj, "peer")
    if peer:
        out += f" on {peer}"
    return out


def identity_fields(obj: object) -> dict[str, str]:
    """The known identity attributes, for structured logs and records."""
    return {k: v for k in FIELDS if (v := _get(obj, k)) is not None}


__all__ = ["FIELDS", "agent_label", "identity_fields", "name_of"]
