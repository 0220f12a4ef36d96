"""The Python client example of docs/PROTOCOL.md runs against a real daemon and prints the
echo agent's reply: the documented protocol is the one the daemon speaks."""

from __future__ import annotations

import subprocess
import sys

from tests.support.harness import ROOT, DaemonProcess


def test_protocol_example_streams_a_reply(daemon: DaemonProcess) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "protocol_client.py"), "hello", "from",
         "the", "docs"],
        env=daemon.env(), cwd=str(daemon.work), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello from the docs\n"
