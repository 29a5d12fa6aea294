"""Flow API routes: GET /v1/flows (last N, filters, follow) and GET /v1/monitor (decoded events) as
NDJSON, and GET /v1/flows/status. Reads only the flow rings.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import StreamingResponse

from cilia.flows.filter import FlowFilter
from cilia.flows.ring import FlowRing, Subscriber

_NOT_FILTERS = {"last", "follow"}


async def _stream(request: Request, ring: FlowRing, flow_filter: FlowFilter, last: int, follow: bool,
                  line: Callable[[dict[str, Any]], bytes]) -> AsyncIterator[bytes]:
    """The last `last` entries, then (with `follow`) each new one until the client goes away."""
    subscriber = Subscriber(asyncio.get_running_loop(), flow_filter) if follow else None
    if subscriber is not None:
        ring.subscribe(subscriber)
    try:
        for entry in ring.last(last, flow_filter):
            yield line(entry)
        while subscriber is not None and not await request.is_disconnected():
            try:
                entry = await asyncio.wait_for(subscriber.queue.get(), timeout=1.0)
            except TimeoutError:
                continue
            yield line(entry)
    finally:
        if subscriber is not None:
            ring.unsubscribe(subscriber)


def make_router(ring: FlowRing, node_name: str, raw: FlowRing | None = None) -> APIRouter:
    router = APIRouter(prefix="/v1")

    def flow_line(flow: dict[str, Any]) -> bytes:
        return (json.dumps({"flow": flow, "node_name": node_name, "time": flow.get("time")}) + "\n").encode()

    def event_line(event: dict[str, Any]) -> bytes:
        return (json.dumps(event) + "\n").encode()

    @router.get("/flows")
    async def flows(request: Request, last: int = 20, follow: bool = False) -> StreamingResponse:
        params: dict[str, list[str]] = {}
        for key, value in request.query_params.multi_items():
            if key not in _NOT_FILTERS:
                params.setdefault(key, []).append(value)
        try:
            flow_filter = FlowFilter.from_params(params)
        except ValueError as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from exc
        return StreamingResponse(_stream(request, ring, flow_filter, last, follow, flow_line),
                                 media_type="application/x-ndjson")

    @router.get("/monitor")
    async def monitor(request: Request, last: int = 0, follow: bool = True) -> StreamingResponse:
        """Decoded datapath events, unenriched, as they arrive (NDJSON)."""
        events = raw if raw is not None else FlowRing(1)
        return StreamingResponse(_stream(request, events, FlowFilter(), last, follow, event_line),
                                 media_type="application/x-ndjson")

    @router.get("/flows/status")
    def status() -> dict[str, int]:
        return {"buffered": len(ring), "seen": ring.seen, "events_lost": ring.events_lost}

    return router
