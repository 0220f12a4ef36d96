"""The router: one handler per request type, refused twice, and the slow flags the protocol
document lists."""

from __future__ import annotations

import socket
import typing
from pathlib import Path
from typing import Any

import pytest

from daemon.config.file import Config
from daemon.config.paths import Paths
from daemon.errors import BadRequest
from daemon.router import CONNECTION_REQUESTS, Route, RouteConflict, Router, Routes
from daemon.service.root import REQUEST_TABLES, SLOW_REQUESTS, build
from daemon.store.sqlite import Store
from protocol import messages as m

SLOW_BEFORE = (m.SetMode, m.SetConfig, m.Authenticate, m.CloseChat, m.Reload, m.Inspect,
               m.ListChats, m.GetStatus, m.Permit, m.Cancel, m.DescribeAgent, m.Warm,
               m.WorkspaceNew, m.CloseWorkspace, m.RestoreWorkspace, m.WorkspaceDiff,
               m.Reap, m.ListComputers, m.Trace, m.Stats,
               m.TaskNew, m.GetTask, m.TaskSend, m.TaskCancel,
               m.WorkflowRun, m.ListWorkflows, m.GetWorkflow, m.WorkflowCancel,
               m.WorkflowResume)
"""The slow requests as the connection listed them before the router, then the ones added
since (order included: docs/PROTOCOL.md shows them in this order)."""


async def _pong(request: Any, client: str) -> m.Pong:
    return m.Pong(time=0.0)


def _route(request: type[m.RequestBase], owner: str = "test", slow: bool = False) -> Route:
    return Route(request=request, handler=_pong, slow=slow, owner=owner)


def _service_router(tmp_path: Path) -> Router:
    """The router of a daemon built as `serve` builds it (nothing started: building does no
    I/O, so an unopened store and an unbound socket do)."""
    paths = Paths(socket=tmp_path / "s", state_dir=tmp_path, config=tmp_path / "c.toml",
                  config_explicit=False)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        service, tree, _unix = build(paths, Config(), Store(paths.database, commit_interval=0.005,
                                                             batch_max=1), "instance", sock,
                                     None, None, None)
    assert tree.router is service.router
    return service.router


def test_a_type_registered_twice_is_refused() -> None:
    router = Router()
    router.register(_route(m.Ping, owner="first"))
    with pytest.raises(RouteConflict, match=r"ping.*first.*second"):
        router.register(_route(m.Ping, owner="second"))
    assert [r.owner for r in router.routes()] == ["first"]


def test_a_table_declaring_a_type_twice_is_refused() -> None:
    table: Routes[None] = Routes("table")

    @table.handles(m.Ping)
    async def one(ctx: None, req: m.Ping, client: str) -> m.Pong:
        return m.Pong(time=1.0)

    with pytest.raises(RouteConflict):
        @table.handles(m.Ping, slow=True)
        async def two(ctx: None, req: m.Ping, client: str) -> m.Pong:
            return m.Pong(time=2.0)


@pytest.mark.parametrize("request_type", CONNECTION_REQUESTS)
def test_connection_requests_are_not_routed(request_type: type[m.RequestBase]) -> None:
    with pytest.raises(RouteConflict, match="connection"):
        Router().register(_route(request_type))


async def test_handle_calls_the_bound_handler_with_the_client() -> None:
    table: Routes[list[str]] = Routes("table")

    @table.handles(m.CloseChat, slow=True)
    async def close(seen: list[str], req: m.CloseChat, client: str) -> m.Ok:
        seen.append(f"{req.chat} by {client}")
        return m.Ok()

    seen: list[str] = []
    router = Router()
    router.include(table.bind(seen))
    assert await router.handle(m.CloseChat(id=1, chat="c1"), "cli") == m.Ok()
    assert seen == ["c1 by cli"]
    assert router.is_slow(m.CloseChat(id=2, chat="c1"))
    assert not router.is_slow(m.Ping(id=3))


async def test_a_type_without_a_route_is_a_bad_request() -> None:
    with pytest.raises(BadRequest, match="Ping is not available"):
        await Router().handle(m.Ping(id=1), "cli")


def test_every_request_type_has_exactly_one_handler(tmp_path: Path) -> None:
    router = _service_router(tmp_path)
    routed = [route.request for route in router.routes()]
    assert len(routed) == len(set(routed))
    every = set(typing.get_args(m.Request))
    assert set(routed) | set(CONNECTION_REQUESTS) == every
    assert not set(routed) & set(CONNECTION_REQUESTS)
    # The tables the protocol document reads are the ones the children registered.
    assert routed == [declared.request for table in REQUEST_TABLES for declared in table]


def test_slow_flags_are_as_before(tmp_path: Path) -> None:
    router = _service_router(tmp_path)
    assert router.slow_requests() == SLOW_BEFORE
    assert SLOW_REQUESTS == SLOW_BEFORE
    for route in router.routes():
        assert route.slow == (route.request in SLOW_BEFORE), route.request
    stats = router.statistics()
    assert stats.routes == len(typing.get_args(m.Request)) - len(CONNECTION_REQUESTS)
    assert set(stats.owners) == {"core", "workspaces", "computers", "traces", "tasks",
                                 "workflows"}
