"""The HTTP API against a real daemon, with httpx: every request type as `POST /api/<type>`,
the refusals (no token, a wrong token, a foreign Origin, a rebinding Host), bad input (each
a JSON `ErrorReply` with the protocol's code, nothing else changed), the WebSocket still
served on the same port, and the OpenAPI document."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import msgspec
import pytest
import trio

from daemon.listeners.http.api import REQUEST_TYPES
from protocol import deltas as d
from protocol import messages as m
from protocol.errors import ErrorCode
from tests.support.harness import DaemonFactory, collect_turn, open_chat, subscribe, turn
from tests.support.http_client import HttpDaemon, start_http_daemon
from tests.support.ws_client import WsClient


@pytest.fixture
async def http(daemon_factory: DaemonFactory) -> HttpDaemon:
    return await start_http_daemon(daemon_factory)


def _error(response: httpx.Response, status: int, code: ErrorCode) -> m.ErrorReply:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = msgspec.json.decode(response.content, type=m.ErrorReply)
    assert error.code == code, error
    assert error.id is None
    return error


def _result(response: httpx.Response, request_type: type[Any]) -> Any:
    assert response.status_code == 200, response.text
    return msgspec.json.decode(response.content, type=m.RESULT_TYPES[request_type])


def _git_project(path: Path) -> Path:
    import subprocess
    path.mkdir()
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)
    (path / "a.txt").write_text("one\n")
    subprocess.run(["git", "-C", str(path), "add", "."], check=True)
    subprocess.run(["git", "-C", str(path), "commit", "-q", "-m", "init"], check=True)
    return path


async def test_every_request_type_is_served_as_json(http: HttpDaemon, tmp_path: Path
                                                     ) -> None:
    work = str(http.proc.work)
    project = _git_project(tmp_path / "project")
    # The requests that succeed here, with their bodies, in an order that makes sense.
    ok: list[tuple[str, dict[str, Any]]] = [
        ("ping", {}),
        ("status", {}),
        ("agents", {}),
        ("open_chat", {"chat": "h1", "agent": "echo", "cwd": work}),
        ("warm", {"chat": "h1"}),
        ("prompt", {"chat": "h1", "text": "hello over http"}),
        ("ls", {}),
        ("inspect", {"chat": "h1"}),
        ("policy", {"chat": "h1", "policy": "allow"}),
        ("cancel", {"chat": "h1", "turn": 99}),
        ("describe_agent", {"agent": "echo"}),
        ("reload", {}),
        ("workspace_new", {"project": str(project)}),
        ("workspace_ls", {}),
        ("reap", {"dry_run": True}),
        ("computers", {"probe": False}),
        ("trace", {"chat": "h1"}),
        ("stats", {}),
        ("task_new", {"parent": "h1", "prompt": "a task over http"}),
        ("tasks", {"parent": "h1"}),
        ("workflows", {"available": True, "cwd": work}),
    ]
    results: dict[str, Any] = {}
    for tag, body in ok:
        results[tag] = _result(await http.call(tag, body), REQUEST_TYPES[tag])
    assert isinstance(results["ping"], m.Pong)
    assert results["open_chat"].chat == "h1"
    assert "h1" in [c.chat for c in results["ls"].chats]
    workspace = results["workspace_new"].workspace
    diff = _result(await http.call("workspace_diff", {"workspace": workspace}),
                   m.WorkspaceDiff)
    assert diff.workspace == workspace
    task = results["task_new"].task
    assert [t.task for t in results["tasks"].tasks] == [task]
    for tag, body in (("task", {"task": task}), ("task_send", {"task": task, "prompt": "more"}),
                      ("task_cancel", {"task": task})):
        assert _result(await http.call(tag, body), REQUEST_TYPES[tag]).task == task
    # The ones whose success needs more than this daemon has (an agent with modes, a
    # pending permission, a deleted workspace) answer with the protocol's error codes.
    refused: list[tuple[str, dict[str, Any], set[ErrorCode]]] = [
        ("mode", {"chat": "h1", "mode": "no-such-mode"},
         {ErrorCode.UNSUPPORTED, ErrorCode.BAD_REQUEST, ErrorCode.NOT_FOUND,
          ErrorCode.INVALID_STATE, ErrorCode.AGENT_ERROR}),
        ("config", {"chat": "h1", "option": "nope", "value": "x"},
         {ErrorCode.UNSUPPORTED, ErrorCode.BAD_REQUEST, ErrorCode.NOT_FOUND,
          ErrorCode.INVALID_STATE, ErrorCode.AGENT_ERROR}),
        ("auth", {"chat": "h1", "method": "nope"},
         {ErrorCode.UNSUPPORTED, ErrorCode.BAD_REQUEST, ErrorCode.NOT_FOUND,
          ErrorCode.INVALID_STATE, ErrorCode.AGENT_ERROR}),
        ("permit", {"chat": "h1", "request": "no-such-request"}, {ErrorCode.NOT_FOUND}),
        ("workspace_restore", {"workspace": "no-such"}, {ErrorCode.UNKNOWN_WORKSPACE}),
        ("workflow_run", {"workflow": "no-such-workflow", "cwd": work},
         {ErrorCode.NOT_FOUND}),
        ("workflow", {"run": "no-such"}, {ErrorCode.NOT_FOUND}),
        ("workflow_cancel", {"run": "no-such"}, {ErrorCode.NOT_FOUND}),
        ("workflow_resume", {"run": "no-such"}, {ErrorCode.NOT_FOUND}),
        ("mcp_up", {"chat": "h1", "credential": "forged"}, {ErrorCode.UNAUTHORIZED}),
    ]
    for tag, body, codes in refused:
        response = await http.call(tag, body)
        if response.status_code == 200:
            _result(response, REQUEST_TYPES[tag])
            continue
        error = msgspec.json.decode(response.content, type=m.ErrorReply)
        assert error.code in codes, (tag, error)
    _result(await http.call("workspace_close", {"workspace": workspace}), m.CloseWorkspace)
    _result(await http.call("close", {"chat": "h1"}), m.CloseChat)
    served = {tag for tag, _ in ok} | {tag for tag, _, _ in refused} | {
        "workspace_diff", "workspace_close", "close", "task", "task_send", "task_cancel"}
    assert served == set(REQUEST_TYPES), set(REQUEST_TYPES) ^ served


async def test_refusals(http: HttpDaemon) -> None:
    async with http.client() as client:
        _error(await client.post("/api/ping"), 401, ErrorCode.UNAUTHORIZED)
        _error(await client.post("/api/ping", headers={"Authorization": "Bearer nope"}),
               401, ErrorCode.UNAUTHORIZED)
        _error(await client.post("/api/ping", headers={"Authorization": f"Basic {http.token}"}),
               401, ErrorCode.UNAUTHORIZED)
        # A page on another site, even holding the token: refused as such.
        _error(await client.post("/api/ping", headers={**http.auth,
                                                       "Origin": "https://evil.example"}),
               403, ErrorCode.UNAUTHORIZED)
        # DNS rebinding: a name that points at 127.0.0.1 is still not the daemon's name.
        port = http.base.rsplit(":", 1)[1]
        rebound = await client.post("/api/ping", headers={**http.auth,
                                                          "Host": f"evil.example:{port}"})
        assert "evil.example" in _error(rebound, 403, ErrorCode.UNAUTHORIZED).message
        for page in ("/", "/openapi.json"):
            _error(await client.get(page, headers={"Host": f"evil.example:{port}"}),
                   403, ErrorCode.UNAUTHORIZED)
        # Names that cannot be rebound, or that the config lists, are fine.
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"stoker.test:{port}"):
            response = await client.post("/api/ping", headers={**http.auth, "Host": host})
            assert response.status_code == 200, (host, response.text)
        # The daemon's own origin (the console) and a listed one are allowed.
        for origin in (http.base, "https://allowed.example"):
            response = await client.post("/api/ping", headers={**http.auth, "Origin": origin})
            assert response.status_code == 200, (origin, response.text)
        # The credentials are checked before the body is read: a stranger's oversized body
        # is refused as unauthorized, not buffered and measured.
        _error(await client.post("/api/ping", content=b"x" * (100 * 1024)), 401,
               ErrorCode.UNAUTHORIZED)
        # CORS: a listed origin gets its preflight answered, another does not.
        ok = await client.options("/api/ping", headers={
            "Origin": "https://allowed.example", "Access-Control-Request-Method": "POST"})
        assert ok.status_code == 204
        assert ok.headers["access-control-allow-origin"] == "https://allowed.example"
        assert "authorization" in ok.headers["access-control-allow-headers"]
        _error(await client.options("/api/ping", headers={"Origin": http.base}), 403,
               ErrorCode.UNAUTHORIZED)
        # The event stream needs the token too.
        _error(await client.get("/api/chats/x/events"), 401, ErrorCode.UNAUTHORIZED)
    # The WebSocket handshake checks the Host as well (a raw request: no client library
    # lets one forge the Host header).
    for host, expected in ((f"evil.example:{port}", b" 403 "), (f"127.0.0.1:{port}", b" 101 ")):
        stream = await trio.open_tcp_stream("127.0.0.1", int(port))
        async with stream:
            await stream.send_all(
                f"GET / HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {http.token}\r\n\r\n"
                .encode())
            with trio.fail_after(10):
                answer = await stream.receive_some(4096)
        assert answer.split(b"\r\n", 1)[0].find(expected) > 0, answer


async def test_bad_input_is_a_json_error_and_changes_nothing(http: HttpDaemon) -> None:
    async with http.proc.client() as unix:
        await open_chat(unix, "keep", cwd=http.proc.work)
        before = await unix.request(m.ListChats(id=0))
    async with http.client(headers=http.auth) as client:
        _error(await client.post("/api/prompt", content=b"{not json"), 400,
               ErrorCode.BAD_FRAME)
        _error(await client.post("/api/prompt", content=b"[1, 2]"), 400,
               ErrorCode.BAD_REQUEST)
        wrong = _error(await client.post("/api/prompt", json={"chat": 5}), 400,
                       ErrorCode.BAD_REQUEST)
        assert "chat" in wrong.message
        _error(await client.post("/api/prompt", json={"chat": "nope", "text": "x"}), 404,
               ErrorCode.UNKNOWN_CHAT)
        _error(await client.post("/api/no_such_request"), 404, ErrorCode.UNKNOWN_REQUEST)
        _error(await client.post("/api/subscribe", json={"chat": "keep"}), 404,
               ErrorCode.UNKNOWN_REQUEST)
        _error(await client.get("/api/prompt"), 405, ErrorCode.BAD_REQUEST)
        _error(await client.get("/api/ls?include_closed=maybe"), 400, ErrorCode.BAD_REQUEST)
        assert (await client.get("/api/ls?include_closed=true")).status_code == 200
        _error(await client.get("/api/chats/nope/events"), 404, ErrorCode.UNKNOWN_CHAT)
        _error(await client.get("/api/chats/keep/events?since=x"), 400,
               ErrorCode.BAD_REQUEST)
        big = {"chat": "keep", "text": "x" * (70 * 1024)}
        _error(await client.post("/api/prompt", json=big), 413, ErrorCode.FRAME_TOO_LARGE)
        _error(await client.get("/no-such-page"), 404, ErrorCode.NOT_FOUND)
        # The same client (a new connection where the daemon closed the old one) goes on.
        assert (await client.post("/api/ping")).status_code == 200
    async with http.proc.client() as unix:
        after = await unix.request(m.ListChats(id=0))
        assert [c.chat for c in after.chats] == [c.chat for c in before.chats]
        # No turn was queued by the refused prompts: the chat's log is empty, and a real
        # turn is the first.
        sub = await unix.request(m.Subscribe(id=0, chat="keep", since=m.Cursor(seq=0)))
        assert sub.head_seq == 0
        assert sub.snapshot.last_turn == 0
        await unix.request(m.Unsubscribe(id=0, chat="keep"))
        assert (await turn(unix, "keep", "still fine")).text == "still fine"


async def test_expect_100_continue_as_curl_sends_it(http: HttpDaemon) -> None:
    host, port = http.base.removeprefix("http://").rsplit(":", 1)
    body = msgspec.json.encode({"text": "x" * 2000})
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(
            f"POST /api/ping HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Authorization: Bearer {http.token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n".encode())
        with trio.fail_after(10):
            interim = await stream.receive_some(4096)
        assert interim.startswith(b"HTTP/1.1 100 "), interim
        await stream.send_all(body)
        answer = b""
        with trio.fail_after(10):
            while b"\r\n\r\n" not in answer:
                answer += await stream.receive_some(4096)
        assert answer.startswith(b"HTTP/1.1 200 "), answer


async def test_curl_as_the_docs_show_it(http: HttpDaemon) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")

    def run(*args: str) -> Any:
        done = subprocess.run([curl, "-sS", "--max-time", "20", "-H",
                               f"Authorization: Bearer {http.token}", *args],
                              capture_output=True, check=True, timeout=30)
        return msgspec.json.decode(done.stdout)

    opened = await trio.to_thread.run_sync(lambda: run(
        "-d", msgspec.json.encode({"chat": "curl", "agent": "echo",
                                   "cwd": str(http.proc.work)}).decode(),
        f"{http.base}/api/open_chat"))
    assert opened["chat"] == "curl"
    # A body over 1 KiB: curl asks `Expect: 100-continue` and waits for it.
    accepted = await trio.to_thread.run_sync(lambda: run(
        "-d", msgspec.json.encode({"chat": "curl", "text": "y" * 3000}).decode(),
        f"{http.base}/api/prompt"))
    assert accepted["turn"] == 1
    listed = await trio.to_thread.run_sync(lambda: run(f"{http.base}/api/ls"))
    assert "curl" in [c["chat"] for c in listed["chats"]]


async def test_a_prompt_over_http_runs_like_one_over_the_socket(http: HttpDaemon) -> None:
    async with http.proc.client() as unix:
        await open_chat(unix, "same", cwd=http.proc.work)
        await subscribe(unix, "same")
        accepted = _result(await http.call("prompt", {"chat": "same", "text": "via http"},
                                           headers={"X-Stoker-Client": "curl"}), m.Prompt)
        result = await collect_turn(unix, "same", accepted.turn)
    assert result.text == "via http"
    assert result.of(d.TurnStarted)[0].by == "curl"


async def test_the_websocket_still_works_on_the_same_port(http: HttpDaemon) -> None:
    url = http.base.replace("http://", "ws://") + "/"
    async with WsClient.connect(url, token=http.token) as ws:
        pong = await ws.request(m.Ping(id=0))
        assert isinstance(pong, m.Pong)
        # HTTP on the same port meanwhile.
        assert (await http.call("ping")).status_code == 200


async def test_openapi_document(http: HttpDaemon) -> None:
    async with http.client() as client:
        response = await client.get("/openapi.json")
    assert response.status_code == 200
    doc = response.json()
    assert doc["openapi"].startswith("3.1")
    # Every protocol request has a path: POST /api/<type>, or the event stream.
    streamed = set(doc["paths"]["/api/chats/{chat}/events"]["get"]["x-stoker-requests"])
    for kind in m.Request.__args__:
        tag = kind.__struct_config__.tag
        assert f"/api/{tag}" in doc["paths"] or tag in streamed, tag
    # The document is a valid OpenAPI 3.1 document (its own schema, draft 2020-12)...
    jsonschema.Draft202012Validator.check_schema(
        {"$defs": doc["components"]["schemas"]})
    for path, item in doc["paths"].items():
        for operation in item.values():
            assert "responses" in operation, path
    # Every reference resolves, and every operation names its result and error schemas.
    refs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "$ref":
                    refs.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(doc)
    assert refs
    for ref in refs:
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.rsplit("/", 1)[1] in doc["components"]["schemas"], ref
    for tag in REQUEST_TYPES:
        responses = doc["paths"][f"/api/{tag}"]["post"]["responses"]
        assert set(responses) == {"200", "default"}
    assert "get" in doc["paths"]["/api/ls"]
    assert "get" not in doc["paths"]["/api/reap"]
    # ...and its schemas describe what the daemon really answers.
    schemas = doc["components"]["schemas"]
    resolver = {"components": {"schemas": schemas}}

    def validate(instance: Any, name: str) -> None:
        schema = {"$ref": f"#/components/schemas/{name}", **resolver}
        jsonschema.validate(instance, schema, cls=jsonschema.Draft202012Validator)

    status = (await http.call("status")).json()
    validate(status, "StatusResult")
    error = (await http.call("inspect", {"chat": "nope"})).json()
    validate(error, "ErrorReply")
    validate({"chat": "x", "text": "hi"}, "Prompt")
    with pytest.raises(jsonschema.ValidationError):
        validate({"text": "no chat"}, "Prompt")
