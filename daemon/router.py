"""The router: every request type of the protocol, registered once with its handler.

A subsystem declares its handlers next to the code they call, in a `Routes` table (a
decorator per handler, naming the request type and whether it is slow); its child in the
supervision tree binds the table to the subsystem's object, and the tree registers every
child's routes with the one `Router`. Each transport's connections ask the router two
things: whether a request is slow (answered in its own task, so that one long request never
holds up the next), and the answer (`handle`).

Registering a request type twice is refused (`RouteConflict`): two handlers for one type
would leave the answer to whichever registered last. `subscribe` and `unsubscribe` are not
routed: they change the connection's own subscriptions, so the connection answers them
itself (`CONNECTION_REQUESTS`).

A leaf module at the bottom of the daemon's layers (next to `errors` and `log`): it imports
only the protocol and the daemon's errors, so a subsystem at any layer (workspaces, ssh)
declares its routes here without importing the service above it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from daemon.errors import BadRequest
from protocol import messages as m

C = TypeVar("C")
"""The object a table's handlers are bound to (the subsystem's service)."""
R = TypeVar("R", bound=m.RequestBase)

Handler = Callable[[Any, str], Awaitable[Any]]
"""A bound handler: (request, client name) -> the reply's result."""

CONNECTION_REQUESTS: tuple[type[m.RequestBase], ...] = (m.Subscribe, m.Unsubscribe)
"""Answered by the connection itself (they act on its subscriptions), never routed."""


class RouteConflict(ValueError):
    """A request type was registered twice (or is one the connection answers itself)."""


@dataclass(frozen=True, slots=True)
class Route:
    """One request type and who answers it."""

    request: type[m.RequestBase]
    handler: Handler
    slow: bool
    """Answered in its own task: its reply may overtake later requests' replies."""
    owner: str
    """The table it came from, for error messages and `statistics()`."""


@dataclass(frozen=True, slots=True)
class Declared(Generic[C]):
    """A handler as declared in a `Routes` table, before it is bound to its object."""

    request: type[m.RequestBase]
    function: Callable[[C, Any, str], Awaitable[Any]]
    slow: bool


class Routes(Generic[C]):
    """The request handlers of one subsystem, declared at module level::

        ROUTES: Routes[WorkspaceService] = Routes("workspaces")

        @ROUTES.handles(m.WorkspaceDiff, slow=True)
        async def workspace_diff(ws: WorkspaceService, req: m.WorkspaceDiff,
                                 client: str) -> m.DiffResult: ...

    Declaring is static (no daemon needed), so the list of slow requests can be read
    without starting anything; `bind` makes the routes the tree registers."""

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self._declared: list[Declared[C]] = []

    def handles(self, request: type[R], *, slow: bool = False
                ) -> Callable[[Callable[[C, R, str], Awaitable[Any]]],
                              Callable[[C, R, str], Awaitable[Any]]]:
        """Declare the decorated function as the handler of `request`."""
        def declare(function: Callable[[C, R, str], Awaitable[Any]]
                    ) -> Callable[[C, R, str], Awaitable[Any]]:
            if any(d.request is request for d in self._declared):
                raise RouteConflict(f"{self.owner} declares {_name(request)} twice")
            self._declared.append(Declared(request, function, slow))
            return function
        return declare

    def __iter__(self) -> Iterator[Declared[C]]:
        return iter(self._declared)

    def bind(self, context: C) -> tuple[Route, ...]:
        """The routes with their handlers bound to `context`, in declaration order."""
        return tuple(Route(d.request, _bound(d.function, context), d.slow, self.owner)
                     for d in self._declared)


def _bound(function: Callable[[C, Any, str], Awaitable[Any]], context: C) -> Handler:
    async def handler(request: Any, client: str) -> Any:
        return await function(context, request, client)
    return handler


@dataclass(frozen=True, slots=True)
class RouterStatistics:
    routes: int
    slow: tuple[str, ...]
    """Tags of the slow request types, in registration order."""
    owners: dict[str, int]
    """Routes per table."""


class Router:
    """The one table from request type to handler. Registration happens while the tree is
    built, before any listener accepts a client; lookups are by exact type (one dict
    lookup per request)."""

    def __init__(self) -> None:
        self._routes: dict[type[Any], Route] = {}

    def register(self, route: Route) -> None:
        """Add one route. Raises `RouteConflict` if its request type already has one."""
        if route.request in CONNECTION_REQUESTS:
            raise RouteConflict(f"{_name(route.request)} is answered by the connection, "
                                f"not routed ({route.owner})")
        existing = self._routes.get(route.request)
        if existing is not None:
            raise RouteConflict(f"{_name(route.request)} is registered twice: by "
                                f"{existing.owner} and by {route.owner}")
        self._routes[route.request] = route

    def include(self, routes: tuple[Route, ...]) -> None:
        for route in routes:
            self.register(route)

    def is_slow(self, request: object) -> bool:
        """Whether the connection answers `request` in its own task."""
        route = self._routes.get(type(request))
        return route is not None and route.slow

    async def handle(self, request: Any, client: str) -> Any:
        """The result of `request` (for the connection's reply). A type without a route is
        a `BadRequest`, as it was before routing: the client gets an error, not a drop."""
        route = self._routes.get(type(request))
        if route is None:
            raise BadRequest(f"request {type(request).__name__} is not available in this "
                             "daemon")
        return await route.handler(request, client)

    def routes(self) -> tuple[Route, ...]:
        """Every route, in registration order."""
        return tuple(self._routes.values())

    def slow_requests(self) -> tuple[type[m.RequestBase], ...]:
        return tuple(r.request for r in self._routes.values() if r.slow)

    def statistics(self) -> RouterStatistics:
        owners: dict[str, int] = {}
        for route in self._routes.values():
            owners[route.owner] = owners.get(route.owner, 0) + 1
        return RouterStatistics(routes=len(self._routes),
                                slow=tuple(_name(t) for t in self.slow_requests()),
                                owners=owners)


def slow_requests(*tables: Routes[Any]) -> tuple[type[m.RequestBase], ...]:
    """The slow request types declared by `tables`, in order (for the protocol document,
    which lists them without starting a daemon)."""
    return tuple(d.request for table in tables for d in table if d.slow)


def _name(request: type[m.RequestBase]) -> str:
    return str(request.__struct_config__.tag)
