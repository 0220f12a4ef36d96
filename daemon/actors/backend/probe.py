"""Asking an agent about itself without a chat: start it, `initialize`, stop it (for
`describe_agent` and `stoker doctor`); and what Stoker tells every agent at `initialize`.
"""

from __future__ import annotations

import collections
import contextlib
import os
import secrets
from typing import Any

import msgspec
import trio

from daemon.acp import types as acp
from daemon.acp.lines import LineTooLong
from daemon.acp.rpc import METHOD_NOT_FOUND, ConnectionLost, JsonRpcConnection, RpcError
from daemon.config.agents import AgentSpec
from daemon.errors import AgentUnavailable
from daemon.execution.local import Executor, ExitStatus, SpawnError
from daemon.version import VERSION
from protocol import messages as m

CLIENT_CAPABILITIES = {
    "fs": {"readTextFile": True, "writeTextFile": True},
    "terminal": True,
}
INITIALIZE_PARAMS: dict[str, Any] = {
    "protocolVersion": acp.PROTOCOL_VERSION,
    "clientCapabilities": CLIENT_CAPABILITIES,
    "clientInfo": {"name": "stoker", "title": "Stoker", "version": VERSION},
}
"""What we tell an agent at `initialize`, the same for a generation and a probe."""


def description_of(agent: str, info: dict[str, Any]) -> m.AgentDescription:
    """`describe_agent`'s answer from an `initialize` result: a running actor's recorded
    one and a probe's raw one have the same keys."""
    return m.AgentDescription(
        agent=agent, capabilities=info.get("agentCapabilities") or {},
        agent_info=info.get("agentInfo") or {},
        auth_methods=info.get("authMethods") or [],
        protocol_version=int(info.get("protocolVersion", 1)))


def probe_directory(spec: AgentSpec) -> str:
    """Where a probe runs: the home directory ("~" on a remote computer is its login
    directory, which its executor expands)."""
    return os.path.expanduser("~") if spec.computer is None else "~"


def agent_env(spec: AgentSpec) -> dict[str, str]:
    """The daemon's environment with the agent's own variables on top: the same for its
    generations, their terminals and a probe."""
    env = dict(os.environ)
    env.update(spec.env)
    return env


async def probe_agent(executor: Executor, spec: AgentSpec, *, cwd: str, timeout: float,
                      grace: float, instance: str) -> dict[str, Any]:
    """Start the agent, ask `initialize`, stop it: what it says about itself."""
    env = agent_env(spec)
    marker = f"{instance}:probe:{spec.name}:{secrets.token_hex(4)}"
    try:
        proc = await executor.spawn(list(spec.command), env=env, cwd=cwd, actor=marker)
    except SpawnError as exc:
        raise AgentUnavailable(f"agent {spec.name!r} cannot start: {exc}") from None

    async def ignore_request(method: str, params: msgspec.Raw | None) -> Any:
        raise RpcError(METHOD_NOT_FOUND, f"method not found: {method}")

    rpc = JsonRpcConnection(proc.stdin, proc.stdout, on_request=ignore_request,
                            on_notification=lambda method, params: None,
                            name=f"probe {spec.name}")
    info: dict[str, Any] = {}
    failure: str | None = None
    stderr_tail: collections.deque[str] = collections.deque(maxlen=3)
    status: ExitStatus | None = None
    async def read() -> None:
        nonlocal failure
        try:
            await rpc.serve()
        except LineTooLong as exc:
            # Inside the nursery a raise would reach our caller as an ExceptionGroup.
            failure = f"agent protocol error: {exc}"

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            nursery.start_soon(_discard, proc.stderr, stderr_tail)
            try:
                raw = await rpc.request("initialize", INITIALIZE_PARAMS, timeout=timeout)
                info = msgspec.json.decode(raw)
            except (RpcError, ConnectionLost) as exc:
                failure = failure or str(exc)
            except trio.TooSlowError:
                failure = f"no answer within {timeout:g}s"
            finally:
                nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(grace + 5):
            status = await proc.stop(grace)
    if failure is not None:
        # Raised here, not inside the nursery: strict exception groups would wrap it, and
        # callers (describe_agent, doctor) catch AgentUnavailable itself.
        why = f"; agent {status.describe()}" if status is not None else ""
        tail = f"; stderr: {' | '.join(stderr_tail)}" if stderr_tail else ""
        raise AgentUnavailable(
            f"agent {spec.name!r} did not answer initialize: {failure}{why}{tail}")
    return info if isinstance(info, dict) else {}


async def _discard(stream: trio.abc.ReceiveStream,
                   tail: collections.deque[str] | None = None) -> None:
    """Drain a stream; keep its last lines in `tail` (they say why an agent gave up)."""
    pending = b""
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        while data := await stream.receive_some(65536):
            if tail is None:
                continue
            *lines, pending = (pending + data).split(b"\n")
            pending = pending[-4096:]
            tail.extend(x.decode("utf-8", "replace").strip()[:300] for x in lines if x.strip())
    if tail is not None and pending.strip():
        tail.append(pending.decode("utf-8", "replace").strip()[:300])
