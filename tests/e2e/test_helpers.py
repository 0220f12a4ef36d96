"""The e2e helpers themselves, offline and fast (no agent, no npm): the scripted LLM speaks
the OpenAI wire format (streamed and not), and the installer's checks say why not."""

from __future__ import annotations

import http.client
import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import agents
from tests.e2e.fake_llm import JSON, Dynamic, FakeLLM, Text, ToolCall


def _post(llm: FakeLLM, body: JSON) -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", llm.port, timeout=10)
    try:
        conn.request("POST", "/v1/chat/completions", body=json.dumps(body),
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type") or "", response.read()
    finally:
        conn.close()


def _events(raw: bytes) -> list[Any]:
    out: list[Any] = []
    for line in raw.decode().splitlines():
        if line.startswith("data: "):
            data = line[len("data: "):]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


TOOLS = [{"type": "function", "function": {
    "name": "write_file", "parameters": {"type": "object", "properties": {
        "file_path": {"type": "string"}, "content": {"type": "string"}}}}}]


def test_streamed_text_tool_call_and_default() -> None:
    with FakeLLM(default="fallback") as llm:
        llm.script(Text("hello world", chunks=3),
                   Dynamic(lambda body: ToolCall(body["tools"][0]["function"]["name"],
                                                 {"file_path": "/w/a", "content": "x"},
                                                 call_id="call_1")))
        body = {"model": "m", "stream": True, "stream_options": {"include_usage": True},
                "messages": [{"role": "user", "content": "hi"}], "tools": TOOLS}
        status, kind, raw = _post(llm, body)
        assert (status, kind) == (200, "text/event-stream")
        events = _events(raw)
        assert events[-1] == "[DONE]"
        text = "".join(e["choices"][0]["delta"].get("content") or ""
                       for e in events[:-1] if e["choices"])
        assert text == "hello world"
        assert [e["choices"][0]["finish_reason"] for e in events[:-1]
                if e["choices"]][-1] == "stop"
        assert "usage" in events[-2]

        _, _, raw = _post(llm, body)
        calls = [c for e in _events(raw)[:-1] if e["choices"]
                 for c in e["choices"][0]["delta"].get("tool_calls", [])]
        assert calls[0]["id"] == "call_1"
        assert calls[0]["function"]["name"] == "write_file"
        arguments = "".join(c["function"]["arguments"] for c in calls)
        assert json.loads(arguments) == {"file_path": "/w/a", "content": "x"}

        # Side calls (no tools) never consume the script; an empty script falls back.
        llm.script(Text("scripted"))
        status, kind, raw = _post(llm, {"model": "m", "messages": []})
        assert (status, kind) == (200, "application/json")
        assert json.loads(raw)["choices"][0]["message"]["content"] == "fallback"
        _, _, raw = _post(llm, {**body, "stream": False})
        assert json.loads(raw)["choices"][0]["message"]["content"] == "scripted"
        _, _, raw = _post(llm, {**body, "stream": False})
        assert json.loads(raw)["choices"][0]["message"]["content"] == "fallback"

        assert [r.main for r in llm.requests] == [True, True, False, True, True]
        assert llm.requests[0].body["messages"][0]["content"] == "hi"
        assert llm.wait_for(lambda rs: len(rs) == 5, timeout=1)

        conn = http.client.HTTPConnection("127.0.0.1", llm.port, timeout=10)
        conn.request("GET", "/v1/models")
        models = json.loads(conn.getresponse().read())
        conn.close()
        assert [x["id"] for x in models["data"]] == ["fake-model"]
    with pytest.raises(AssertionError):
        _ = llm.port  # closed


def test_a_held_reply_sends_its_first_piece_then_waits_for_the_gate() -> None:
    gate = threading.Event()
    with FakeLLM() as llm:
        llm.script(Text("one two three", chunks=3, hold=gate))
        conn = http.client.HTTPConnection("127.0.0.1", llm.port, timeout=10)
        conn.request("POST", "/v1/chat/completions", body=json.dumps(
            {"stream": True, "messages": [], "tools": TOOLS}))
        response = conn.getresponse()
        seen = b""
        while seen.count(b"\n\n") < 2:  # the role and the first piece ("one t") arrive
            seen += response.read1(4096)
        assert seen.count(b"data: ") == 2
        assert b"one t" in seen
        assert b"wo th" not in seen
        gate.set()
        seen += response.read()
        conn.close()
        text = "".join(e["choices"][0]["delta"].get("content") or ""
                       for e in _events(seen)[:-1] if e["choices"])
        assert text == "one two three"


def test_a_broken_script_answers_and_is_reported() -> None:
    def broken(body: JSON) -> Text:
        raise KeyError("tools")

    with FakeLLM() as llm:
        llm.script(Dynamic(broken))
        _, _, raw = _post(llm, {"messages": [], "tools": TOOLS})
        assert "script error" in json.loads(raw)["choices"][0]["message"]["content"]
        assert llm.errors


def test_close_cuts_idle_keep_alive_connections() -> None:
    llm = FakeLLM().start()
    conn = http.client.HTTPConnection("127.0.0.1", llm.port, timeout=10)
    conn.request("POST", "/v1/chat/completions", body=b"{}")
    conn.getresponse().read()  # the connection stays open (HTTP/1.1 keep-alive)
    llm.close()
    assert llm._thread is not None
    assert not llm._thread.is_alive()
    conn.close()


def test_node_missing_is_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    assert agents.node_problem() == "node and npm not found on PATH"


def test_only_a_stamped_install_of_the_exact_version_counts(tmp_path: Path) -> None:
    tool = agents.NpmTool("@scope/pkg", "1.2.3", "pkg")
    package = tmp_path / "node_modules" / "@scope" / "pkg"
    package.mkdir(parents=True)
    (package / "package.json").write_text(json.dumps({"version": "1.2.3"}))
    binary = tmp_path / "node_modules" / ".bin" / "pkg"
    binary.parent.mkdir()
    binary.write_text("#!/bin/sh\n")
    os.chmod(binary, 0o755)
    assert agents._installed_binary(tool, tmp_path) is None, "no stamp: an interrupted install"
    (tmp_path / agents.STAMP).write_text(json.dumps({"spec": tool.spec}))
    assert agents._installed_binary(tool, tmp_path) == binary
    other = agents.NpmTool("@scope/pkg", "1.2.4", "pkg")
    assert agents._installed_binary(other, tmp_path) is None
    assert tool.slug == "scope_pkg_1.2.3"
