"""GET /v1/identities and /v1/identities/{id}: security identities with their labels and references."""

from __future__ import annotations

from typing import Protocol

from fastapi import APIRouter

from cilia.api.errors import not_found
from cilia.api.models import Identity
from cilia.identity.allocator import Identity as AllocatedIdentity


class IdentitySource(Protocol):
    def all(self) -> list[AllocatedIdentity]: ...


def identity_view(identity: AllocatedIdentity) -> Identity:
    return Identity(id=identity.id, labels=[str(label) for label in identity.labels], reserved=identity.reserved,
                    references=identity.references)


def make_router(identities: IdentitySource) -> APIRouter:
    router = APIRouter(prefix="/v1")

    @router.get("/identities", response_model=list[Identity])
    def list_identities() -> list[Identity]:
        return [identity_view(i) for i in identities.all()]

    @router.get("/identities/{identity_id}", response_model=Identity)
    def get_identity(identity_id: int) -> Identity:
        for identity in identities.all():
            if identity.id == identity_id:
                return identity_view(identity)
        raise not_found(f"identity {identity_id}")

    return router
