"""Generates the reference tables of docs/PROTOCOL.md from the msgspec structs themselves.

The prose of PROTOCOL.md (transports, rules, examples) is written by hand; every table of
messages, fields and error codes sits between `<!-- BEGIN GENERATED: name -->` and
`<!-- END GENERATED: name -->` markers and is rendered here, from the types in `protocol/`
and the docstrings under their fields. `tests/unit/test_protocol_doc.py` fails when the file
and the types disagree, so the document cannot drift from the wire format:

    python -m tests.support.protocol_doc --write     # after changing a message type
"""

from __future__ import annotations

import ast
import enum
import inspect
import itertools
import re
import sys
import textwrap
import types
import typing
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import msgspec

from protocol import deltas as d
from protocol import messages as m
from protocol.errors import ErrorCode

DOC = Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md"

SUMMARIES: dict[str, str] = {
    # Requests without a docstring of their own.
    "ping": "Check the connection; answers with the daemon's clock.",
    "status": "The daemon's pid, version, uptime, paths, actor counts and memory "
              "(`stoker status`).",
    "agents": "The agents this daemon can run, and the default one.",
    "cancel": "Cancel the chat's running turn (ACP `session/cancel`); it ends with "
              "`turn_ended {stop_reason: cancelled}`.",
    "close": "Close the chat: its queued and running turns end, its agents stop.",
    "unsubscribe": "Stop receiving the chat's deltas.",
    "ls": "List chats with their agent's state (`stoker ls`).",
    "inspect": "A chat and the detail of each of its actors (`stoker inspect`).",
    "permit": "Answer a `permission_request`. The first answer wins; later ones get "
              "`already_answered`.",
    "policy": "Set the chat's permission policy.",
    "mode": "Set the session mode of the chat's agent (ACP `session/set_mode`).",
    "config": "Set a session config option of the chat's agent (e.g. the model).",
    "auth": "Run ACP `authenticate` with one of the agent's methods.",
}

FIELD_NOTES: dict[str, str] = {
    # Fields without a docstring of their own: `Class.field` first, then plain `field`.
    "chat": "The chat's id.",
    "agent": "An agent name (as in `agents`).",
    "workspace": "A workspace id.",
    "computer": "A `[computers.NAME]` of the config; absent: this machine.",
    "epoch": "The chat's epoch (see [Chats, turns and deltas](#chats-turns-and-deltas)).",
    "head_seq": "The seq of the chat's newest delta (0: none yet).",
    "pid": "Process id.",
    "generation": "Which life of the agent process (1, 2, ... after restarts).",
    "OpenChat.chat": "The chat's id; absent: a new chat with a generated id.",
    "OpenChat.agent": "The agent of a new chat (default: `[daemon] default_agent`); for an "
                      "existing chat, switch to it.",
    "OpenChat.workspace": "Work in this workspace's worktree (workspaces subsystem).",
    "OpenChat.project": "Create a workspace of this project for the chat (workspaces "
                        "subsystem).",
    "OpenChat.policy": "Permission policy of a new chat (default: `[permissions] policy`); "
    "for an existing chat, its new policy (like `policy`).",
    "OpenChat.title": "A title for lists.",
    "Prompt.text": "The prompt as plain text.",
    "Subscribe.since": "Where to resume; see [Subscriptions and resume]"
                       "(#subscriptions-and-resume).",
    "Subscribe.live": "`false`: end the subscription after `replay_complete`.",
    "ListChats.include_closed": "Also list closed chats.",
    "ListChats.cwd": "Only chats working in this directory.",
    "Permit.request": "The `request` of the `permission_request` delta.",
    "Permit.option": "The `optionId` of one of its options.",
    "SetPolicy.policy": "`ask`: clients answer; `allow`/`deny`: answered at once.",
    "SetMode.mode": "A mode id from the agent's `modes`.",
    "SetConfig.option": "A config option id from the agent's `config_options`.",
    "SetConfig.value": "The value id (or a boolean for boolean options).",
    "Authenticate.method": "A method id from the agent's `auth_methods`.",
    "Hello.protocol": "The protocol version the client speaks (this page: 1).",
    "Welcome.protocol": "The protocol version of this connection.",
    "Welcome.version": "The daemon's version.",
    "Welcome.pid": "The daemon's process id.",
    "Welcome.encoding": "The encoding of everything the daemon sends from now on.",
    "Welcome.max_frame": "The largest message the daemon accepts from this client, bytes.",
    "Reply.result": "The request's result; its type is listed under the request.",
    "ErrorReply.code": "Why, as a stable code.",
    "ErrorReply.message": "Why, for humans.",
    "ErrorReply.detail": "Structured details, when there are any.",
    "Delta.seq": "Position in the chat's channel: 1, 2, 3, ... with no gap.",
    "Delta.ts": "Wall-clock time it happened (Unix seconds).",
    "Delta.turn": "The turn it belongs to; 0 for none.",
    "Delta.body": "What happened: one of the [delta kinds](#delta-kinds), tagged by `kind`.",
    "ResyncRequired.seq": "Live deltas continue after this seq (the head).",
    "ResyncRequired.reason": "Why the cursor could not be served.",
    "ResyncRequired.snapshot": "Start over from this.",
    "Lagged.from_seq": "The first seq the subscriber missed; the replay starts here.",
    "Lagged.missed": "How many deltas the replay will bring.",
    "Heartbeat.time": "The daemon's clock (Unix seconds).",
    "Heartbeat.heads": "The head seq of each chat this connection subscribes to.",
    "Goodbye.reason": "Why the connection is closing.",
    "TurnStarted.agent": "The agent that runs the turn.",
    "Text.text": "The chunk; concatenate the chunks of a turn for its reply.",
    "Reasoning.text": "The chunk.",
    "UserText.text": "The chunk.",
    "Content.role": "Whose chunk it is.",
    "Content.block": "The ACP content block, unchanged.",
    "ToolCall.tool_call_id": "Names the call in later `tool_update`s.",
    "ToolCall.title": "What the tool does, for humans.",
    "ToolCall.status": "`pending`, `in_progress`, `completed` or `failed`.",
    "ToolCall.acp": "The agent's whole ACP `tool_call` update (kind, content, locations...).",
    "ToolUpdate.tool_call_id": "The call this updates.",
    "ToolUpdate.status": "The new status, if it changed.",
    "ToolUpdate.acp": "The agent's whole ACP `tool_call_update`.",
    "Plan.entries": "The agent's plan entries (ACP `PlanEntry`: content, priority, status).",
    "Commands.commands": "ACP `AvailableCommand` objects (name, description, input).",
    "Mode.mode": "The current mode id.",
    "Mode.available": "The modes to choose from (ACP `SessionMode`), when known.",
    "Config.options": "ACP session config options with their current values.",
    "Usage.used": "Context tokens in use.",
    "Usage.size": "Context window size, tokens.",
    "Usage.cost": "ACP cost object (`amount`, `currency`), when the agent reports one.",
    "Info.title": "The session's title, as the agent names it.",
    "Info.updated_at": "When the agent last updated the session (ISO 8601).",
    "PermissionRequest.request": "Name it in `permit`.",
    "PermissionRequest.agent": "The agent asking.",
    "PermissionRequest.tool_call": "The ACP tool call the permission is for.",
    "PermissionRequest.options": "ACP `PermissionOption`s (`optionId`, `name`, `kind`).",
    "PermissionRequest.expires_at": "When it is answered `cancelled` if nobody answers "
                                    "(`[permissions] timeout`).",
    "PermissionResolved.request": "The request resolved.",
    "PermissionResolved.outcome": "`selected` (with `option`) or `cancelled`.",
    "PermissionResolved.option": "The option chosen.",
    "Status.agent": "The agent whose actor changed state.",
    "Status.state": "The new state.",
    "Status.reason": "Why (a crash's exit status, `idle`, ...).",
    "Status.pid": "The agent's process id, while it runs.",
    "Notice.level": "How much it matters.",
    "Notice.message": "For humans.",
    "Terminal.terminal": "The terminal's id (ACP `terminalId`).",
    "Terminal.event": "What happened to it.",
    "Terminal.command": "`created`: the command line.",
    "Terminal.data": "`output`: the new output.",
    "Terminal.exit_code": "`exited`: its exit status.",
    "Terminal.signal": "`exited`: the signal that ended it.",
    "Diff.files": "Files changed.",
    "Diff.stat": "git's `--stat` text.",
    "Raw.method": "The ACP method or update kind.",
    "Raw.acp": "Its parameters, unchanged.",
    "TurnEnded.stop_reason": "How the agent ended the turn (ACP `StopReason`).",
    "TurnEnded.error": "Why the turn failed (agent crash, daemon shutdown, ...).",
    "ChatInfo.created": "`true` if this `open_chat` created the chat.",
    "ChatInfo.cwd": "The chat's working directory.",
    "ChatInfo.policy": "Its permission policy.",
    "ChatInfo.closed": "The chat was closed.",
    "PromptAccepted.turn": "The turn's number: its deltas carry it.",
    "Subscribed.snapshot": "The chat's state now (see `Snapshot`).",
    "Snapshot.agent": "The chat's current agent.",
    "Snapshot.state": "Its actor's state.",
    "Snapshot.turn": "The open turn, if one is running.",
    "Snapshot.turn_prompt": "The open turn's prompt.",
    "Snapshot.turn_text": "The open turn's reply so far.",
    "Snapshot.pending_permissions": "Permission requests waiting for an answer.",
    "Snapshot.last_turn": "The number of the chat's latest turn.",
    "PendingPermission.seq": "The seq of its `permission_request` delta.",
    "Cursor.seq": "The last seq the subscriber has (0: none: replay everything retained).",
    "StatusResult.websocket": "The WebSocket URL, when the listener runs.",
    "StatusResult.socket": "The Unix socket's path.",
    "StatusResult.uptime": "Seconds since the daemon started.",
    "StatusResult.chats": "Open chats.",
    "StatusResult.daemon_rss": "The daemon's own RSS, bytes.",
    "StatusResult.restarts_last_hour": "Agent restarts in the last hour.",
    "ActorDetail.state": "starting, ready, busy, hibernated, crashed, restarting, failed, "
                         "closed.",
    "ActorDetail.session_id": "The agent's ACP session id.",
    "ActorDetail.capabilities": "The agent's ACP `agentCapabilities`.",
    "ChatSummary.state": "Its current agent's actor state.",
}

ERROR_SUMMARIES: dict[str, str] = {
    "unknown_chat": "No chat has this id.",
    "unknown_agent": "No agent has this name (the message lists the known ones).",
    "unknown_workspace": "No workspace has this id.",
    "unknown_computer": "No `[computers.NAME]` section has this name.",
    "git_error": "A git command failed; `detail` carries its output.",
    "shutting_down": "The daemon is stopping and takes no new work.",
}


# ------------------------------------------------------------------------- docstrings


def _field_docs(cls: type) -> dict[str, str]:
    """Docstrings written under fields (`name: T` then a string literal), base classes
    first so that a subclass may override them."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not klass.__module__.startswith("protocol."):
            continue
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        tree = ast.parse(textwrap.dedent(source))
        node = tree.body[0]
        if not isinstance(node, ast.ClassDef):
            continue
        body = node.body
        for item, after in itertools.pairwise(body):
            name = None
            if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                name = item.target.id
            elif (isinstance(item, ast.Assign) and len(item.targets) == 1
                  and isinstance(item.targets[0], ast.Name)):
                name = item.targets[0].id
            if (name and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                    and isinstance(after.value.value, str)):
                docs[name] = inspect.cleandoc(after.value.value)
    return docs


def _class_doc(cls: type, tag: str | None = None) -> str:
    own = cls.__dict__.get("__doc__")
    if own:
        return _neutral(inspect.cleandoc(own))
    return SUMMARIES.get(tag or "", "")


_PY_WORDS = {"None": "null", "True": "true", "False": "false"}


def _one_line(text: str) -> str:
    text = re.sub(r"\s*\n\s*", " ", text.strip()).replace("|", "\\|")
    return _neutral(text)


def _neutral(text: str) -> str:
    """Python's None/True/False in docstrings, spelled as on the wire."""
    return re.sub(r"\b(None|True|False)\b", lambda w: _PY_WORDS[w.group(1)], text)


# ------------------------------------------------------------------------- types


def _tag(cls: type) -> str:
    return str(cls.__struct_config__.tag)  # type: ignore[attr-defined]


def _anchor(cls: type) -> str:
    return cls.__name__.lower()


def type_name(tp: Any, link: Callable[[type], str]) -> str:
    """A language-neutral spelling of a field type: `string`, `int | null`, `[string]`,
    `{string: int}`, `object` (any JSON object), struct names linked to their table."""
    if tp is Any:
        return "any"
    if tp is type(None) or tp is None:
        return "null"
    simple = {str: "string", int: "int", float: "float", bool: "bool",
              msgspec.Raw: "any"}
    if tp in simple:
        return simple[tp]
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Literal:
        return " \\| ".join(f'`"{a}"`' if isinstance(a, str) else f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(type_name(a, link) for a in args)
    if origin is list:
        return f"[{type_name(args[0], link)}]"
    if origin is dict:
        if args[1] is Any:
            return "object"
        return f"{{{type_name(args[0], link)}: {type_name(args[1], link)}}}"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return f"[{tp.__name__}](#error-codes)"
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return link(tp)
    return getattr(tp, "__name__", str(tp))


def _default(field: msgspec.inspect.Field) -> str:
    if field.required:
        return "required"
    if field.default is not msgspec.NODEFAULT:
        value = field.default
    elif field.default_factory is not msgspec.NODEFAULT:
        value = field.default_factory()
    else:  # pragma: no cover - msgspec always gives one of the two
        return ""
    if isinstance(value, msgspec.Struct):
        return "{…}"
    return f"`{msgspec.json.encode(value).decode()}`"


def _hints(cls: type) -> dict[str, Any]:
    module = sys.modules[cls.__module__]
    return typing.get_type_hints(cls, globalns=vars(module), include_extras=False)


def field_rows(cls: type, link: Callable[[type], str], skip: Iterable[str] = ()
               ) -> list[str]:
    info = msgspec.inspect.type_info(cls)
    assert isinstance(info, msgspec.inspect.StructType)
    docs = _field_docs(cls)
    hints = _hints(cls)
    rows = []
    for field in info.fields:
        if field.name in skip:
            continue
        note = (docs.get(field.name) or FIELD_NOTES.get(f"{cls.__name__}.{field.name}")
                or FIELD_NOTES.get(field.name, ""))
        rows.append(f"| `{field.encode_name}` | {type_name(hints[field.name], link)} "
                    f"| {_default(field)} | {_one_line(note)} |")
    return rows


def _table(rows: list[str]) -> list[str]:
    if not rows:
        return ["No fields.", ""]
    return ["| field | type | default | meaning |", "| --- | --- | --- | --- |", *rows, ""]


# ------------------------------------------------------------------------- sections


def _link(cls: type) -> str:
    return f"[{cls.__name__}](#{_anchor(cls)})"


def _structs_reachable(roots: Iterable[type]) -> list[type]:
    """Every struct type used in the fields of `roots`, transitively (the roots too)."""
    seen: dict[type, None] = {}

    def visit(tp: Any) -> None:
        if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
            if tp in seen:
                return
            seen[tp] = None
            for hint in _hints(tp).values():
                visit(hint)
            return
        for arg in typing.get_args(tp):
            visit(arg)

    for root in roots:
        visit(root)
    return list(seen)


def _entry(heading: list[str], cls: type, tag: str | None = None,
           skip: Iterable[str] = ()) -> list[str]:
    """`heading`, then the class's summary (if it has one), then its field table."""
    out = list(heading)
    summary = _class_doc(cls, tag)
    if summary:
        out += [summary, ""]
    return out + _table(field_rows(cls, _link, skip=skip))


def section_requests() -> list[str]:
    out: list[str] = []
    for cls in typing.get_args(m.Request):
        tag = _tag(cls)
        result = m.RESULT_TYPES.get(cls)
        answer = _link(result) if result is not None else "—"
        out += _entry([f"### `{tag}`", "", f"Result: {answer}", ""], cls, tag, skip=("id",))
    return out


def section_types() -> list[str]:
    """Results and the structs inside them, alphabetically, each under its own anchor."""
    roots = list(dict.fromkeys(m.RESULT_TYPES.values()))
    roots += [m.Cursor, m.Snapshot]
    roots += list(typing.get_args(m.ContentBlock))
    out: list[str] = []
    for cls in sorted(_structs_reachable(roots), key=lambda c: c.__name__):
        title = cls.__name__
        tag = cls.__struct_config__.tag  # type: ignore[attr-defined]
        if tag is not None:
            title += f" (`{cls.__struct_config__.tag_field}: \"{tag}\"`)"  # type: ignore[attr-defined]
        out += _entry([f'<a id="{_anchor(cls)}"></a>', f"#### {title}", ""], cls)
    return out


def _messages(classes: Iterable[type]) -> list[str]:
    """One entry per message type, headed by its wire tag."""
    out: list[str] = []
    for cls in classes:
        out += _entry([f"### `{_tag(cls)}`", ""], cls)
    return out


def section_handshake() -> list[str]:
    return _messages((m.Hello, m.Welcome))


def section_server() -> list[str]:
    return _messages(cls for cls in typing.get_args(m.ServerMessage) if cls is not m.Welcome)


def section_deltas() -> list[str]:
    return _messages(typing.get_args(d.DeltaBody))


def section_errors() -> list[str]:
    docs = _field_docs(ErrorCode)
    out = ["| code | meaning |", "| --- | --- |"]
    for code in ErrorCode:
        text = docs.get(code.name) or ERROR_SUMMARIES.get(code.value, "")
        out.append(f"| `{code.value}` | {_one_line(text)} |")
    return [*out, ""]


def section_slow() -> list[str]:
    from daemon.service.root import SLOW_REQUESTS

    return [", ".join(f"`{_tag(cls)}`" for cls in SLOW_REQUESTS)]


SECTIONS: dict[str, Callable[[], list[str]]] = {
    "slow": section_slow,
    "handshake": section_handshake,
    "requests": section_requests,
    "types": section_types,
    "server": section_server,
    "deltas": section_deltas,
    "errors": section_errors,
}

_BLOCK = re.compile(r"(<!-- BEGIN GENERATED: (\w+) -->\n)(.*?)(<!-- END GENERATED: \2 -->)",
                    re.DOTALL)


_EXAMPLE = re.compile(r"(<!-- BEGIN EXAMPLE: (\S+) -->\n)(.*?)(<!-- END EXAMPLE: \2 -->)",
                      re.DOTALL)
ROOT = DOC.parent.parent


def render(text: str) -> str:
    """`text` with every generated block re-rendered from the current types, and every
    example block refreshed from the file it names."""
    def fill(match: re.Match[str]) -> str:
        name = match.group(2)
        if name not in SECTIONS:
            raise KeyError(f"unknown generated section {name!r}")
        body = "\n".join(SECTIONS[name]()).rstrip() + "\n"
        return f"{match.group(1)}\n{body}\n{match.group(4)}"

    def example(match: re.Match[str]) -> str:
        code = (ROOT / match.group(2)).read_text()
        return f"{match.group(1)}```python\n{code}```\n{match.group(4)}"

    return _EXAMPLE.sub(example, _BLOCK.sub(fill, text))


def example_blocks(text: str) -> dict[str, str]:
    """The code of each example block, by the file it claims to be."""
    found = {}
    for match in _EXAMPLE.finditer(text):
        body = match.group(3)
        if not (body.startswith("```python\n") and body.endswith("```\n")):
            raise ValueError(f"the example block of {match.group(2)} is not one python block")
        found[match.group(2)] = body[len("```python\n"):-len("```\n")]
    return found


def blocks(text: str) -> list[str]:
    return [match.group(2) for match in _BLOCK.finditer(text)]


def main(argv: list[str]) -> int:
    text = DOC.read_text()
    fresh = render(text)
    if "--write" in argv:
        if fresh != text:
            DOC.write_text(fresh)
            print(f"updated {DOC}")
        return 0
    if fresh != text:
        print(f"{DOC} is out of date: run python -m tests.support.protocol_doc --write")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
