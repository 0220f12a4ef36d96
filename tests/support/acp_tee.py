"""Record an ACP conversation: `python tests/support/acp_tee.py PREFIX -- AGENT ARGS...`.

Runs AGENT with its stdin and stdout passed through line by line, appending what goes in to
`PREFIX.in.ndjson` and what comes out to `PREFIX.out.ndjson`. The daemon runs this as the
agent command, so the tests see exactly what the daemon sent to a real agent (and what the
agent answered) and can validate it against the official ACP schema with `ClientSchema`.

It exits as the agent did (same status, or the same signal), forwards SIGTERM, and stays in
the agent's process group, so the daemon's process-group handling is exercised unchanged.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = ROOT / "tests" / "data" / "acp" / "schema.json"


def tee_command(prefix: Path, agent: list[str]) -> list[str]:
    """The argv that runs `agent` under this recorder."""
    return [sys.executable, str(Path(__file__).resolve()), str(prefix), "--", *agent]


def _pump(src: IO[bytes], dst: IO[bytes], log: IO[bytes]) -> None:
    try:
        for line in iter(src.readline, b""):
            log.write(line)
            log.flush()
            try:
                dst.write(line)
                dst.flush()
            except (BrokenPipeError, ValueError, OSError):
                break
    finally:
        try:
            dst.close()
        except OSError:
            pass


def main(argv: list[str]) -> int:
    prefix, sep, *agent = argv
    assert sep == "--", "usage: acp_tee.py PREFIX -- AGENT [ARGS...]"
    assert agent, "usage: acp_tee.py PREFIX -- AGENT [ARGS...]"
    child = subprocess.Popen(agent, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert child.stdin is not None
    assert child.stdout is not None
    # One pair of files per agent process: request ids only pair up within one process.
    stem = f"{prefix}.{os.getpid()}"
    with open(f"{stem}.in.ndjson", "ab") as to_agent, \
            open(f"{stem}.out.ndjson", "ab") as from_agent:
        signal.signal(signal.SIGTERM, lambda *_: child.send_signal(signal.SIGTERM))
        inbound = threading.Thread(target=_pump, args=(sys.stdin.buffer, child.stdin, to_agent),
                                   daemon=True)
        outbound = threading.Thread(target=_pump,
                                    args=(child.stdout, sys.stdout.buffer, from_agent))
        inbound.start()
        outbound.start()
        code = child.wait()
        outbound.join(5)
    if code < 0:
        # SIGKILL/SIGSTOP cannot have handlers (signal.signal raises); they need no reset.
        if -code not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    # Not a normal interpreter exit: the inbound pump may still be blocked reading our
    # stdin (the daemon keeps it open), and finalization would then abort on stdin's
    # buffer lock (SIGABRT) instead of exiting as the agent did. (The outbound pump flushed
    # every line and closed our stdout.)
    os._exit(code)


# --------------------------------------------------------------------------- validation


def traces(directory: Path) -> list[Path]:
    """Every recorded agent process under `directory` (as stems for `read_trace`)."""
    return sorted(Path(str(p)[: -len(".in.ndjson")]) for p in directory.glob("*.in.ndjson"))


def read_trace(prefix: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(messages sent to the agent, messages the agent sent), each in order."""

    def load(path: Path) -> list[dict[str, Any]]:
        if not path.exists():
            return []
        # Complete lines only: the recorder may be writing one as we read (a long line can
        # take more than one write), and the agent may still be talking.
        text = path.read_bytes()
        text = text[: text.rfind(b"\n") + 1]
        return [json.loads(line) for line in text.decode().splitlines() if line.strip()]

    return load(Path(f"{prefix}.in.ndjson")), load(Path(f"{prefix}.out.ndjson"))


class ClientSchema:
    """Validates what a *client* (the daemon) sends to an agent, method by method."""

    REQUESTS = {
        "initialize": "InitializeRequest",
        "authenticate": "AuthenticateRequest",
        "session/new": "NewSessionRequest",
        "session/load": "LoadSessionRequest",
        "session/resume": "ResumeSessionRequest",
        "session/close": "CloseSessionRequest",
        "session/list": "ListSessionsRequest",
        "session/set_mode": "SetSessionModeRequest",
        "session/set_config_option": "SetSessionConfigOptionRequest",
        "session/prompt": "PromptRequest",
    }
    UNSTABLE_REQUESTS = frozenset({"session/set_model"})
    NOTIFICATIONS = {"session/cancel": "CancelNotification"}
    RESULTS = {
        "fs/write_text_file": "WriteTextFileResponse",
        "fs/read_text_file": "ReadTextFileResponse",
        "session/request_permission": "RequestPermissionResponse",
        "terminal/create": "CreateTerminalResponse",
        "terminal/output": "TerminalOutputResponse",
        "terminal/release": "ReleaseTerminalResponse",
        "terminal/wait_for_exit": "WaitForTerminalExitResponse",
        "terminal/kill": "KillTerminalResponse",
    }

    def __init__(self) -> None:
        import jsonschema

        self.root: dict[str, Any] = json.loads(SCHEMA_PATH.read_text())
        self._cls: Any = jsonschema.validators.validator_for(self.root)
        self._validators: dict[str, Any] = {}
        self.checked: dict[str, int] = {}

    def _validator(self, name: str) -> Any:
        found = self._validators.get(name)
        if found is None:
            if name == "Client":
                schema: dict[str, Any] = dict(self.root["anyOf"][1])
            else:
                schema = {"$ref": f"#/$defs/{name}"}
            schema["$defs"] = self.root["$defs"]
            found = self._validators[name] = self._cls(schema)
        return found

    def validate(self, sent: list[dict[str, Any]], received: list[dict[str, Any]]) -> None:
        """Raise on the first message the client sent that the schema rejects."""
        agent_requests = {m["id"]: m["method"] for m in received if "method" in m and "id" in m}
        for message in sent:
            self._validator("Client").validate(message)
            method = message.get("method")
            if isinstance(method, str):
                if "id" in message:
                    if method in self.REQUESTS:
                        self._validator(self.REQUESTS[method]).validate(message["params"])
                    else:
                        assert method.startswith("_") or method in self.UNSTABLE_REQUESTS, \
                            f"the client sent an unknown request {method!r}"
                else:
                    assert method in self.NOTIFICATIONS or method.startswith("_"), \
                        f"the client sent an unknown notification {method!r}"
                    if method in self.NOTIFICATIONS:
                        self._validator(self.NOTIFICATIONS[method]).validate(message["params"])
                key = method
            else:
                answered = agent_requests.get(message.get("id"))
                assert answered is not None, f"a response to no request: {message}"
                if "error" in message:
                    self._validator("Error").validate(message["error"])
                else:
                    self._validator(self.RESULTS[answered]).validate(message["result"])
                key = f"response to {answered}"
            self.checked[key] = self.checked.get(key, 0) + 1


def iter_updates(received: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for message in received:
        if message.get("method") == "session/update":
            yield message["params"]["update"]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
