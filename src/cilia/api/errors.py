"""Errors the agent API answers with: an HTTP status plus a CNI-compatible error body.

The CNI codes are the spec's, defined once in `cilia.cni.spec`; the plugin passes a code below
100 through to the runtime unchanged, so a wrong number here is a wrong meaning there.
"""

from __future__ import annotations

from cilia.api.models import ErrorBody
from cilia.cni import spec

# CNI spec error codes the plugin passes through unchanged (values from cilia.cni.spec).
CNI_UNKNOWN_CONTAINER = spec.UNKNOWN_CONTAINER
CNI_INVALID_ENV = spec.INVALID_ENV  # a request parameter the runtime passed (CNI_ARGS IP=, MAC=) is unusable
CNI_INVALID_NETWORK_CONFIG = spec.INVALID_NETWORK_CONFIG
CNI_TRY_AGAIN_LATER = spec.TRY_AGAIN_LATER
# cilia's own codes (100 and up, as the spec reserves them for plugins).
CILIA_IPAM_EXHAUSTED = 101
CILIA_DATAPATH = 102
CILIA_NETLINK = 103
CILIA_INVALID_OBJECT = 104
CILIA_NOT_FOUND = 105
CILIA_INTERNAL = 199


class ApiError(Exception):
    """Raised by agent components; the API layer renders it as `status` + ErrorBody."""

    def __init__(self, status: int, code: int, message: str, details: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details

    def body(self) -> ErrorBody:
        return ErrorBody(code=self.code, message=self.message, details=self.details)


def not_found(what: str) -> ApiError:
    return ApiError(404, CILIA_NOT_FOUND, f"{what} not found")


def invalid(message: str, details: str = "") -> ApiError:
    return ApiError(400, CILIA_INVALID_OBJECT, message, details)
