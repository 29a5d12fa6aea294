"""/v1/resources: apply, delete and list Kubernetes-shaped objects in the node's object store.

Applies and deletes are serialised here (one batch at a time, its watchers included). A bad object
is a 400 naming object and field (ResourceError); anything else that goes wrong is a 500 naming the
objects of the batch, logged with its traceback.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol

from fastapi import APIRouter

from cilia.agent.api.errors import internal_error
from cilia.api.errors import ApiError, invalid
from cilia.api.models import ApplyRequest, ApplyResult, ApplyResultItem
from cilia.resources import ResourceError
from cilia.resources.store import ApplyOutcome, Object
from cilia.resources.validate import describe

_NAMED = 3  # objects an error names before "and N more"


class ObjectStore(Protocol):
    def apply(self, objects: list[Object]) -> list[ApplyOutcome]: ...

    def delete(self, objects: list[Object]) -> list[ApplyOutcome]: ...

    def list(self, kind: str, namespace: str | None = None) -> list[Object]: ...


def batch_text(objects: list[Object]) -> str:
    """`Pod team-a/web, Service default/web and 3 more`: what a failed batch held."""
    names = [describe(o) if isinstance(o, dict) else type(o).__name__ for o in objects[:_NAMED]]
    more = len(objects) - _NAMED
    return ", ".join(names) + (f" and {more} more" if more > 0 else "") if names else "no objects"


def make_router(store: ObjectStore, revision: Callable[[], int] | None = None) -> APIRouter:
    """`revision`: the policy revision once a batch was accepted (its watchers ran), for the answer."""
    router = APIRouter(prefix="/v1")
    lock = threading.Lock()

    def run(verb: str, change: Callable[[list[Object]], list[ApplyOutcome]], objects: list[Object]) -> ApplyResult:
        with lock:
            try:
                outcomes = change(objects)
            except ResourceError as exc:
                raise invalid(str(exc)) from exc
            except ApiError:
                raise
            except Exception as exc:
                raise internal_error(f"{verb} {batch_text(objects)}", exc) from exc
            produced = revision() if revision is not None else None
        return ApplyResult(items=[
            ApplyResultItem(kind=o.kind, namespace=o.namespace, name=o.name, action=o.action) for o in outcomes],
            revision=produced)

    @router.post("/resources/apply", response_model=ApplyResult)
    def apply(request: ApplyRequest) -> ApplyResult:
        return run("applying", store.apply, request.objects)

    @router.post("/resources/delete", response_model=ApplyResult)
    def delete(request: ApplyRequest) -> ApplyResult:
        return run("deleting", store.delete, request.objects)

    @router.get("/resources")
    def list_resources(kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
        return store.list(kind, namespace)

    return router
