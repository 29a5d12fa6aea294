"""The agent's client over its unix socket (used by the CLI, the CNI plugin and tests)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from cilia.api.models import (
    ApplyRequest,
    ApplyResult,
    ClusterNode,
    Endpoint,
    EndpointCreateRequest,
    ErrorBody,
    GcRequest,
    GcResult,
    Identity,
    NodeStatus,
    PolicyWaitResult,
)
from cilia.cni.spec import INVALID_NETWORK_CONFIG


class AgentUnavailable(Exception):
    """The socket is missing or refuses connections."""


class PolicyNotEnforced(Exception):
    """`apply(..., wait=S)`: the endpoints did not reach the change's policy revision in time, or
    some could not install it."""

    def __init__(self, result: PolicyWaitResult) -> None:
        self.result = result
        super().__init__(describe_wait(result))


def describe_wait(result: PolicyWaitResult) -> str:
    """One line for a wait that did not end well (or "" when it did)."""
    parts = []
    if not result.reached:
        parts.append(f"policy revision {result.revision} not reached (current {result.current}); "
                     f"endpoints still regenerating: {', '.join(map(str, result.pending)) or 'none'}")
    if result.not_ready:
        parts.append("endpoints not ready: " + "; ".join(f"{i}: {why}" for i, why in sorted(result.not_ready.items())))
    return ". ".join(parts)


class AgentError(Exception):
    """The agent answered with an error."""

    def __init__(self, status: int, body: ErrorBody) -> None:
        self.status = status
        self.body = body
        super().__init__(body.message + (f" ({body.details})" if body.details else ""))


def _error_body(response: httpx.Response) -> ErrorBody:
    try:
        data = response.json()
    except ValueError:
        return ErrorBody(code=199, message=f"agent answered {response.status_code}: {response.text[:200]}")
    if isinstance(data, dict) and "code" in data and "message" in data:
        return ErrorBody.model_validate(data)
    detail = data.get("detail") if isinstance(data, dict) else data
    if isinstance(detail, list):  # FastAPI validation errors: name the field
        parts = []
        for item in detail:
            location = ".".join(str(p) for p in item.get("loc", []) if p != "body")
            parts.append(f"field {location!r}: {item.get('msg')}")
        return ErrorBody(code=INVALID_NETWORK_CONFIG, message="invalid request: " + "; ".join(parts))
    return ErrorBody(code=199, message=str(detail))


class AgentClient:
    def __init__(self, socket_path: Path, timeout: float = 60) -> None:
        self.socket_path = socket_path
        self._client = httpx.Client(
            transport=httpx.HTTPTransport(uds=str(socket_path)), base_url="http://cilia", timeout=timeout
        )

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        if not self.socket_path.exists():
            raise AgentUnavailable(f"agent socket {self.socket_path} does not exist: is cilia-agent running?")
        try:
            response = self._client.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise AgentUnavailable(f"cannot reach the agent at {self.socket_path}: {exc}") from exc
        if response.status_code >= 400:
            raise AgentError(response.status_code, _error_body(response))
        return response

    def get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        return self._request("GET", path, params=params).json()

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return self._request("POST", path, json=body).json()

    def delete_json(self, path: str) -> Any:
        return self._request("DELETE", path).json()

    def patch(self, path: str, body: dict[str, Any]) -> Any:
        return self._request("PATCH", path, json=body).json()

    def healthz(self) -> dict[str, Any]:
        result: dict[str, Any] = self.get("/v1/healthz")
        return result

    def status(self) -> NodeStatus:
        return NodeStatus.model_validate(self.get("/v1/status"))

    def create_endpoint(self, request: EndpointCreateRequest) -> Endpoint:
        response = self._request("POST", "/v1/endpoints", json=request.model_dump())
        return Endpoint.model_validate(response.json())

    def delete_endpoint_by_container(self, container_id: str, ifname: str) -> bool:
        try:
            self._request("DELETE", f"/v1/endpoints/by-container/{container_id}", params={"ifname": ifname})
        except AgentError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def get_endpoint_by_container(self, container_id: str, ifname: str) -> Endpoint | None:
        try:
            data = self.get(f"/v1/endpoints/by-container/{container_id}", params={"ifname": ifname})
        except AgentError as exc:
            if exc.status == 404:
                return None
            raise
        return Endpoint.model_validate(data)

    def list_endpoints(self) -> list[Endpoint]:
        return [Endpoint.model_validate(e) for e in self.get("/v1/endpoints")]

    def get_endpoint(self, endpoint_id: int) -> Endpoint:
        return Endpoint.model_validate(self.get(f"/v1/endpoints/{endpoint_id}"))

    def gc(self, request: GcRequest) -> GcResult:
        return GcResult.model_validate(self._request("POST", "/v1/gc", json=request.model_dump()).json())

    def list_nodes(self) -> list[ClusterNode]:
        return [ClusterNode.model_validate(n) for n in self.get("/v1/nodes")]

    def list_identities(self) -> list[Identity]:
        return [Identity.model_validate(i) for i in self.get("/v1/identities")]

    def get_identity(self, identity_id: int) -> Identity:
        return Identity.model_validate(self.get(f"/v1/identities/{identity_id}"))

    def apply(self, request: ApplyRequest, wait: float | None = None) -> ApplyResult:
        """Apply objects. With `wait` (seconds), return only once every endpoint's policy reflects
        the change (raises PolicyNotEnforced otherwise): the agent regenerates in the background."""
        response = self._request("POST", "/v1/resources/apply", json=request.model_dump())
        result = ApplyResult.model_validate(response.json())
        if wait is not None:
            self.wait_policy(result.revision, wait, check=True)
        return result

    def wait_policy(self, revision: int | None = None, timeout: float = 30.0, *,
                    check: bool = False) -> PolicyWaitResult:
        """Until every endpoint's installed policy reflects `revision` (default: the current one)."""
        params: dict[str, Any] = {"timeout": timeout}
        if revision is not None:
            params["revision"] = revision
        response = self._request("GET", "/v1/policy/wait", params=params, timeout=timeout + 30)
        result = PolicyWaitResult.model_validate(response.json())
        if check and not result.ok:
            raise PolicyNotEnforced(result)
        return result

    def delete(self, request: ApplyRequest, wait: float | None = None) -> ApplyResult:
        result = ApplyResult.model_validate(
            self._request("POST", "/v1/resources/delete", json=request.model_dump()).json()
        )
        if wait is not None:
            self.wait_policy(result.revision, wait, check=True)
        return result

    def stream_lines(self, path: str, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        if not self.socket_path.exists():
            raise AgentUnavailable(f"agent socket {self.socket_path} does not exist: is cilia-agent running?")
        try:
            with self._client.stream("GET", path, params=params, timeout=None) as response:
                if response.status_code >= 400:
                    response.read()
                    raise AgentError(response.status_code, _error_body(response))
                for line in response.iter_lines():
                    if line.strip():
                        yield json.loads(line)
        except httpx.TransportError as exc:
            raise AgentUnavailable(f"cannot reach the agent at {self.socket_path}: {exc}") from exc
