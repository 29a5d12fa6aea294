"""Flow API routes: GET /v1/flows (last N, filters, follow) and GET /v1/monitor (decoded events) as
NDJSON, and GET /v1/flows/status. Reads only the flow rings.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import StreamingResponse

from cilia.flows.filter import FlowFilter
from cilia.flows.ring import FlowRing, Subscriber

_NOT_FILTERS = {"last", "follow"}


def make_router(ring: FlowRing, node_name: str, raw: FlowRing | None = None) -> APIRouter:
    router = APIRouter(prefix="/v1")

    def line(flow: dict[str, Any]) -> bytes:
        return (json.dumps({"flow": flow, "node_name": node_name, "time": flow.get("time")}) + "\n").encode()

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

        async def body() -> AsyncIterator[bytes]:
            subscriber = Subscriber(asyncio.get_running_loop(), flow_filter) if follow else None
            if subscriber is not None:
                ring.subscribe(subscriber)
            try:
                for flow in ring.last(last, flow_filter):
                    yield line(flow)
                while subscriber is not None:
                    if await request.is_disconnected():
                        return
                    try:
                        flow = await asyncio.wait_for(subscriber.queue.get(), timeout=1.0)
                    except TimeoutError:
                        continue
                    yield line(flow)
            finally:
                if subscriber is not None:
                    ring.unsubscribe(subscriber)

        return StreamingResponse(body(), media_type="application/x-ndjson")

    @router.get("/monitor")
    async def monitor(request: Request, last: int = 0, follow: bool = True) -> StreamingResponse:
        """Decoded datapath events, unenriched, as they arrive (NDJSON)."""
        events = raw if raw is not None else FlowRing(1)
        everything = FlowFilter()

        async def body() -> AsyncIterator[bytes]:
            subscriber = Subscriber(asyncio.get_running_loop(), everything) if follow else None
            if subscriber is not None:
                events.subscribe(subscriber)
            try:
                for event in events.last(last, everything):
                    yield (json.dumps(event) + "\n").encode()
                while subscriber is not None and not await request.is_disconnected():
                    try:
                        event = await asyncio.wait_for(subscriber.queue.get(), timeout=1.0)
                    except TimeoutError:
                        continue
                    yield (json.dumps(event) + "\n").encode()
            finally:
                if subscriber is not None:
                    events.unsubscribe(subscriber)

        return StreamingResponse(body(), media_type="application/x-ndjson")

    @router.get("/flows/status")
    def status() -> dict[str, int]:
        return {"buffered": len(ring), "seen": ring.seen, "events_lost": ring.events_lost}

    return router
