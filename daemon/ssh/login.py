"""Opening one SSH connection to a remote computer, and the errors that say why it could not be
used: the host key verified against `known_hosts`, the login with the configured keys or
agent, then the SFTP service every computer must offer. `Computer` (computer.py) decides when
to connect and what to do with a link; this module only makes one.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import trio

from daemon.config.file import ComputerConfig
from daemon.execution.local import SpawnError
from daemon.ssh.bridge import Bridge, BridgeClosed


class ComputerError(SpawnError):
    """A remote computer could not be used; the message names it. Transient (the network,
    the host being down) unless a subclass says otherwise."""

    transient = True


class HostKeyError(ComputerError):
    """The host key is unknown or changed: refused, never retried on its own."""

    transient = False


class LoginRefused(ComputerError):
    """Authentication failed, or the configured keys or known_hosts cannot be read."""

    transient = False


class ComputerRemoved(ComputerError):
    transient = False


@dataclass(slots=True, eq=False)
class Link:
    """One live asyncssh connection with what we learnt on it."""

    conn: Any
    client: Any
    lost: list[BaseException | None] = field(default_factory=list)
    """What asyncssh told the client when the connection ended."""
    sftp: Any = None
    home: str = ""
    closing: bool = False
    members: set[Any] = field(default_factory=set)
    """Processes started on this connection that have not ended yet."""
    starting: int = 0
    """Processes being started on this connection (a channel reserved, not adopted yet)."""
    capacity: int | None = None
    """How many long-lived channels the server let us open here, once it refused one
    (sshd's `MaxSessions`); None while no refusal was seen."""
    main: bool = True
    """The computer's main connection (SFTP, reclaim, sampling) rather than an extra one
    opened for more processes."""
    forwards: dict[int, int] = field(default_factory=dict)
    """Remote port forwards open on this connection: local port -> the port that reaches
    it on the computer's loopback (they end with the connection)."""
    forwarding: trio.Lock = field(default_factory=trio.Lock)
    """Held while a forward is being opened here (one request per port, not one per
    caller)."""


def describe_error(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    text = str(reason or exc).strip()
    if not text:
        text = type(exc).__name__
    return text


def known_hosts_path(value: str | None) -> str | None:
    """The file to verify host keys against; None only when explicitly disabled."""
    if value is None or value == "":
        return None
    return os.path.expanduser(value)


async def open_link(label: str, cfg: ComputerConfig, bridge: Bridge, *,
                    sftp: bool = True) -> tuple[Link, float]:
    """Connect, verify the host key, log in and (for a main connection) start SFTP: a live
    link and how long it took, or a `ComputerError` saying what to do."""
    import asyncssh

    known = known_hosts_path(cfg.known_hosts)
    if known is not None and not os.path.exists(known):
        raise HostKeyError(
            f"cannot verify the host key of {label}: known_hosts file {known} does "
            f"not exist (add the host with `ssh-keyscan -p {cfg.port} {cfg.host} >> "
            f"{known}` after checking the fingerprint)")
    for path in cfg.identity_files:
        if not os.path.exists(os.path.expanduser(path)):
            raise LoginRefused(f"identity file {path} of {label} does not exist")
    offered: list[Any] = []
    lost: list[BaseException | None] = []

    class Client(asyncssh.SSHClient):
        def validate_host_public_key(self, host: str, addr: str, port: int,
                                     key: Any) -> bool:
            offered.append(key)
            return False

        def connection_lost(self, exc: Exception | None) -> None:
            lost.append(exc)

    options: dict[str, Any] = {
        "port": cfg.port, "known_hosts": known, "config": None,
        "keepalive_interval": float(cfg.keepalive), "keepalive_count_max": 3,
        "connect_timeout": float(cfg.connect_timeout),
        "password_auth": False, "kbdint_auth": False, "gss_auth": False,
    }
    if cfg.user:
        options["username"] = cfg.user
    if cfg.identity_files:
        options["client_keys"] = [os.path.expanduser(p) for p in cfg.identity_files]
    if not cfg.use_agent:
        options["agent_path"] = None
    started = time.monotonic()
    try:
        with trio.fail_after(float(cfg.connect_timeout) + 5):
            conn, client = await bridge.call(asyncssh.create_connection, Client,
                                                  cfg.host, **options)
    except asyncssh.HostKeyNotVerifiable:
        raise HostKeyError(host_key_problem(label, cfg, known, offered)) from None
    except asyncssh.PermissionDenied as exc:
        who = cfg.user or "(the local user name)"
        raise LoginRefused(f"{label} refused the login of {who}: "
                           f"{describe_error(exc)}; check identity_files / use_agent"
                           ) from None
    except (asyncssh.KeyImportError, asyncssh.KeyEncryptionError) as exc:
        raise LoginRefused(f"cannot use the identity files of {label}: "
                           f"{describe_error(exc)}") from None
    except trio.TooSlowError:
        raise ComputerError(f"cannot connect to {label}: no answer within "
                            f"{float(cfg.connect_timeout):g}s") from None
    except (OSError, asyncssh.Error, TimeoutError, BridgeClosed) as exc:
        raise ComputerError(f"cannot connect to {label}: "
                            f"{describe_error(exc)}") from None
    link = Link(conn=conn, client=client, lost=lost, main=sftp)
    if not sftp:
        return link, time.monotonic() - started
    try:
        link.sftp = await bridge.call(conn.start_sftp_client)
        link.home = str(await bridge.call(link.sftp.realpath, "."))
    except (OSError, asyncssh.Error, BridgeClosed) as exc:
        conn.close()
        raise ComputerError(f"{label} offers no SFTP service: "
                            f"{describe_error(exc)}") from None
    return link, time.monotonic() - started

def host_key_problem(label: str, cfg: ComputerConfig, known: str | None,
                     offered: list[Any]) -> str:
    """Why the host key was refused (unknown or CHANGED), with the fix."""
    import asyncssh

    key = offered[-1] if offered else None
    shown = (f"{key.get_algorithm()} key {key.get_fingerprint('sha256')}"
             if key is not None else "a key")
    trusted: list[Any] = []
    if known is not None:
        try:
            trusted = list(asyncssh.match_known_hosts(known, cfg.host, "", cfg.port)[0])
        except (OSError, ValueError, asyncssh.Error):
            trusted = []
    if trusted:
        return (f"host key of {label} CHANGED: it offered {shown}, which does not "
                f"match its entry in {known}. This may be an attack (someone in the "
                "middle); if the host really was reinstalled, replace its line there")
    return (f"host key of {label} is unknown: {known} has no entry for it; it "
            f"offered {shown}. Verify that fingerprint, then add the host (e.g. "
            f"`ssh-keyscan -p {cfg.port} {cfg.host} >> {known}`)")
