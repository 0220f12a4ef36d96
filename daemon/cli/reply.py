"""How `stoker send` shows one turn to a person: the reply's text on stdout, everything else
as short lines on stderr (so that `stoker send ... > reply.txt` captures just the reply).

What goes to stderr, by `Verbosity`:
- always: errors, permission requests that wait for an answer;
- unless quiet: notices, one line per finished tool call (`[tool write_file: failed:
  outside the workspace]`);
- progress, only when stderr is a terminal: the agent's cold start (`starting qwen...`,
  `resuming session...`, `ready in 14.2s`), restarts and crashes.

Under `--json` nothing is rendered: the caller prints the deltas themselves.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, TextIO

from protocol import deltas as d

TOOL_DONE = ("completed", "failed")
"""The ACP tool call statuses after which a tool call's line is printed."""


@dataclass(frozen=True, slots=True)
class Verbosity:
    quiet: bool = False
    """Only the reply, errors and permission requests."""
    progress: bool = False
    """Show the agent's start-up and restarts (a person is watching a terminal)."""


class Screen:
    """stdout and stderr as one terminal: a stderr line written after reply text that did
    not end its line starts on a fresh line."""

    def __init__(self, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.at_line_start = True

    def text(self, text: str) -> None:
        if text:
            self.out.write(text)
            self.out.flush()
            self.at_line_start = text.endswith("\n")

    def note(self, line: str) -> None:
        if not self.at_line_start:
            self.out.write("\n")
            self.out.flush()
            self.at_line_start = True
        self.err.write(line + "\n")
        self.err.flush()

    def end(self) -> None:
        if not self.at_line_start:
            self.text("\n")


def tool_message(acp: dict[str, Any]) -> str:
    """The first line of a tool call's first text content (what a failed tool said)."""
    for item in acp.get("content") or []:
        if not isinstance(item, dict):
            continue
        block = item.get("content")
        if isinstance(block, dict) and block.get("type") == "text":
            text = str(block.get("text", "")).strip()
            if text:
                first = text.splitlines()[0]
                return first if len(first) <= 120 else first[:117] + "..."
    return ""


class TurnView:
    """Renders the deltas of one turn (and the chat's status changes meanwhile)."""

    def __init__(self, chat: str, turn: int, verbosity: Verbosity,
                 screen: Screen | None = None) -> None:
        self.chat = chat
        self.turn = turn
        self.verbosity = verbosity
        self.screen = screen or Screen()
        self._tools: dict[str, str] = {}
        """Tool call id -> title, for the tool calls not finished yet."""
        self._starting_at: float | None = None

    def show(self, event: d.Delta) -> None:
        body = event.body
        if isinstance(body, d.Status):
            self._status(event.ts, body)
            return
        if event.turn != self.turn:
            return
        quiet = self.verbosity.quiet
        if isinstance(body, d.Text):
            self.screen.text(body.text)
        elif isinstance(body, d.PermissionRequest) and body.policy == "ask":
            options = ", ".join(f"{o.get('optionId')} ({o.get('kind')})" for o in body.options)
            self.screen.note(
                f"permission requested [{body.request}]: "
                f"{body.tool_call.get('title', 'tool call')}\n"
                f"  answer with: stoker permit {self.chat} {body.request} OPTION   "
                f"options: {options}")
        elif isinstance(body, d.Notice) and not quiet:
            self.screen.note(f"[{body.level}] {body.message}")
        elif isinstance(body, d.ToolCall) and not quiet:
            self._tools[body.tool_call_id] = body.title
            self._tool(body.tool_call_id, body.status, body.acp)
        elif isinstance(body, d.ToolUpdate) and not quiet:
            title = body.acp.get("title")
            if isinstance(title, str) and body.tool_call_id in self._tools:
                self._tools[body.tool_call_id] = title
            self._tool(body.tool_call_id, body.status, body.acp)

    def _tool(self, tool_call_id: str, status: str | None, acp: dict[str, Any]) -> None:
        if status not in TOOL_DONE or tool_call_id not in self._tools:
            return
        title = self._tools.pop(tool_call_id)
        message = tool_message(acp) if status == "failed" else ""
        self.screen.note(f"[tool {title}: {status}" + (f": {message}]" if message else "]"))

    def _status(self, ts: float, body: d.Status) -> None:
        if not self.verbosity.progress:
            return
        if body.state == "starting":
            self._starting_at = ts
            self.screen.note(f"starting {body.agent}...")
        elif body.state == "ready" and self._starting_at is not None:
            self.screen.note(f"ready in {ts - self._starting_at:.1f}s")
            self._starting_at = None
        elif body.state in ("crashed", "restarting", "failed"):
            reason = f": {body.reason}" if body.reason else ""
            self.screen.note(f"{body.agent} {body.state}{reason}")

    def resuming(self, session: str) -> None:
        """The agent being started was asked to resume this recorded session."""
        if self.verbosity.progress:
            self.screen.note(f"resuming session {session}...")
