"""Issue 5 (channels): resume without gap or duplicate, across disconnects and daemon
restarts; slow clients lag without slowing anyone; heartbeats; resync; attach and log."""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import sys

import msgspec
import trio

from daemon.client import Client
from protocol import deltas as d
from protocol import messages as m
from tests.support.harness import (
    DaemonFactory,
    DaemonProcess,
    collect_turn,
    open_chat,
    subscribe,
    turn,
)

CHUNKS = 5000
STUCK_CHUNKS = 30_000
PER_CHUNK = "[daemon]\ncoalesce_chunks = 0\n"
"""One delta per chunk, however fast the agent writes: these tests need thousands of deltas
(resume mid-turn, floors, lag), which coalescing would make a few dozen."""


def chunk_texts(deltas: list[d.Delta]) -> list[str]:
    return [x.body.text for x in deltas if isinstance(x.body, d.Text)]


async def read_until(client: Client, stop: int, chat: str, into: list[d.Delta]) -> None:
    """Collect deltas of `chat` until one with seq >= stop."""
    with trio.fail_after(30):
        while True:
            event = await client.next_event()
            if isinstance(event, d.Delta) and event.chat == chat:
                into.append(event)
                if event.seq >= stop:
                    return


async def test_disconnect_mid_turn_and_resume_gets_every_delta_once(
        daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory(config=PER_CHUNK)
    daemon.start()
    async with daemon.client("driver") as driver:
        info = await open_chat(driver, "resume", cwd=daemon.work)
        got: list[d.Delta] = []
        async with daemon.client("watcher") as watcher:
            sub = await subscribe(watcher, info.chat, since=info.head_seq, epoch=info.epoch)
            accepted = await driver.request(m.Prompt(id=0, chat=info.chat,
                                                     text=f"/chunks {CHUNKS}"))
            await read_until(watcher, sub.head_seq + 1500, info.chat, got)
        # Disconnected mid-turn; the turn goes on without us.
        last = got[-1].seq
        async with daemon.client("watcher") as watcher:
            resumed = await subscribe(watcher, info.chat, since=last, epoch=sub.epoch)
            assert resumed.epoch == sub.epoch
            with trio.fail_after(30):
                while True:
                    event = await watcher.next_event()
                    if isinstance(event, d.Delta):
                        got.append(event)
                        if event.turn == accepted.turn and isinstance(event.body, d.TurnEnded):
                            break
    seqs = [x.seq for x in got]
    assert seqs == list(range(seqs[0], seqs[-1] + 1)), "gap or duplicate"
    assert chunk_texts(got) == ["c0"] + [f" c{i}" for i in range(1, CHUNKS)]


async def test_resume_after_daemon_restart_from_the_persisted_log(
        daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory(config=PER_CHUNK)
    daemon.start()
    got: list[d.Delta] = []
    async with daemon.client() as client:
        info = await open_chat(client, "restart", cwd=daemon.work)
        sub = await subscribe(client, info.chat, since=info.head_seq, epoch=info.epoch)
        accepted = await client.request(m.Prompt(id=0, chat=info.chat,
                                                 text=f"/chunks {CHUNKS}"))
        await read_until(client, sub.head_seq + 1000, info.chat, got)
        # Let the turn finish in the daemon while we no longer read. From the start of the
        # turn, not live only: it may have ended already (a live-only subscription would
        # then wait for a turn_ended that was delivered before it).
        async with daemon.client() as other:
            await subscribe(other, info.chat, since=sub.head_seq, epoch=sub.epoch)
            await collect_turn(other, info.chat, accepted.turn)
    assert daemon.stop() == 0
    daemon.start()
    async with daemon.client() as client:
        resumed = await subscribe(client, info.chat, since=got[-1].seq, epoch=sub.epoch)
        assert resumed.epoch == sub.epoch, "a clean restart keeps the history"
        with trio.fail_after(30):
            while True:
                event = await client.next_event()
                if isinstance(event, m.ResyncRequired):
                    raise AssertionError(f"unexpected resync: {event.reason}")
                if isinstance(event, m.ReplayComplete):
                    break
                if isinstance(event, d.Delta):
                    got.append(event)
    seqs = [x.seq for x in got]
    assert seqs == list(range(seqs[0], seqs[-1] + 1))
    assert chunk_texts(got) == ["c0"] + [f" c{i}" for i in range(1, CHUNKS)]
    assert [x.turn for x in got if isinstance(x.body, d.TurnEnded)] == [accepted.turn]


async def test_unclean_restart_keeps_the_epoch(daemon: DaemonProcess) -> None:
    """Deltas are delivered only once committed: after a crash the history goes on."""
    async with daemon.client() as client:
        info = await open_chat(client, "crash", cwd=daemon.work)
        await turn(client, info.chat, "before the crash")
    daemon.kill9()
    daemon.start()
    async with daemon.client() as client:
        sub = await subscribe(client, info.chat, since=3, epoch=info.epoch)
        assert sub.epoch == info.epoch
        with trio.fail_after(10):
            event = await client.next_event()
        assert isinstance(event, d.Delta)
        assert event.seq == 4


async def test_unclean_restart_after_an_older_daemon_changes_epoch_and_resyncs(
        daemon: DaemonProcess) -> None:
    """A database whose crashed daemon did not record that it delivers after commit (one
    from before that change) may have lost deltas clients saw: a new history."""
    async with daemon.client() as client:
        info = await open_chat(client, "crash", cwd=daemon.work)
        await turn(client, info.chat, "before the crash")
    daemon.kill9()
    with sqlite3.connect(daemon.state_dir / "stoker.db") as db:
        db.execute("DELETE FROM meta WHERE key='delivery'")
    daemon.start()
    async with daemon.client() as client:
        sub = await subscribe(client, info.chat, since=3, epoch=info.epoch)
        assert sub.epoch != info.epoch
        with trio.fail_after(10):
            event = await client.next_event()
        assert isinstance(event, m.ResyncRequired)
        assert "epoch" in event.reason
        assert event.seq == sub.head_seq


async def test_live_only_all_retained_and_resync_below_floor(daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory(config=PER_CHUNK + "[channels]\nring_size = 16\nretain_deltas = 50\n")
    daemon.start()
    async with daemon.client() as client:
        info = await open_chat(client, "window", cwd=daemon.work)
        await turn(client, info.chat, "/chunks 200")
    # A clean restart runs retention at startup.
    assert daemon.stop() == 0
    daemon.start()
    async with daemon.client() as client:
        live = await subscribe(client, info.chat)
        assert live.floor_seq > 1
        request = m.Subscribe(id=0, chat=info.chat, since=m.Cursor(seq=0), live=False)
        everything = await client.request(request)
        seqs = []
        with trio.fail_after(10):
            while True:
                event = await client.next_event()
                # The first (live) subscription's replay_complete may still be queued.
                if isinstance(event, m.ReplayComplete) and event.request == request.id:
                    break
                if isinstance(event, d.Delta):
                    seqs.append(event.seq)
        assert seqs == list(range(everything.floor_seq, everything.head_seq + 1))
        assert len(seqs) <= 50
    async with daemon.client() as client:
        await subscribe(client, info.chat, since=2, epoch=info.epoch)
        with trio.fail_after(10):
            event = await client.next_event()
        assert isinstance(event, m.ResyncRequired)
        assert "no longer retained" in event.reason
        assert event.snapshot.last_turn == 1


async def test_client_that_never_reads_lags_without_stalling_others(
        daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory(config=PER_CHUNK + "[channels]\nsubscriber_queue = 64\n")
    daemon.start()
    async with daemon.client() as client:
        info = await open_chat(client, "lag", cwd=daemon.work)
    # The stuck client: says hello, subscribes, then never reads.
    stuck = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.connect(str(daemon.socket))
    enc = msgspec.msgpack.Encoder()
    requests: tuple[m.Hello, m.Subscribe] = (
        m.Hello(client="stuck"),
        m.Subscribe(id=1, chat=info.chat, since=m.Cursor(seq=info.head_seq)),
    )
    for request in requests:
        payload = enc.encode(request)
        stuck.sendall(len(payload).to_bytes(4, "big") + payload)
    try:
        async with daemon.client("fast") as fast:
            # More than the stuck client can hold without lagging: what its writer took
            # before the socket filled, plus one commit's deltas (queued whole while its
            # queue is under the bound; the store holds at most 10,000 uncommitted).
            result = await turn(fast, info.chat, f"/chunks {STUCK_CHUNKS}", timeout=60)
            assert len(chunk_texts(result.deltas)) == STUCK_CHUNKS
            status = await fast.request(m.GetStatus(id=0))
            assert status.pid == daemon.pid
        # Now the stuck client reads: lagged, then everything, in order, exactly once.
        stuck.setblocking(True)
        stuck.settimeout(30)
        dec = msgspec.msgpack.Decoder(m.ClientSideServerMessage)
        buf = b""
        seqs: list[int] = []
        lagged: list[m.Lagged] = []
        done = False
        while not done:
            buf += stuck.recv(1 << 20)
            while len(buf) >= 4 and len(buf) >= 4 + int.from_bytes(buf[:4], "big"):
                size = int.from_bytes(buf[:4], "big")
                message = dec.decode(buf[4:4 + size])
                buf = buf[4 + size:]
                if isinstance(message, m.Lagged):
                    lagged.append(message)
                elif isinstance(message, d.Delta):
                    seqs.append(message.seq)
                    if isinstance(message.body, d.TurnEnded):
                        done = True
        assert lagged, "the stuck client was never told it lagged"
        assert seqs == list(range(info.head_seq + 1, seqs[-1] + 1))
    finally:
        stuck.close()


async def test_heartbeats_carry_head_seq(daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory(config='[channels]\nheartbeat = "200ms"\n')
    daemon.start()
    async with daemon.client() as client:
        info = await open_chat(client, "hb", cwd=daemon.work)
        await turn(client, info.chat, "beat")
        with trio.fail_after(5):
            while True:
                event = await client.next_event()
                if isinstance(event, m.Heartbeat):
                    break
        assert event.heads[info.chat] == (await open_chat(client, info.chat)).head_seq


async def test_attach_reconnects_and_resumes_without_gap(daemon: DaemonProcess) -> None:
    async with daemon.client() as client:
        info = await open_chat(client, "tail", cwd=daemon.work)
        await turn(client, info.chat, "first")
    attach = subprocess.Popen(  # noqa: ASYNC220 - starting it is instantaneous
        [sys.executable, "-m", "daemon.cli", "attach", info.chat, "--since", "0", "--json"],
        env=daemon.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: list[dict[str, object]] = []
    try:
        # Attached before the restart: its first replayed delta says it is subscribed.
        assert attach.stdout is not None
        with trio.fail_after(30):
            first = await trio.to_thread.run_sync(attach.stdout.readline,
                                                  abandon_on_cancel=True)
        seen.append(json.loads(first))
        async with daemon.client() as client:
            await turn(client, info.chat, "second")
        assert daemon.stop() == 0
        daemon.start()
        async with daemon.client() as client:
            await turn(client, info.chat, "third")

        def read_until_third() -> None:
            assert attach.stdout is not None
            text = ""
            for line in attach.stdout:
                event = json.loads(line)
                seen.append(event)
                body = event.get("body", {})
                if body.get("kind") == "text":
                    text += str(body["text"])
                if text.endswith("third") and body.get("kind") == "turn_ended":
                    return

        with trio.fail_after(30):
            await trio.to_thread.run_sync(read_until_third, abandon_on_cancel=True)
    finally:
        attach.terminate()
        attach.wait(10)
    seqs = [int(str(e["seq"])) for e in seen if e.get("type") == "delta"]
    assert seqs == list(range(1, seqs[-1] + 1)), "attach lost or repeated a delta"


async def test_log_prints_retained_deltas_and_exits(daemon: DaemonProcess) -> None:
    async with daemon.client() as client:
        info = await open_chat(client, "log", cwd=daemon.work)
        await turn(client, info.chat, "alpha beta")
    everything = await trio.to_thread.run_sync(daemon.cli, "log", info.chat, "--json")
    assert everything.returncode == 0, everything.stderr
    kinds = [json.loads(line)["body"]["kind"] for line in everything.stdout.splitlines()]
    assert kinds[0] == "turn_started"
    assert kinds.count("turn_ended") == 1
    later = await trio.to_thread.run_sync(daemon.cli, "log", info.chat, "--since", "3",
                                          "--json")
    assert json.loads(later.stdout.splitlines()[0])["seq"] == 4
    human = await trio.to_thread.run_sync(daemon.cli, "log", info.chat)
    assert "alpha beta" in human.stdout
    missing = await trio.to_thread.run_sync(daemon.cli, "log", "nope")
    assert missing.returncode == 1
    assert "unknown chat" in missing.stderr


async def test_a_flood_is_coalesced_into_fewer_deltas_with_the_same_text(
        daemon_factory: DaemonFactory) -> None:
    """An agent writing faster than the daemon reads: each read's run of chunks becomes one
    delta (`daemon.coalesce_chunks`), the text unchanged and in order, seqs gapless; with
    coalescing off, one delta per chunk."""
    expected = "c0" + "".join(f" c{i}" for i in range(1, CHUNKS))
    for config, coalesced in (("", True), (PER_CHUNK, False)):
        daemon = daemon_factory(config=config)
        daemon.start()
        async with daemon.client() as client:
            info = await open_chat(client, "flood", cwd=daemon.work)
            result = await turn(client, info.chat, f"/chunks {CHUNKS}", timeout=120)
            texts = chunk_texts(result.deltas)
            assert "".join(texts) == expected
            seqs = [x.seq for x in result.deltas]
            assert seqs == list(range(seqs[0], seqs[-1] + 1))
            if coalesced:
                # The echo agent writes its chunks in blocks: most reads hold many.
                assert len(texts) < CHUNKS // 4, len(texts)
            else:
                assert len(texts) == CHUNKS
            # What a client replays from the log is what was delivered live.
            async with daemon.client() as other:
                await subscribe(other, info.chat, since=0, epoch=info.epoch)
                replayed = await collect_turn(other, info.chat, result.turn)
            assert chunk_texts(replayed.deltas) == texts
        assert daemon.stop() == 0
