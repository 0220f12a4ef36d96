"""The client side of ACP that the agent calls: `fs/*` (confined to the chat's directory)
and `terminal/*` (real processes), answered for the current session only; permission
requests go on to `permissions`.

The executor's exceptions become JSON-RPC errors in one place (`agent_errors`), so every
service answers the same problem with the same code.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import msgspec

from daemon.acp import types as acp
from daemon.acp.rpc import INVALID_PARAMS, METHOD_NOT_FOUND, RESOURCE_NOT_FOUND, RpcError
from daemon.actors.backend.core import Core
from daemon.execution.fs import AccessDenied, FileProblem
from daemon.execution.local import SpawnError
from daemon.execution.terminals import TerminalLimit, TerminalManager, UnknownTerminal


@contextmanager
def agent_errors() -> Iterator[None]:
    """Map the executor's exceptions to what the agent is told."""
    try:
        yield
    except AccessDenied as exc:
        raise RpcError(INVALID_PARAMS, f"access denied: {exc}") from None
    except (FileProblem, UnknownTerminal) as exc:
        raise RpcError(RESOURCE_NOT_FOUND, str(exc)) from None
    except (SpawnError, TerminalLimit) as exc:
        raise RpcError(INVALID_PARAMS, str(exc)) from None


class AgentServices:
    """Serves one actor's agent its `fs/*` and `terminal/*` requests."""

    def __init__(self, core: Core) -> None:
        self._core = core

    def _check_session(self, session_id: str) -> None:
        expected = self._core.session_id
        if expected is not None and session_id != expected:
            raise RpcError(INVALID_PARAMS, f"unknown session {session_id!r}")

    async def serve(self, method: str, params: msgspec.Raw | None) -> Any:
        """The answer to a request from the agent; `RpcError` if there is none."""
        core = self._core
        core.touch()
        if method == "session/request_permission":
            return await core.permissions.request(params)
        terminals = core.terminals
        with agent_errors():
            if method == "fs/read_text_file":
                read = msgspec.json.decode(params or b"{}", type=acp.ReadTextFile)
                self._check_session(read.session_id)
                files = self._core.executor.files(self._core.cwd)
                return {"content": await files.read_text(read.path, read.line, read.limit)}
            if method == "fs/write_text_file":
                write = msgspec.json.decode(params or b"{}", type=acp.WriteTextFile)
                self._check_session(write.session_id)
                await self._core.executor.files(self._core.cwd).write_text(write.path,
                                                                          write.content)
                return {}
            if method.startswith("terminal/"):
                return await self._terminal(method, params, terminals)
        raise RpcError(METHOD_NOT_FOUND, f"method not found: {method}")

    async def _terminal(self, method: str, params: msgspec.Raw | None,
                        terminals: TerminalManager | None) -> Any:
        if terminals is None:
            raise RpcError(METHOD_NOT_FOUND, "terminals are not available")
        if method == "terminal/create":
            req = msgspec.json.decode(params or b"{}", type=acp.CreateTerminal)
            self._check_session(req.session_id)
            env = {e.name: e.value for e in req.env}
            terminal_id = await terminals.create(req.command, req.args, env, req.cwd,
                                                 req.output_byte_limit)
            return {"terminalId": terminal_id}
        ref = msgspec.json.decode(params or b"{}", type=acp.TerminalRef)
        self._check_session(ref.session_id)
        if method == "terminal/output":
            return terminals.output(ref.terminal_id)
        if method == "terminal/wait_for_exit":
            return await terminals.wait_for_exit(ref.terminal_id)
        if method == "terminal/kill":
            await terminals.kill(ref.terminal_id)
            return {}
        if method == "terminal/release":
            await terminals.release(ref.terminal_id)
            return {}
        raise RpcError(METHOD_NOT_FOUND, f"method not found: {method}")
