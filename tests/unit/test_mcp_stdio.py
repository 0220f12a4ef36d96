"""The stdio entry offered to a remote agent taking stdio (daemon/ssh/mcp_stdio.py): what it
holds where, the program it runs over there, and what the python3 probe's exit means."""

from __future__ import annotations

import ast
import http.client
import select
import socket
import sys
import time

from daemon.mcp.offer import http_entry
from daemon.ssh import mcp_bridge
from daemon.ssh.mcp_stdio import probe_problem, program, stdio_entry


def test_the_credential_goes_to_the_environment_and_the_url_to_argv() -> None:
    http = http_entry("a chat", "qwen", "http://127.0.0.1:4242")
    [header] = http["headers"]
    credential = header["value"].removeprefix("Bearer ")
    entry = stdio_entry(http)
    assert entry["name"] == "stoker"
    assert entry["command"] == "python3"
    assert entry["args"] == ["-c", program(), "http://127.0.0.1:4242/mcp/a%20chat?agent=qwen"]
    assert entry["env"] == [{"name": "STOKER_MCP_CREDENTIAL", "value": credential}]
    assert credential not in "".join(entry["args"])


def test_the_program_is_python_3_7_and_the_standard_library_only() -> None:
    tree = ast.parse(program(), feature_version=(3, 7))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported, "no imports found"
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}, imported


def test_the_probe_exit_says_what_is_wrong() -> None:
    assert probe_problem(0, b"") == ""
    assert probe_problem(1, b"") == "its python3 is older than 3.7"
    assert probe_problem(1, b"", "3.6.9") == "its python3 (3.6.9) is older than 3.7"
    assert probe_problem(127, b"sh: python3: not found") == "python3 is not found on its PATH"
    assert probe_problem(None, b"") == "python3 does not run (exit status None)"
    assert probe_problem(2, b"boom\n") == "python3 does not run (boom)"


def test_a_kept_alive_connection_is_reused_only_while_open_and_fresh() -> None:
    """The bridge's choice of connection (daemon/ssh/mcp_bridge.py `Bridge.take`), over real
    loopback sockets: a connection the server closed, or one idle too long, is closed and
    not reused (a request sent on it may be read and lost at once, and is never resent)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        bridge = mcp_bridge.Bridge(f"http://127.0.0.1:{port}/mcp/c", "secret")

        def kept(age: float) -> tuple[http.client.HTTPConnection, socket.socket]:
            conn = http.client.HTTPConnection("127.0.0.1", port)
            conn.connect()
            peer, _ = server.accept()
            bridge.idle.append((conn, time.monotonic() - age))
            return conn, peer

        fresh, fresh_peer = kept(0.0)
        assert bridge.take() == (fresh, True)

        dropped, dropped_peer = kept(0.0)
        dropped_peer.close()
        # The FIN is seen once it arrived (poll, not a sleep: loopback delivers at once).
        select.select([dropped.sock], [], [], 5.0)
        stale, stale_peer = kept(mcp_bridge.IDLE_REUSE + 1)
        taken, was_kept = bridge.take()
        assert not was_kept
        assert taken not in (dropped, stale)
        assert dropped.sock is None, "not closed"
        assert stale.sock is None, "not closed"
        assert bridge.idle == []
        for sock in (fresh_peer, stale_peer):
            sock.close()
        fresh.close()


def test_the_bridge_leaves_a_connection_well_before_the_daemon_would() -> None:
    """A kept-alive connection is reused only while the daemon's endpoint would not close it
    for idleness, with room for a request on its way (daemon/listeners/mcp_http.py)."""
    from daemon.listeners import mcp_http

    assert mcp_bridge.IDLE_REUSE <= mcp_http.KEEPALIVE / 2
