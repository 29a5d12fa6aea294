"""`cilia_agent_api_process_time_seconds{method,path,return_code}` (Cilium's
`cilium_agent_api_process_time_seconds`): an ASGI middleware timing every API request. `path` is
the route's template (`/v1/endpoints/{endpoint_id}`), never the raw path, so the series stay
bounded; a request no route matched is `path="unmatched"`. Streams (`observe -f`) are timed to
their end."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from prometheus_client import CollectorRegistry, Histogram

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Asgi = Callable[[Scope, Receive, Send], Awaitable[None]]
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def api_histogram(registry: CollectorRegistry) -> Histogram:
    return Histogram("cilia_agent_api_process_time_seconds",
                     "Processing time of all the API calls made to the cilia-agent, labeled by API method, "
                     "API path and returned HTTP code.", labelnames=["method", "path", "return_code"],
                     buckets=BUCKETS, registry=registry)


class ApiTimer:
    def __init__(self, app: Asgi, histogram: Histogram) -> None:
        self.app = app
        self.histogram = histogram

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # an exception before the response started
        started = time.perf_counter()

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message.get("type") == "http.response.start":
                status = int(message.get("status", 500))
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = scope.get("route")  # set by the router on the scope it was given
            path = str(getattr(route, "path", "")) or "unmatched"
            self.histogram.labels(method=str(scope.get("method", "")), path=path,
                                  return_code=str(status)).observe(time.perf_counter() - started)
