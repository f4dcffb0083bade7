"""``varta-watch`` startup (``docs/observer.md#signals-and-shutdown``): the error
that ends it (exit 1), the recovery configuration, the token file, the network
listeners' options and key files, the descriptor limit, the forensics directory,
and what is logged about the listeners."""

from __future__ import annotations

import contextlib
import errno
import os

import varta

from .config import WatchConfig
from .logsetup import log
from .metrics_server import parse_hex32
from .recovery import RecoveryCommand, RecoveryConfig
from .secretfile import read_secret_file

TYPE_CHECKING = False  # typing is not loaded at run time (docs/operations.md#resources)
if TYPE_CHECKING:
    from typing import Callable, Optional, TypeVar

    T = TypeVar("T")


class StartupError(Exception):
    """A runtime failure before the loop starts (exit 1, message, no help)."""


def raise_fd_limit(capacity: int) -> None:
    """Let the observer hold one pidfd per tracked agent (its exit watch):
    raise the soft ``RLIMIT_NOFILE`` toward the hard limit as needed."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = capacity + 1024
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        if new > soft:
            with contextlib.suppress(OSError, ValueError):
                resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        name = os.fsdecode(exc.filename) if exc.filename is not None else None
        return f"{name}: {exc.strerror}" if name else exc.strerror
    return str(exc) or type(exc).__name__


def _listen_error(cfg: WatchConfig, exc: OSError) -> str:
    """Name the listener that failed: the UDP port, a missing socket directory, or the socket."""
    if cfg.udp_port is not None and "UDP" in str(exc):
        where = f"{cfg.effective_udp_bind_addr}:{cfg.udp_port}"
        why = exc.strerror or str(exc)
        if exc.errno == errno.EADDRINUSE or "in use" in why.lower():
            why = "address already in use (another process has this UDP port)"
        return f"cannot listen on UDP {where} (--udp-port {cfg.udp_port}): {why}"
    directory = os.path.dirname(os.path.abspath(cfg.socket))
    if exc.errno == errno.ENOENT and not os.path.isdir(directory):
        return (
            f"cannot listen on {cfg.socket}: socket directory {directory} does not exist "
            "(create it first, e.g. RuntimeDirectory= in the systemd unit)"
        )
    return f"cannot listen on {cfg.socket}: {_reason(exc)}"


def _log_listeners(cfg: WatchConfig, obs: object) -> None:
    """One startup line per listener the observer opened."""
    log.info(f"listening on unix datagram socket {cfg.socket} (mode {cfg.socket_mode:04o})")
    udp = getattr(obs, "udp_address", None)
    if cfg.udp_port is not None:
        host, port = udp if udp is not None else (cfg.effective_udp_bind_addr, cfg.udp_port)
        kind = "secure (ChaCha20-Poly1305)" if cfg.has_keys else "plaintext"
        shown = f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
        log.info(f"listening on UDP {shown} ({kind})")


# --- startup helpers -------------------------------------------------------------------


def recovery_config(cfg: WatchConfig) -> Optional[RecoveryConfig]:
    """Load the recovery command (after the bind, like upstream): exit 1 on errors."""
    if not cfg.recovery_configured:
        return None
    if cfg.recovery_exec is not None and cfg.recovery_exec_file is not None:
        raise StartupError(
            "MutuallyExclusive: --recovery-exec and --recovery-exec-file; give one of them"
        )

    def make(command: RecoveryCommand, source: str) -> RecoveryConfig:
        return RecoveryConfig(
            command,
            source,
            debounce_ms=cfg.recovery_debounce_ms,
            timeout_ms=cfg.recovery_timeout_ms,
            env=cfg.recovery_env,
            inherit_env=cfg.recovery_inherit_env,
            capture_stdio=cfg.recovery_capture_stdio,
            capture_bytes=cfg.recovery_capture_bytes,
            recovery_on=cfg.recovery_on,
        )

    if cfg.recovery_exec is not None:
        try:
            return make(RecoveryCommand.parse(cfg.recovery_exec), "inline")
        except ValueError as exc:
            raise StartupError(f"--recovery-exec: {exc}") from None
    assert cfg.recovery_exec_file is not None
    try:
        command, source = RecoveryConfig.read_exec_file(cfg.recovery_exec_file)
        return make(command, source)
    except (OSError, ValueError) as exc:
        raise StartupError(f"--recovery-exec-file: {_reason(exc)}") from None


def read_token(path: str) -> bytes:
    try:
        return parse_hex32(read_secret_file(path, "prom token file", max_bytes=4096))
    except (OSError, ValueError) as exc:
        raise StartupError(f"--prom-token-file {path}: {_reason(exc)}") from None


# --- network transports (isolated: wired to the observer by the network stream) -------


def network_kwargs(cfg: WatchConfig) -> dict[str, object]:
    """Observer keyword arguments for ``--udp-port`` and the key files.

    The key files are loaded here (``varta.keys``: secret-file rules, line rules
    of ``docs/protocol.md#key-files``) so an unreadable or malformed one fails startup with
    exit 1 whatever the observer build supports. Keys stay native ``varta.Key``
    objects.
    """
    if cfg.udp_port is None:
        return {}
    from .. import keys as vkeys

    def load(flag: str, path: str, loader: Callable[[str], T]) -> T:
        try:
            return loader(path)
        except (OSError, ValueError) as exc:
            raise StartupError(f"{flag} {path}: {_reason(exc)}") from None

    shared: list[varta.Key] = []
    if cfg.key_file is not None:
        shared.append(load("--key-file", cfg.key_file, vkeys.load_key_file))
    for path in cfg.accepted_key_files:
        shared += load("--accepted-key-file", path, vkeys.load_accepted_key_file)
    if len(shared) > vkeys.MAX_SHARED_KEYS:
        raise StartupError(
            f"{len(shared)} shared keys (--key-file + --accepted-key-file); "
            f"at most {vkeys.MAX_SHARED_KEYS}"
        )
    master = None
    if cfg.master_key_file is not None:
        master = load("--master-key-file", cfg.master_key_file, vkeys.load_master_key_file)
    secure = bool(shared) or master is not None
    if secure:
        trusted = cfg.secure_udp_i_accept_recovery_on_unauthenticated_transport
    else:
        trusted = cfg.plaintext_udp_i_accept_recovery_on_unauthenticated_transport
    return {
        "udp_port": cfg.udp_port,
        "udp_bind_addr": cfg.udp_bind_addr,  # None: the core's default
        "keys": shared,
        "master_key": master,
        "plaintext_udp": not secure,
        "udp_trust": "operator" if trusted else "untrusted",
    }


def _prepare_forensics_dir(path: str) -> None:
    """``--forensics-dir``: created (mode 0700) when missing; must be a
    writable directory (docs/finding-hangs.md#the-daemon)."""
    if os.path.lexists(path) and not os.path.isdir(path):
        raise StartupError(f"--forensics-dir {path}: not a directory")
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise StartupError(f"--forensics-dir {path}: {exc.strerror or exc}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise StartupError(f"--forensics-dir {path}: not writable")
