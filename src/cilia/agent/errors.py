"""Errors the agent's API answers with: an HTTP status plus a CNI-compatible error body."""

from __future__ import annotations

from cilia.api.models import ErrorBody

# CNI spec error codes the plugin passes through unchanged.
CNI_INVALID_NETWORK_CONFIG = 4
CNI_UNKNOWN_CONTAINER = 5
CNI_INVALID_ENV = 7
CNI_TRY_AGAIN_LATER = 11
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
