"""The supervision tree's child specs: started in order, stopped in reverse, routes
registered once when the tree is built."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from daemon.config.file import Config
from daemon.router import Route, RouteConflict, Router
from daemon.service.tree import ChildSpec, Tree
from protocol import messages as m


def _child(name: str, events: list[str], *, fail_start: bool = False,
           fail_stop: bool = False, stop: bool = True, routes: tuple[Route, ...] = ()
           ) -> ChildSpec:
    async def start(nursery: trio.Nursery) -> None:
        events.append(f"start {name}")
        if fail_start:
            raise RuntimeError(f"{name} cannot start")

    async def do_stop() -> None:
        events.append(f"stop {name}")
        if fail_stop:
            raise RuntimeError(f"{name} cannot stop")

    def reload(config: Config) -> None:
        events.append(f"reload {name}")

    return ChildSpec(name, start=start, stop=do_stop if stop else None, reload=reload,
                     routes=routes)


async def _answer(request: Any, client: str) -> m.Ok:
    return m.Ok()


async def test_children_start_in_order_and_stop_in_reverse() -> None:
    events: list[str] = []
    tree = Tree([_child(n, events) for n in ("a", "b", "c")], Router())
    async with trio.open_nursery() as nursery:
        await tree.start(nursery)
        assert tree.statistics().started == ("a", "b", "c")
        tree.reload(Config())
        await tree.stop()
    assert events == ["start a", "start b", "start c", "reload a", "reload b", "reload c",
                      "stop c", "stop b", "stop a"]
    assert tree.statistics().started == ()


async def test_only_started_children_stop() -> None:
    events: list[str] = []
    tree = Tree([_child("a", events), _child("b", events, fail_start=True),
                 _child("c", events)], Router())
    async with trio.open_nursery() as nursery:
        with pytest.raises(RuntimeError, match="b cannot start"):
            await tree.start(nursery)
        await tree.stop()
    assert events == ["start a", "start b", "stop a"]


async def test_a_failing_stop_does_not_keep_the_others_running() -> None:
    events: list[str] = []
    tree = Tree([_child("a", events), _child("b", events, fail_stop=True),
                 _child("c", events, stop=False)], Router())
    async with trio.open_nursery() as nursery:
        await tree.start(nursery)
        await tree.stop()
    assert events == ["start a", "start b", "start c", "stop b", "stop a"]


async def test_stop_finishes_when_cancelled() -> None:
    events: list[str] = []

    async def slow_stop() -> None:
        await trio.sleep(0.01)
        events.append("stop slow")

    tree = Tree([_child("a", events), ChildSpec("slow", start=_nothing, stop=slow_stop)],
                Router())
    async with trio.open_nursery() as nursery:
        await tree.start(nursery)
        with trio.CancelScope() as scope:
            scope.cancel()
            await tree.stop()
    assert events == ["start a", "stop slow", "stop a"]


async def _nothing(nursery: trio.Nursery) -> None:
    del nursery


def test_child_routes_are_registered_when_the_tree_is_built() -> None:
    router = Router()
    ping = Route(m.Ping, _answer, slow=False, owner="a")
    Tree([ChildSpec("a", start=_nothing, routes=(ping,))], router)
    assert router.routes() == (ping,)


def test_two_children_answering_one_type_are_refused() -> None:
    ping = Route(m.Ping, _answer, slow=False, owner="a")
    with pytest.raises(RouteConflict):
        Tree([ChildSpec("a", start=_nothing, routes=(ping,)),
              ChildSpec("b", start=_nothing, routes=(ping,))], Router())


def test_child_ids_are_unique() -> None:
    with pytest.raises(ValueError, match="unique: a"):
        Tree([ChildSpec("a", start=_nothing), ChildSpec("a", start=_nothing)], Router())
