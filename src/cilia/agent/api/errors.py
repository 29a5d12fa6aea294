"""How the API answers errors: ApiError as its status + ErrorBody, anything unexpected as a 500 that
names the request (and the objects, where a router knows them) and is logged with its traceback."""

from __future__ import annotations

import logging

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cilia.api.errors import CILIA_INTERNAL, ApiError

log = logging.getLogger("cilia.agent.api")


def api_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return JSONResponse(status_code=exc.status, content=exc.body().model_dump())


def internal_error(what: str, exc: BaseException) -> ApiError:
    """Log `exc` with its traceback and return the 500 to answer with, naming `what` failed."""
    log.error("%s: unexpected %s", what, type(exc).__name__, exc_info=exc)
    return ApiError(500, CILIA_INTERNAL, f"{what}: unexpected {type(exc).__name__}: {exc}",
                    "a bug in the agent: its log has the traceback")


def request_text(scope: Scope) -> str:
    """`GET /v1/resources?kind=Pod`: the method and the resource a request named."""
    query = scope.get("query_string", b"").decode("latin-1")
    return f"{scope.get('method', '?')} {scope.get('path', '?')}{'?' + query if query else ''}"


class UnexpectedErrors:
    """ASGI middleware inside the app's exception handlers: what reaches it has no handler (not an
    ApiError, HTTPException or validation error), so it is a bug. It is logged and answered with
    the usual error body naming the request. A stream that already started cannot change its status:
    the exception is logged and passed on, and the server closes the connection."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            error = internal_error(request_text(scope), exc)
            if started:
                raise
            await api_error_handler(Request(scope), error)(scope, receive, send)
