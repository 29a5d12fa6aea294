"""The API application: its description, its error handling and the routers it is given."""

from __future__ import annotations

from collections.abc import Iterable

from fastapi import APIRouter, FastAPI

from cilia import __version__
from cilia.agent.api.errors import UnexpectedErrors, api_error_handler
from cilia.api.errors import ApiError


def create_app(routers: Iterable[APIRouter]) -> FastAPI:
    app = FastAPI(
        title="cilia agent API",
        version=__version__,
        description="Local API of a cilia node agent (unix socket, mode 0600).",
    )
    app.add_exception_handler(ApiError, api_error_handler)
    app.add_middleware(UnexpectedErrors)
    for router in routers:
        app.include_router(router)
    return app
