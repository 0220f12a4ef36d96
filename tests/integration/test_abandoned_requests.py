"""HTTP clients that go away while their request waits, against a real daemon on real
sockets: a `POST /api/task` waiting up to an hour for a task's result, an MCP
`task_result` call. Their clients close (FIN) or reset (RST) their connections: each such
request is cancelled at once, its connection closed (a place under the listener's cap
again), one line logged, and the task it waited for runs on and finishes. Bytes a client
still there sends ahead while it waits (a pipelined request) are no departure.
"""

from __future__ import annotations

import json
import re
import socket

import trio

from daemon.listeners.websocket.listener import PENDING_HANDSHAKES
from protocol import messages as m
from tests.integration.test_hostile_clients import (
    http_request,
    mcp_endpoint,
    mcp_post,
    recv_until,
    reset,
    rig,  # noqa: F401 (the fixture)
    rpc,
    tcp_address,
)
from tests.integration.test_mcp_http import Rig, connections_on
from tests.integration.test_tasks import mcp
from tests.support.harness import DaemonFactory, DaemonProcess, open_chat, wait_log
from tests.support.http_client import HttpDaemon, start_http_daemon

MAX_CONNECTIONS = 2
CAPPED = f"""
[websocket]
enabled = true
port = 0
max_connections = {MAX_CONNECTIONS}
max_message = "64KiB"
"""
GONE = "client gone, request cancelled"
SLEEP_MS = 8000
"""How long the waited-for task runs: longer than opening and closing the waiting clients."""


async def wait_count(proc: DaemonProcess, pattern: str, count: int, *, after: int,
                     timeout: float = 30.0) -> None:
    """Until `pattern` matches `count` times in the log past `after`."""
    compiled = re.compile(pattern)
    with trio.fail_after(timeout):
        while len(compiled.findall(proc.log_text(), after)) < count:
            await trio.sleep(0.05)


async def capped_daemon_with_task(daemon_factory: DaemonFactory, prompt: str
                                  ) -> tuple[HttpDaemon, m.TaskInfo]:
    """A daemon whose listener holds `MAX_CONNECTIONS`, and a task running `prompt` for a
    chat `boss`."""
    http = await start_http_daemon(daemon_factory, CAPPED)
    async with http.proc.client("starter") as client:
        await open_chat(client, "boss", cwd=http.proc.work)
        task: m.TaskInfo = await client.request(m.TaskNew(id=0, parent="boss", prompt=prompt))
    return http, task


async def send_in_thread(sock: socket.socket, data: bytes) -> None:
    await trio.to_thread.run_sync(lambda: sock.sendall(data))


async def test_http_requests_whose_clients_left_are_cancelled(
        daemon_factory: DaemonFactory) -> None:
    """As many waiting requests as the listener holds TCP connections: once their clients
    have gone, a new client is served at once, and the task they waited for finishes."""
    http, task = await capped_daemon_with_task(daemon_factory, f"/sleep {SLEEP_MS}")
    proc = http.proc
    host, port = tcp_address(http)
    held = MAX_CONNECTIONS + PENDING_HANDSHAKES
    body = json.dumps({"task": task.task, "wait": 3600}).encode()
    mark = len(proc.log_text())
    socks = []
    for _ in range(held):
        sock = socket.create_connection((host, port))
        sock.sendall(http_request(http, "POST", "/api/task", body))
        socks.append(sock)
    await wait_count(proc, rf"task asked.*task={task.task} wait=3600", held, after=mark)
    for i, sock in enumerate(socks):
        if i % 2:
            reset(sock)
        else:
            sock.close()  # an orderly close (FIN)
    # Every place is free again: a new client is not left in the listen backlog.
    with trio.fail_after(15):
        async with http.client() as fresh:
            answer = await fresh.get("/api/status", headers=http.auth)
    assert answer.status_code == 200
    await wait_count(proc, rf'{GONE}" peer=\S+ request=task', held, after=mark)
    # Only the waiting was cancelled: the task runs on, and its result is there.
    async with proc.client("after") as client:
        running: m.TaskInfo = await client.request(m.GetTask(id=0, task=task.task))
        assert running.state == "running", (
            f"the task ended before its waiting clients left ({SLEEP_MS} ms): {running}")
        done: m.TaskInfo = await client.request(
            m.GetTask(id=0, task=task.task, wait=SLEEP_MS / 1000 + 60))
    assert (done.state, done.result) == ("done", f"slept {SLEEP_MS}"), done
    assert "Traceback" not in proc.log_text()


async def test_http_bytes_sent_ahead_are_no_departure(daemon_factory: DaemonFactory) -> None:
    """A client that pipelines more requests behind a waiting one (well past the 64 KiB
    the daemon reads ahead) gets every answer, in order."""
    http, task = await capped_daemon_with_task(daemon_factory, "/sleep 1500")
    proc = http.proc
    host, port = tcp_address(http)
    waiting = http_request(http, "POST", "/api/task",
                           json.dumps({"task": task.task, "wait": 3600}).encode())
    padded = http_request(http, "POST", "/api/ping", b" " * (60 * 1024))
    sock = socket.create_connection((host, port))
    ahead = padded * 4 + http_request(http, "GET", "/api/status")
    async with trio.open_nursery() as nursery:
        # In a thread: the daemon stops reading past 64 KiB ahead until it has answered.
        nursery.start_soon(send_in_thread, sock, waiting + ahead)
        data = await recv_until(sock, b'"pid"', timeout=60)
    answers = data.split(b"HTTP/1.1 ")[1:]
    assert [a[:3] for a in answers] == [b"200"] * 6, data[:2000]
    assert b'"state":"done"' in answers[0], answers[0]
    sock.close()
    assert GONE not in proc.log_text()


async def test_mcp_calls_whose_clients_left_are_cancelled(rig: Rig) -> None:  # noqa: F811
    proc = rig.daemon
    host, port, path, authorization = await mcp_endpoint(rig, "boss")
    async with proc.client("mcp") as client:
        short = await mcp(client, "boss", "spawn_task", {"agent": "echo", "prompt": "/sleep 1500"})
        long = await mcp(client, "boss", "spawn_task",
                         {"agent": "echo", "prompt": "/sleep 60000"})

    def result_call(task: str) -> bytes:
        return mcp_post(host, port, path, authorization, rpc("tools/call", {
            "name": "task_result", "arguments": {"id": task, "wait_seconds": 60}}))

    # Bytes sent ahead, past the 64 KiB read ahead: the call is answered, then the next.
    padded = mcp_post(host, port, path, authorization,
                      rpc("tools/list", id=2) + b" " * (256 * 1024))
    sock = socket.create_connection((host, port))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_in_thread, sock, result_call(short["id"]) + padded)
        answer = await recv_until(sock, b"spawn_task", timeout=60)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:500]
    assert b"slept 1500" in answer.split(b"HTTP/1.1 ")[1], answer[:2000]
    sock.close()
    # Closed (FIN) or reset while the call waits: cancelled, its connection closed, logged.
    for leave in (socket.socket.close, reset):
        mark = len(proc.log_text())
        sock = socket.create_connection((host, port))
        sock.sendall(result_call(long["id"]))
        await wait_log(proc, f"task asked.*task={long['id']} wait=60", after=mark)
        leave(sock)
        await wait_log(proc, f'{GONE}" peer=\\S+ method=POST path={path}', after=mark)
    with trio.fail_after(30):
        while connections_on(proc.pid, port):
            await trio.sleep(0.05)
    async with proc.client("after") as client:
        info: m.TaskInfo = await client.request(m.GetTask(id=0, task=long["id"]))
    assert info.state == "running", info
    assert "Traceback" not in proc.log_text()
