"""Issue 16: hostile files in a workspace, against the real daemon and real echo agents.

A FIFO is the agent's to make (`mkfifo` is one terminal command away), and opening one for
reading waits for a writer that never comes. These tests put real FIFOs (and a real Unix
socket) in a chat's directory and have the echo agent read and write them through the
daemon's `fs/*`: each request must be refused with an error the agent sees, the turn must
end, other chats must keep being served, and SIGTERM must still stop the daemon.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable
from pathlib import Path

import trio

from daemon.client import Client
from protocol import deltas as d
from protocol import messages as m
from tests.support.bystander import assert_within_twice, bystander
from tests.support.harness import (
    DaemonFactory,
    DaemonProcess,
    open_chat,
    subscribe,
    turn,
    wait_actor,
)

FIFO_CHATS = 42
"""More than trio's default thread limit (40), which the store's writer shares: before the
fix, this many reads of FIFOs held every worker thread forever and no commit happened."""


async def test_reading_or_writing_a_fifo_is_refused_and_the_turn_ends(
        daemon: DaemonProcess) -> None:
    fifo = daemon.work / "pipe"
    os.mkfifo(fifo)
    with contextlib.closing(socket.socket(socket.AF_UNIX)) as sock:
        sock.bind(str(daemon.work / "sock"))
        async with daemon.client() as client:
            info = await open_chat(client, "fifo", cwd=daemon.work)
            with trio.fail_after(30):
                read = await turn(client, info.chat, "/read pipe")
            assert read.ended.stop_reason == "end_turn"
            assert read.text.startswith("error:"), read.text
            assert "FIFO" in read.text, read.text
            wrote = await turn(client, info.chat, "/write pipe hello")
            assert wrote.text.startswith("error:"), wrote.text
            assert "FIFO" in wrote.text, wrote.text
            sock_read = await turn(client, info.chat, "/read sock")
            assert "socket" in sock_read.text, sock_read.text
            # The same agent still reads and writes regular files.
            assert (await turn(client, info.chat, "/write a.txt fine")).text.startswith("wrote")
            assert (await turn(client, info.chat, "/read a.txt")).text == "fine"
    assert Path(fifo).is_fifo()
    assert daemon.stop(timeout=20) == 0


async def test_many_fifo_reads_starve_neither_the_store_nor_other_chats(
        daemon_factory: DaemonFactory) -> None:
    # Every FIFO chat's agent stays warm: eviction is not what this test is about.
    daemon = daemon_factory(config=f"[lifecycle]\nmax_warm = {FIFO_CHATS + 8}\n")
    daemon.start()
    pipes = daemon.work / "pipes"
    pipes.mkdir()
    for i in range(FIFO_CHATS):
        os.mkfifo(pipes / f"p{i}")
    chats = {f"fifo{i}": f"/read pipes/p{i}" for i in range(FIFO_CHATS)}
    async with daemon.client("hostile") as hostile, bystander(daemon) as other:
        for chat in chats:
            await open_chat(hostile, chat, cwd=daemon.work)
            await subscribe(hostile, chat)
        # Every FIFO chat's agent is warm before the baseline: what is measured below is
        # the FIFO reads, not 42 agents starting at once on this machine's cores (which
        # slowed the bystander's turns 70x in one CI run, FIFOs or not).
        with trio.fail_after(60 + 2 * FIFO_CHATS):
            async with trio.open_nursery() as nursery:
                for chat in chats:
                    nursery.start_soon(hostile.request, m.Warm(id=0, chat=chat))
        baseline = await other.sample()
        for chat, prompt in chats.items():
            await hostile.request(m.Prompt(id=0, chat=chat, text=prompt))
        # Every agent has its prompt and reads its FIFO at once: before the fix, each of
        # those reads held one of trio's shared worker threads for good (busy for ever);
        # after it, the turn is over at once. Another client's chat is served meanwhile
        # (its turns take store commits), within twice its normal latency.
        during = await other.sample()
        for chat in chats:
            await wait_actor(hostile, chat, lambda a: a.state == "busy" or a.turns >= 1,
                             timeout=30 + FIFO_CHATS)
        assert_within_twice(baseline, during)
        # Each FIFO turn ends (once), and its agent was told why.
        turns = FirstTurns(set(chats))
        await turns.collect(hostile, lambda: turns.ended == turns.chats, timeout=30)
        for chat in chats:
            assert turns.texts[chat].startswith("error:"), turns.texts[chat]
            assert "FIFO" in turns.texts[chat], turns.texts[chat]
    assert daemon.stop(timeout=30) == 0


class FirstTurns:
    """What the first turn of each chat of `chats` did, from one client's events."""

    def __init__(self, chats: set[str]) -> None:
        self.chats = chats
        self.ended: set[str] = set()
        self.texts = dict.fromkeys(chats, "")

    async def collect(self, client: Client, done: Callable[[], bool], timeout: float) -> None:
        """Read `client`'s events into this record until `done()` holds."""
        with trio.fail_after(timeout):
            while not done():
                event = await client.next_event()
                if not isinstance(event, d.Delta) or event.chat not in self.chats:
                    continue
                if event.turn != 1:
                    continue
                if isinstance(event.body, d.Text):
                    self.texts[event.chat] += event.body.text
                elif isinstance(event.body, d.TurnEnded):
                    assert event.chat not in self.ended, f"{event.chat}: turn ended twice"
                    assert event.body.stop_reason == "end_turn", event.body
                    self.ended.add(event.chat)
