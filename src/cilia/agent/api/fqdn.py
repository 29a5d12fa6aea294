"""GET/DELETE /v1/fqdn/cache (the DNS proxy's name cache: `cilia fqdn cache list|clean`) and
POST /v1/fqdn/identity (the DNS proxy asks for the FQDN identity of a set of toFQDNs selectors).

The cache belongs to the DNS proxy (cilia-proxy), which persists it; the agent reads that file
and asks for a clean by a request file the proxy consumes within a second."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any, Protocol

from fastapi import APIRouter
from pydantic import BaseModel

from cilia.api.errors import invalid
from cilia.fqdn.cache import read_rows
from cilia.paths import NodePaths

CLEAN_WAIT_SECONDS = 5.0


class FqdnIdentitySource(Protocol):
    def fqdn_identity(self, selectors: Iterable[str], timeout: float = 2.0) -> int | None: ...


class IdentityRequest(BaseModel):
    selectors: list[str]


def make_router(identities: FqdnIdentitySource, paths: NodePaths) -> APIRouter:
    router = APIRouter(prefix="/v1")

    @router.get("/fqdn/cache")
    def cache_list(name: str = "") -> list[dict[str, Any]]:
        try:
            rows = read_rows(paths.fqdn_cache_file, time.time())
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise invalid(f"fqdn cache: {paths.fqdn_cache_file} unreadable: {exc}") from exc
        return [{"name": r.name, "ip": r.ip, "ttl_left": r.ttl_left, "expires": r.expires,
                 "endpoints": list(r.endpoints)} for r in rows if not name or r.name.rstrip(".") == name.rstrip(".")]

    @router.delete("/fqdn/cache")
    def cache_clean() -> dict[str, Any]:
        request = paths.fqdn_clean_request
        request.parent.mkdir(parents=True, exist_ok=True)
        request.touch()
        deadline = time.monotonic() + CLEAN_WAIT_SECONDS
        while request.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        return {"cleaned": not request.exists()}

    @router.post("/fqdn/identity")
    def fqdn_identity(body: IdentityRequest) -> dict[str, Any]:
        if not body.selectors or len(body.selectors) > 256:
            raise invalid("fqdn identity: give 1-256 selectors")
        return {"identity": identities.fqdn_identity(body.selectors)}

    return router
