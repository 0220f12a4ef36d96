"""Issue 23 end to end: the real `qwen --acp` in a shared agent process (`process =
"shared"`): two chats on one qwen, each with its own ACP session, warm turns, separate
histories, interleaved turns that stay in their chats.

The scripted model (tests/e2e/fake_llm.py) answers with the markers it finds in the user
messages it was sent, so a chat's reply shows the history qwen keeps for that chat's
session. One daemon serves the whole module (one warm qwen, the cold start paid once); every
message the daemon sent qwen is validated against the official ACP schema when the module
ends. Only the newest pinned qwen runs here (the per-chat tests cover the older one).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from daemon.client import Client
from tests.e2e.agents import QWEN_ARGS, QWEN_SETTINGS, QWEN_VERSION, qwen, qwen_env
from tests.e2e.fake_llm import FakeLLM
from tests.e2e.rig import (
    SHARED,
    TracedDaemon,
    agent_table,
    finish_rig,
    installed_or_skip,
    interleaved_turns,
    module_daemon,
    rig_dirs,
    separate_histories,
    shared_process_missing,
    traced_command,
)

pytestmark = pytest.mark.e2e

AGENT = "qwen"


@dataclass(kw_only=True)
class SharedRig(TracedDaemon):
    llm: FakeLLM


@pytest.fixture(scope="module")
def rig() -> Iterator[SharedRig]:
    missing = shared_process_missing()
    if missing is not None:
        pytest.skip(missing)
    installed = installed_or_skip(qwen(QWEN_VERSION))
    assert installed.binary is not None
    with FakeLLM(default="(unscripted reply)") as llm, module_daemon() as daemon:
        trace_dir, home, workspace = rig_dirs(daemon)
        (home / ".qwen").mkdir()
        (home / ".qwen" / "settings.json").write_text(json.dumps(QWEN_SETTINGS, indent=2))
        argv = traced_command(trace_dir, AGENT, [str(installed.binary), *QWEN_ARGS])
        daemon.write_config(agent_table(AGENT, argv, qwen_env(llm.base_url, home), **SHARED))
        daemon.start()
        made = SharedRig(daemon, trace_dir, workspace, llm=llm)
        yield made
        finish_rig(made, llm.errors)


@pytest.fixture
async def client(rig: SharedRig) -> AsyncIterator[Client]:
    async with rig.daemon.client("e2e") as connected:
        yield connected


async def test_two_chats_share_one_qwen_with_separate_histories(
        rig: SharedRig, client: Client, record_property: Any) -> None:
    started = time.perf_counter()
    latency = await separate_histories(rig, rig.llm, client, AGENT)
    record_property("qwen_shared_warm_first_chunk_s", round(latency, 4))
    print(f"\nqwen {QWEN_VERSION} shared: warm first chunk {latency * 1000:.0f} ms; "
          f"test took {time.perf_counter() - started:.1f}s")


async def test_interleaved_turns_stay_in_their_chats(rig: SharedRig) -> None:
    await interleaved_turns(rig.daemon, rig.llm, rig.workspace, AGENT)
