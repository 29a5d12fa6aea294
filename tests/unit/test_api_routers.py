"""The agent's API routers against fakes of the narrow interfaces they take: paths, answers, the
error body (ApiError's status and code), and any unexpected exception answered with an error that
names the request or the objects, and logged with its traceback."""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from fastapi import APIRouter
from fastapi.testclient import TestClient

from cilia.agent.api import bpf, config, endpoints, flows, identities, policy, resources, services, status
from cilia.agent.api.app import create_app
from cilia.api.errors import CILIA_INTERNAL, CILIA_INVALID_OBJECT, CILIA_NOT_FOUND, not_found
from cilia.api.models import (
    AgentConfigPatch,
    AgentConfigView,
    Endpoint,
    EndpointCreateRequest,
    EndpointPolicyStatus,
    EndpointState,
    NodeStatus,
    PolicyWaitResult,
)
from cilia.flows.ring import FlowRing
from cilia.identity.allocator import Identity as AllocatedIdentity
from cilia.identity.labels import LabelSet
from cilia.lb.model import BackendState, ServiceName
from cilia.maps.ct import CtEntry, CtTuple
from cilia.maps.endpoints import EndpointInfo
from cilia.maps.ipcache import IpcacheValue, Prefix
from cilia.maps.metrics import MetricsKey
from cilia.maps.policy import InstalledEntries
from cilia.policy.rules import PolicyRef
from cilia.policy.trace import TraceResult
from cilia.resources import ResourceError
from cilia.resources.kinds import CORE_KINDS, Kind, KindRegistry
from cilia.resources.store import ApplyOutcome, LocalStore, Object


def client(*routers: APIRouter) -> Iterator[TestClient]:
    # raise_server_exceptions stays on: an exception the app lets escape fails the test.
    with TestClient(create_app(routers)) as test_client:
        yield test_client


def endpoint(endpoint_id: int, pod: str = "web") -> Endpoint:
    return Endpoint(id=endpoint_id, container_id=f"c{endpoint_id}", ifname="eth0", netns="/run/netns/x",
                    host_ifname=f"lxc{endpoint_id}", host_ifindex=10 + endpoint_id, mac="02:00:00:00:00:01",
                    host_mac="02:00:00:00:00:02", ipv4=f"10.0.0.{endpoint_id}", ipv6=None, gateway_ipv4="10.0.0.254",
                    gateway_ipv6=None, pod_namespace="default", pod_name=pod, identity=1000 + endpoint_id,
                    labels=[f"k8s:app={pod}"], state=EndpointState.READY, created_at=1.0)


class FakeEndpoints:
    def __init__(self, *known: Endpoint) -> None:
        self.known = {e.id: e for e in known}
        self.gc_valid: set[tuple[str, str]] | None = None
        self.fail_with: Exception | None = None

    def create(self, request: EndpointCreateRequest) -> Endpoint:
        created = endpoint(len(self.known) + 1, request.pod_name)
        self.known[created.id] = created
        return created

    def list_endpoints(self) -> list[Endpoint]:
        return list(self.known.values())

    def get(self, endpoint_id: int) -> Endpoint:
        if self.fail_with is not None:
            raise self.fail_with
        if endpoint_id not in self.known:
            raise not_found(f"endpoint {endpoint_id}")
        return self.known[endpoint_id]

    def delete(self, endpoint_id: int) -> bool:
        return self.known.pop(endpoint_id, None) is not None

    def view_by_container(self, container_id: str, ifname: str) -> Endpoint | None:
        found = [e for e in self.known.values() if e.container_id == container_id and e.ifname == ifname]
        return found[0] if found else None

    def delete_by_container(self, container_id: str, ifname: str) -> bool:
        found = self.view_by_container(container_id, ifname)
        return found is not None and self.delete(found.id)

    def gc(self, valid: set[tuple[str, str]]) -> list[int]:
        self.gc_valid = valid
        return [3]


class FakePolicy:
    def __init__(self) -> None:
        self.audit: dict[int, bool | None] = {}

    def status(self, endpoint_id: int) -> EndpointPolicyStatus | None:
        return EndpointPolicyStatus(ingress="enabled", egress="disabled", audit=bool(self.audit.get(endpoint_id)))

    def set_endpoint_audit(self, endpoint_id: int, audit: bool | None) -> None:
        self.audit[endpoint_id] = audit


def assert_error(response: Any, status_code: int, code: int, *message_parts: str) -> dict[str, Any]:
    assert response.status_code == status_code, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == {"code", "message", "details"} and body["code"] == code
    for part in message_parts:
        assert part in body["message"]
    return body


# --- endpoints -------------------------------------------------------------------------------------

@pytest.fixture
def endpoint_api() -> Iterator[tuple[TestClient, FakeEndpoints, FakePolicy]]:
    fake, fake_policy = FakeEndpoints(endpoint(1), endpoint(2, "db")), FakePolicy()
    for test_client in client(endpoints.make_router(fake, fake_policy)):
        yield test_client, fake, fake_policy


def test_endpoints_carry_their_policy_status(endpoint_api: tuple[TestClient, FakeEndpoints, FakePolicy]) -> None:
    api, _fake, _policy = endpoint_api
    listed = api.get("/v1/endpoints").json()
    assert [(e["id"], e["pod_name"], e["policy"]["ingress"]) for e in listed] == [(1, "web", "enabled"),
                                                                                 (2, "db", "enabled")]
    created = api.post("/v1/endpoints", json={"container_id": "x", "netns": "/run/netns/x", "pod_name": "new"})
    assert created.status_code == 201 and created.json()["pod_name"] == "new" and created.json()["policy"]
    configured = api.patch("/v1/endpoints/2/config", json={"policy_audit_mode": True})
    assert configured.json()["policy"]["audit"] is True
    # by container: the record's own view, as before the split (no policy status)
    by_container = api.get("/v1/endpoints/by-container/c1", params={"ifname": "eth0"}).json()
    assert by_container["id"] == 1 and by_container["policy"] is None


def test_unknown_endpoints_are_404_with_the_error_body(
        endpoint_api: tuple[TestClient, FakeEndpoints, FakePolicy]) -> None:
    api, _fake, fake_policy = endpoint_api
    assert_error(api.get("/v1/endpoints/9"), 404, CILIA_NOT_FOUND, "endpoint 9 not found")
    assert_error(api.patch("/v1/endpoints/9/config", json={"policy_audit_mode": True}), 404, CILIA_NOT_FOUND)
    assert fake_policy.audit == {}  # nothing was set for an endpoint that does not exist
    assert_error(api.delete("/v1/endpoints/9"), 404, CILIA_NOT_FOUND, "endpoint 9")
    assert_error(api.get("/v1/endpoints/by-container/nope"), 404, CILIA_NOT_FOUND, "'nope' interface 'eth0'")
    assert_error(api.delete("/v1/endpoints/by-container/nope", params={"ifname": "net1"}), 404, CILIA_NOT_FOUND,
                 "'nope' interface 'net1'")
    assert api.delete("/v1/endpoints/by-container/c1").status_code == 204
    assert api.delete("/v1/endpoints/1").status_code == 404


def test_gc_names_the_attachment_without_a_container_id(
        endpoint_api: tuple[TestClient, FakeEndpoints, FakePolicy]) -> None:
    api, fake, _policy = endpoint_api
    assert_error(api.post("/v1/gc", json={"valid_attachments": [{"containerID": "a"}, {"ifname": "eth0"}]}), 400,
                 CILIA_INVALID_OBJECT, "valid_attachments[1]: field 'containerID' is required")
    assert fake.gc_valid is None
    answer = api.post("/v1/gc", json={"valid_attachments": [{"containerID": "a"}, {"containerID": "b", "ifname": "x"}]})
    assert answer.json() == {"removed": [3]} and fake.gc_valid == {("a", "eth0"), ("b", "x")}


# --- unexpected exceptions -------------------------------------------------------------------------

def test_an_unexpected_exception_is_an_error_naming_the_request_and_is_logged(
        endpoint_api: tuple[TestClient, FakeEndpoints, FakePolicy], caplog: pytest.LogCaptureFixture) -> None:
    api, fake, _policy = endpoint_api
    fake.fail_with = TypeError("'int' object is not iterable")
    with caplog.at_level(logging.ERROR, logger="cilia.agent.api"):
        answer = api.get("/v1/endpoints/7")
    body = assert_error(answer, 500, CILIA_INTERNAL, "GET /v1/endpoints/7",
                        "unexpected TypeError: 'int' object is not iterable")
    assert "log" in body["details"]
    [record] = [r for r in caplog.records if r.name == "cilia.agent.api"]
    assert record.levelno == logging.ERROR and "GET /v1/endpoints/7" in record.getMessage()
    assert record.exc_info is not None and record.exc_info[0] is TypeError  # the traceback is in the log
    # the API keeps answering, and expected errors keep their own status
    fake.fail_with = None
    assert api.get("/v1/endpoints/1").status_code == 200
    assert_error(api.get("/v1/endpoints/9"), 404, CILIA_NOT_FOUND)


def test_request_validation_errors_keep_fastapis_shape(
        endpoint_api: tuple[TestClient, FakeEndpoints, FakePolicy]) -> None:
    api, _fake, _policy = endpoint_api
    answer = api.post("/v1/endpoints", json={"container_id": "x"})
    assert answer.status_code == 422 and answer.json()["detail"][0]["loc"] == ["body", "netns"]


def test_the_query_names_the_object_too(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        def apply(self, objects: list[Object]) -> list[ApplyOutcome]:
            raise AssertionError("not called")

        delete = apply

        def list(self, kind: str, namespace: str | None = None) -> list[Object]:
            raise KeyError(kind)

    for api in client(resources.make_router(Broken())):
        with caplog.at_level(logging.ERROR, logger="cilia.agent.api"):
            answer = api.get("/v1/resources", params={"kind": "Pod", "namespace": "team-a"})
        assert_error(answer, 500, CILIA_INTERNAL, "GET /v1/resources?kind=Pod&namespace=team-a", "KeyError")


# --- resources -------------------------------------------------------------------------------------

def pod(name: str, namespace: str = "default", **spec: Any) -> Object:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def test_apply_and_delete_through_a_store(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "r.db", KindRegistry(CORE_KINDS))
    for api in client(resources.make_router(store)):
        applied = api.post("/v1/resources/apply", json={"objects": [pod("web")]}).json()
        assert applied == {"items": [{"kind": "Pod", "namespace": "default", "name": "web", "action": "created"}],
                           "revision": None}
        assert [o["metadata"]["name"] for o in api.get("/v1/resources", params={"kind": "Pod"}).json()] == ["web"]
        assert_error(api.post("/v1/resources/apply", json={"objects": [pod("Web")]}), 400, CILIA_INVALID_OBJECT,
                     "Pod default/Web: field 'metadata.name'")
        deleted = api.post("/v1/resources/delete", json={"objects": [pod("web"), pod("gone")]}).json()
        assert [i["action"] for i in deleted["items"]] == ["deleted", "not-found"]
        assert_error(api.post("/v1/resources/delete", json={"objects": [{"kind": "Pod"}]}), 400, CILIA_INVALID_OBJECT,
                     "'kind' and 'metadata.name' are required")


def test_a_validator_that_crashes_gives_an_error_naming_the_objects(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    def crash(obj: Object) -> None:
        for _port in obj["spec"]["ports"]:  # a number where a list belongs: TypeError, as the fuzz found
            pass

    store = LocalStore(tmp_path / "r.db", KindRegistry([*CORE_KINDS, Kind("v1", "Thing", True, crash)]))
    thing = {"apiVersion": "v1", "kind": "Thing", "metadata": {"name": "t", "namespace": "team-a"},
             "spec": {"ports": 80}}
    for api in client(resources.make_router(store)):
        with caplog.at_level(logging.ERROR, logger="cilia.agent.api"):
            answer = api.post("/v1/resources/apply", json={"objects": [thing]})
        assert_error(answer, 500, CILIA_INTERNAL, "applying Thing team-a/t", "unexpected TypeError")
        assert any(r.exc_info and r.exc_info[0] is TypeError for r in caplog.records)
        many = [pod(f"p{i}") for i in range(4)] + [thing]
        assert_error(api.post("/v1/resources/apply", json={"objects": many}), 500, CILIA_INTERNAL,
                     "applying Pod default/p0, Pod default/p1, Pod default/p2 and 2 more")
        assert api.get("/v1/resources", params={"kind": "Pod"}).json() == []  # the batch stored nothing


def test_a_resource_error_from_a_watcher_is_a_400(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "r.db", KindRegistry(CORE_KINDS))

    def watcher(_event: str, obj: Object, _old: Object | None) -> None:
        raise ResourceError(f"Pod {obj['metadata']['name']}: refused")

    store.watch(watcher)
    for api in client(resources.make_router(store)):
        assert_error(api.post("/v1/resources/apply", json={"objects": [pod("web")]}), 400, CILIA_INVALID_OBJECT,
                     "Pod web: refused")


# --- identities, policy, config, status ----------------------------------------------------------

class FakeIdentities:
    def all(self) -> list[AllocatedIdentity]:
        return [AllocatedIdentity(2, LabelSet.parse_many(["reserved:world"]), True),
                AllocatedIdentity(1001, LabelSet.parse_many(["k8s:app=web"]), False, 2)]


def test_identities() -> None:
    for api in client(identities.make_router(FakeIdentities())):
        assert api.get("/v1/identities").json() == [
            {"id": 2, "labels": ["reserved:world="], "reserved": True, "references": 0},
            {"id": 1001, "labels": ["k8s:app=web"], "reserved": False, "references": 2}]
        assert api.get("/v1/identities/1001").json()["labels"] == ["k8s:app=web"]
        assert_error(api.get("/v1/identities/5"), 404, CILIA_NOT_FOUND, "identity 5")


class FakeCatalog:
    revision = 7

    def refs(self) -> list[PolicyRef]:
        return [PolicyRef("CiliumNetworkPolicy", "team-a", "web"),
                PolicyRef("CiliumClusterwideNetworkPolicy", "", "all")]

    def rules_of(self, ref: PolicyRef) -> Sequence[object]:
        return ("r1", "r2") if ref.name == "web" else ("r1",)


class FakeQueries:
    def __init__(self) -> None:
        self.traced: list[tuple[Any, ...]] = []

    def selecting(self, ref: PolicyRef) -> list[int]:
        return [1, 2] if ref.name == "web" else []

    def trace(self, src: policy.TraceSide, dst: policy.TraceSide, protocol: str, port: int) -> TraceResult:
        self.traced.append((src, dst, protocol, port))
        if src[0] == "nope/x":
            raise LookupError("source: no local endpoint for pod nope/x")
        return TraceResult(True, None, None)


class FakeRevisions:
    def __init__(self) -> None:
        self.waited: list[tuple[int | None, float]] = []

    def wait(self, revision: int | None, timeout: float) -> PolicyWaitResult:
        self.waited.append((revision, timeout))
        target = 7 if revision is None else revision
        return PolicyWaitResult(revision=target, current=7, reached=target <= 7,
                                pending=[] if target <= 7 else [2], not_ready={})


def test_policy_wait_passes_revision_and_timeout_and_checks_them() -> None:
    revisions = FakeRevisions()
    for api in client(policy.make_router(FakeCatalog(), FakeQueries(), revisions)):
        assert api.get("/v1/policy/wait", params={"revision": 5, "timeout": 2}).json() == {
            "revision": 5, "current": 7, "reached": True, "pending": [], "not_ready": {}}
        assert api.get("/v1/policy/wait", params={"revision": 9, "timeout": 0}).json()["pending"] == [2]
        assert api.get("/v1/policy/wait").json()["revision"] == 7
        assert revisions.waited == [(5, 2.0), (9, 0.0), (None, 30.0)]
        assert_error(api.get("/v1/policy/wait", params={"revision": -1}), 400, CILIA_INVALID_OBJECT, "negative")
        assert_error(api.get("/v1/policy/wait", params={"timeout": 3600}), 400, CILIA_INVALID_OBJECT, "0-600 s")
        assert len(revisions.waited) == 3  # refused requests never waited


def test_an_apply_answers_with_the_policy_revision(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "r.db", KindRegistry(CORE_KINDS))
    produced = iter([4, 5])
    for api in client(resources.make_router(store, lambda: next(produced))):
        assert api.post("/v1/resources/apply", json={"objects": [pod("web")]}).json()["revision"] == 4
        assert api.post("/v1/resources/delete", json={"objects": [pod("web")]}).json()["revision"] == 5


def test_policy_list_and_trace() -> None:
    queries = FakeQueries()
    for api in client(policy.make_router(FakeCatalog(), queries, FakeRevisions())):
        assert api.get("/v1/policy").json() == {"revision": 7, "policies": [
            {"kind": "CiliumNetworkPolicy", "namespace": "team-a", "name": "web", "rules": 2,
             "selects_endpoints": [1, 2]},
            {"kind": "CiliumClusterwideNetworkPolicy", "namespace": "", "name": "all", "rules": 1,
             "selects_endpoints": []}]}
        traced = api.post("/v1/policy/trace", json={"src_pod": "a/b", "dst_ip": "10.0.0.1", "dport": 80})
        assert traced.json() == {"verdict": "ALLOWED", "egress": None, "ingress": None}
        assert queries.traced[-1] == (("a/b", [], None), (None, [], "10.0.0.1"), "TCP", 80)
        assert_error(api.post("/v1/policy/trace", json={"src_pod": "nope/x", "dport": 80}), 400,
                     CILIA_INVALID_OBJECT, "policy trace: source: no local endpoint for pod nope/x")


class FakeSettings:
    def __init__(self) -> None:
        self.view = AgentConfigView(policy_enforcement="default", policy_audit_mode=False, allow_localhost="auto")

    def config(self) -> AgentConfigView:
        return self.view

    def patch_config(self, patch: AgentConfigPatch) -> AgentConfigView:
        self.view = self.view.model_copy(update=patch.model_dump(exclude_none=True))
        return self.view


class FakeStatus:
    def status(self) -> NodeStatus:
        return NodeStatus(node="n1", version="0", uptime_seconds=1.0, endpoints=2, identities=3, ipv4_pod_cidr=None,
                          ipv6_pod_cidr=None, datapath={}, restored_endpoints=0, flows_buffered=0, events_lost=0)


def test_config_status_and_health() -> None:
    for api in client(config.make_router(FakeSettings()), status.make_router("n1", FakeStatus())):
        assert api.get("/v1/healthz").json() == {"status": "ok", "node": "n1"}
        assert api.get("/v1/status").json()["endpoints"] == 2
        assert api.patch("/v1/config", json={"policy_enforcement": "always"}).json()["policy_enforcement"] == "always"
        assert api.get("/v1/config").json()["policy_enforcement"] == "always"
        assert api.patch("/v1/config", json={"policy_enforcement": "sometimes"}).status_code == 422


# --- services --------------------------------------------------------------------------------------

class FakeServices:
    def __init__(self) -> None:
        self.states: list[tuple[ServiceName, str, int, BackendState]] = []

    def services(self) -> list[dict[str, Any]]:
        return [{"namespace": "default", "name": "web", "frontends": []}]

    def maglev(self, name: ServiceName) -> list[dict[str, Any]]:
        if name != ServiceName("default", "web"):
            raise LookupError(f"service {name.namespace}/{name.name} not found")
        return [{"frontend": "10.96.0.1:80", "table": [1, 2]}]

    def set_backend_state(self, service: ServiceName, address: ipaddress.IPv4Address | ipaddress.IPv6Address,
                          port: int, state: BackendState) -> None:
        if port == 81:
            raise LookupError(f"service {service.namespace}/{service.name} has no backend {address} port {port}")
        self.states.append((service, str(address), port, state))


def test_services() -> None:
    fake = FakeServices()
    for api in client(services.make_router(fake)):
        assert api.get("/v1/services").json()[0]["name"] == "web"
        assert api.get("/v1/services/default/web").json()["name"] == "web"
        assert_error(api.get("/v1/services/default/db"), 404, CILIA_NOT_FOUND, "service default/db")
        assert api.get("/v1/services/default/web/maglev").json()[0]["table"] == [1, 2]
        assert_error(api.get("/v1/services/x/y/maglev"), 404, CILIA_NOT_FOUND, "service x/y")
        backend = {"address": "fd00::5", "port": 80, "state": "quarantined"}
        assert api.patch("/v1/services/default/web/backends", json=backend).json()["name"] == "web"
        assert fake.states == [(ServiceName("default", "web"), "fd00::5", 80, BackendState.QUARANTINED)]
        assert_error(api.patch("/v1/services/default/web/backends", json={**backend, "address": "10.0.0.300"}), 400,
                     CILIA_INVALID_OBJECT, "service default/web backend:")
        assert_error(api.patch("/v1/services/default/web/backends", json={**backend, "port": 81}), 404,
                     CILIA_NOT_FOUND, "no backend fd00::5 port 81")


# --- bpf maps and flows ----------------------------------------------------------------------------

class FakeMaps:
    def lb_entries(self) -> Any:
        class Entries:
            services: dict[Any, Any] = {}
            backends: dict[int, Any] = {}
        return Entries()

    def ct_entries(self) -> list[tuple[CtTuple, CtEntry]]:
        return [(CtTuple(ipaddress.ip_address("fd00::1"), ipaddress.ip_address("fd00::2"), 40000, 80, 6),
                 CtEntry(150, 1, 60, 1, 60, 0, 1001, 0x12, 0x12, False))]

    def ipcache_entries(self) -> dict[Prefix, IpcacheValue]:
        return {ipaddress.ip_network("10.0.0.1/32"): IpcacheValue(1001)}

    def endpoint_entries(self) -> dict[Any, EndpointInfo]:
        return {}

    def metric_totals(self) -> dict[MetricsKey, tuple[int, int]]:
        return {MetricsKey(1, 0, 1): (3, 180)}

    def policy_entries(self, endpoint_id: int) -> InstalledEntries | None:
        return None


def test_bpf_maps_are_rendered_rows() -> None:
    routers = bpf.make_router(FakeMaps(), FakeEndpoints(endpoint(1)), lambda _rule: None, clock=lambda: 100.0)
    for api in client(routers):
        [row] = api.get("/v1/bpf/ct").json()
        assert (row["proto"], row["source"], row["destination"], row["expires_in"]) == (
            "TCP", "[fd00::1]:40000", "[fd00::2]:80", 50)
        assert api.get("/v1/bpf/ipcache").json() == [
            {"prefix": "10.0.0.1/32", "identity": 1001, "tunnel_endpoint": None}]
        assert api.get("/v1/bpf/metrics").json() == [
            {"endpoint_id": 1, "direction": "egress", "reason": "FORWARDED", "packets": 3, "bytes": 180}]
        assert api.get("/v1/bpf/endpoints").json() == [] and api.get("/v1/bpf/lb").json() == []
        assert api.get("/v1/bpf/policy/1").json() == {"endpoint_id": 1, "installed": False}
        assert_error(api.get("/v1/bpf/policy/4"), 404, CILIA_NOT_FOUND, "endpoint 4")


def test_flows_and_monitor_stream_ndjson() -> None:
    ring, raw = FlowRing(8), FlowRing(8)
    for verdict in ("FORWARDED", "DROPPED", "FORWARDED"):
        ring.add({"verdict": verdict, "time": "t"})
    raw.add({"type": "trace"})
    for api in client(flows.make_router(ring, "n1", raw)):
        dropped = api.get("/v1/flows", params={"last": 5, "verdict": "dropped"})
        lines = [json.loads(line) for line in dropped.iter_lines() if line]
        assert lines == [{"flow": {"verdict": "DROPPED", "time": "t"}, "node_name": "n1", "time": "t"}]
        assert len([line for line in api.get("/v1/flows", params={"last": 2}).iter_lines() if line]) == 2
        monitor = api.get("/v1/monitor", params={"last": 5, "follow": False})
        assert [json.loads(line) for line in monitor.iter_lines() if line] == [{"type": "trace"}]
        assert api.get("/v1/flows/status").json() == {"buffered": 3, "seen": 3, "events_lost": 0}


def test_flow_status() -> None:
    ring = FlowRing(8)
    for api in client(flows.make_router(ring, "n1")):
        assert api.get("/v1/flows/status").json() == {"buffered": 0, "seen": 0, "events_lost": 0}
        answer = api.get("/v1/flows", params={"colour": "red"})
        assert answer.status_code == 400 and "unknown flow filter 'colour'" in answer.json()["detail"]


# --- the whole API ---------------------------------------------------------------------------------

PATHS = {
    "/v1/healthz", "/v1/status", "/v1/config", "/v1/endpoints", "/v1/endpoints/{endpoint_id}",
    "/v1/endpoints/{endpoint_id}/config", "/v1/endpoints/by-container/{container_id}", "/v1/gc",
    "/v1/policy", "/v1/policy/trace", "/v1/policy/wait", "/v1/identities", "/v1/identities/{identity_id}",
    "/v1/resources/apply", "/v1/resources/delete", "/v1/resources", "/v1/services",
    "/v1/services/{namespace}/{name}", "/v1/services/{namespace}/{name}/maglev",
    "/v1/services/{namespace}/{name}/backends", "/v1/bpf/policy/{endpoint_id}", "/v1/bpf/lb", "/v1/bpf/ct",
    "/v1/bpf/ipcache", "/v1/bpf/endpoints", "/v1/bpf/metrics", "/v1/flows", "/v1/monitor", "/v1/flows/status",
}


def test_the_openapi_description_lists_every_path(tmp_path: Path) -> None:
    fake_endpoints, fake_policy = FakeEndpoints(), FakePolicy()
    routers = [
        status.make_router("n1", FakeStatus()), endpoints.make_router(fake_endpoints, fake_policy),
        config.make_router(FakeSettings()), policy.make_router(FakeCatalog(), FakeQueries(), FakeRevisions()),
        identities.make_router(FakeIdentities()),
        resources.make_router(LocalStore(tmp_path / "r.db", KindRegistry(CORE_KINDS))),
        services.make_router(FakeServices()), bpf.make_router(FakeMaps(), fake_endpoints, lambda _r: None),
        flows.make_router(FlowRing(4), "n1"),
    ]
    for api in client(*routers):
        spec = api.get("/openapi.json").json()
        assert spec["info"]["title"] == "cilia agent API" and set(spec["paths"]) == PATHS
        assert spec["paths"]["/v1/endpoints"]["get"]["responses"]["200"]["content"]["application/json"]["schema"] == {
            "type": "array", "items": {"$ref": "#/components/schemas/Endpoint"},
            "title": "Response List Endpoints V1 Endpoints Get"}
