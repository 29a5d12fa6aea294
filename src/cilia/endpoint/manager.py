"""Creates, restores, relabels and removes endpoints: IPAM -> link -> identity -> policy -> datapath.

This is the only place that knows the order in which an endpoint's pieces are made. Each step
registers its undo, so a failed ADD leaves no address, link, map entry or identity reference
behind. The endpoints and their states live in the registry (endpoint/registry.py); this
manager drives the lifecycle states and tells policy (through `PolicyHooks`, implemented by
cilia.policy.engine.PolicyEngine) what happened. Policy never calls back: it reads the registry.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from cilia.api.errors import (
    CILIA_DATAPATH,
    CILIA_IPAM_EXHAUSTED,
    CILIA_NETLINK,
    CNI_INVALID_ENV,
    ApiError,
    invalid,
    not_found,
)
from cilia.api.models import Endpoint, EndpointCreateRequest
from cilia.endpoint.record import EndpointRecord
from cilia.endpoint.registry import EndpointRegistry
from cilia.endpoint.state import EndpointState, EndpointStateMachine
from cilia.endpoint.store import EndpointStore
from cilia.identity.allocator import IdentityAllocator
from cilia.identity.labels import LabelSet
from cilia.ipam import Ipam, IpamError, IpamExhausted
from cilia.resources.pods import read_pod
from cilia.resources.store import ResourceStore

log = logging.getLogger(__name__)
S = EndpointState


class EndpointDatapath(Protocol):
    """What the endpoint manager needs from the datapath (cilia.agent.datapath_adapter implements it)."""

    def attach(self, record: EndpointRecord) -> None: ...

    def detach(self, record: EndpointRecord) -> None: ...

    def is_attached(self, record: EndpointRecord) -> bool: ...


class PolicyHooks(Protocol):
    """What the endpoint manager tells policy (cilia.policy.engine.PolicyEngine implements it)."""

    def endpoint_added(self, record: EndpointRecord) -> str: ...

    def endpoint_changed(self, record: EndpointRecord) -> str: ...

    def endpoint_removed(self, record: EndpointRecord) -> None: ...

    def identities_changed(self) -> int: ...


class NoPolicy:
    """For tests and tools that run endpoints without policy."""

    def endpoint_added(self, record: EndpointRecord) -> str:
        return ""

    def endpoint_changed(self, record: EndpointRecord) -> str:
        return ""

    def endpoint_removed(self, record: EndpointRecord) -> None:
        pass

    def identities_changed(self) -> int:
        return 0


class EndpointLinks(Protocol):
    """What the endpoint manager needs from netlink (cilia.agent.links.NetlinkLinks implements it)."""

    def create(self, record: EndpointRecord, mtu: int) -> EndpointRecord: ...

    def delete(self, record: EndpointRecord) -> None: ...

    def host_ifindex(self, host_ifname: str) -> int | None: ...


def host_ifname_for(container_id: str, ifname: str) -> str:
    """A stable, <=15 character host-side name: 'lxc' + 11 hex digits of a hash."""
    digest = hashlib.sha256(f"{container_id}/{ifname}".encode()).hexdigest()
    return "lxc" + digest[:11]


class EndpointManager:
    """Owns every endpoint's lifecycle on this node. Thread-safe: API handlers call it from a
    threadpool; ADD, DEL and relabel are serialised by its own lock (policy has its own)."""

    def __init__(
        self,
        *,
        registry: EndpointRegistry,
        store: EndpointStore,
        ipam: Ipam,
        identities: IdentityAllocator,
        resources: ResourceStore,
        links: EndpointLinks,
        datapath: EndpointDatapath,
        policy: PolicyHooks | None = None,
        default_mtu: int = 1500,
    ) -> None:
        self._registry = registry
        self._store = store
        self._ipam = ipam
        self._identities = identities
        self._resources = resources
        self._links = links
        self._datapath = datapath
        self._policy: PolicyHooks = policy if policy is not None else NoPolicy()
        self._default_mtu = default_mtu
        self._lock = threading.RLock()
        self.restored = 0
        self._listeners: list[Callable[[], None]] = []

    # ----- queries -------------------------------------------------------------------------------
    def list_endpoints(self) -> list[Endpoint]:
        return [Endpoint.of(record, state, reason) for record, state, reason in self._registry.snapshot()]

    def records(self) -> list[EndpointRecord]:
        return self._registry.records()

    def get(self, endpoint_id: int) -> Endpoint:
        record = self._registry.get(endpoint_id)
        state = self._registry.state(endpoint_id)
        if record is None or state is None:
            raise not_found(f"endpoint {endpoint_id}")
        return Endpoint.of(record, *state)

    def view(self, record: EndpointRecord) -> Endpoint:
        state, reason = self._registry.state(record.id) or (S.DISCONNECTED, "removed")
        return Endpoint.of(record, state, reason)

    def find_by_container(self, container_id: str, ifname: str) -> EndpointRecord | None:
        for record in self._registry.records():
            if record.container_id == container_id and record.ifname == ifname:
                return record
        return None

    def view_by_container(self, container_id: str, ifname: str) -> Endpoint | None:
        record = self.find_by_container(container_id, ifname)
        return self.view(record) if record is not None else None

    def find_by_ip(self, ip: str) -> EndpointRecord | None:
        for record in self._registry.records():
            if ip in (record.ipv4, record.ipv6):
                return record
        return None

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Called after any endpoint is added, changed or removed (flows refresh their lookups)."""
        self._listeners.append(listener)

    def _notify(self) -> None:
        for listener in self._listeners:
            listener()

    # ----- labels and identity -------------------------------------------------------------------
    def _identity_labels(self, pod_namespace: str, pod_name: str, extra: dict[str, str]) -> LabelSet:
        pod_labels: dict[str, str] = {}
        service_account = "default"
        if pod_name:
            pod = self._resources.get("Pod", pod_namespace, pod_name)
            if pod is not None:
                facts = read_pod(pod)
                pod_labels, service_account = dict(facts.labels), facts.service_account
        namespace = self._resources.get("Namespace", None, pod_namespace)
        namespace_labels: dict[str, str] = {}
        if namespace is not None:
            namespace_labels = dict(namespace.get("metadata", {}).get("labels") or {})
        pod_labels.update(extra)
        return LabelSet.from_k8s(pod_labels, pod_namespace, namespace_labels, service_account)

    # ----- ADD -----------------------------------------------------------------------------------
    def create(self, request: EndpointCreateRequest) -> Endpoint:
        with self._lock:
            existing = self.find_by_container(request.container_id, request.ifname)
            if existing is not None:
                if existing.netns == request.netns:
                    return self.view(existing)  # a repeated ADD for the same attachment is answered, not redone
                raise invalid(
                    f"endpoint for container {request.container_id!r} interface {request.ifname!r} "
                    f"already exists in netns {existing.netns!r}",
                    "delete it first (CNI DEL) or use another interface name",
                )
            requested_v4, requested_v6 = _requested_ips(request)
            undo: list[Callable[[], object]] = []
            try:
                return self._create(request, requested_v4, requested_v6, undo)
            except BaseException:
                for step in reversed(undo):
                    try:
                        step()
                    except Exception:  # rollback must run every step; the first error is what we report
                        log.exception("rollback step failed for container %s", request.container_id)
                raise

    def _create(
        self,
        request: EndpointCreateRequest,
        requested_v4: ipaddress.IPv4Address | None,
        requested_v6: ipaddress.IPv6Address | None,
        undo: list[Callable[[], object]],
    ) -> Endpoint:
        labels = self._identity_labels(request.pod_namespace, request.pod_name, request.labels)
        endpoint_id = self._store.allocate_id()
        undo.append(lambda: self._store.remove(endpoint_id))
        owner = f"{request.container_id}/{request.ifname}"
        try:
            allocation = self._ipam.allocate(owner, ipv4=requested_v4, ipv6=requested_v6)
        except IpamExhausted as exc:
            raise ApiError(503, CILIA_IPAM_EXHAUSTED, str(exc)) from exc
        except IpamError as exc:
            raise ApiError(400, CNI_INVALID_ENV, str(exc)) from exc
        undo.append(lambda: self._ipam.release(owner))

        identity = self._identities.allocate(labels)
        undo.append(self._policy.identities_changed)  # runs after the release below: peers forget it
        undo.append(lambda: self._identities.release(labels))

        record = EndpointRecord(
            id=endpoint_id,
            container_id=request.container_id,
            ifname=request.ifname,
            netns=request.netns,
            host_ifname=host_ifname_for(request.container_id, request.ifname),
            host_ifindex=0,
            mac=request.requested_mac or "",
            host_mac="",
            ipv4=str(allocation.ipv4) if allocation.ipv4 else None,
            ipv6=str(allocation.ipv6) if allocation.ipv6 else None,
            gateway_ipv4=str(self._ipam.router_ipv4) if allocation.ipv4 else None,
            gateway_ipv6=str(self._ipam.router_ipv6) if allocation.ipv6 else None,
            pod_namespace=request.pod_namespace,
            pod_name=request.pod_name,
            pod_uid=request.pod_uid,
            infra_container_id=request.infra_container_id,
            extra_labels=dict(request.labels),
            identity=identity.id,
            identity_labels=[str(label) for label in labels],
            created_at=time.time(),
        )
        machine = EndpointStateMachine(endpoint_id)
        try:
            record = self._links.create(record, request.mtu or self._default_mtu)
        except ApiError:
            raise
        except Exception as exc:
            raise ApiError(500, CILIA_NETLINK, f"endpoint {endpoint_id}: creating its link failed: {exc}") from exc
        undo.append(lambda: self._links.delete(record))

        machine.transition(S.WAITING_FOR_IDENTITY, "link created")
        machine.transition(S.REGENERATING, f"identity {identity.id}")
        self._registry.add(record, machine, held=True)
        undo.append(lambda: self._registry.discard(endpoint_id))
        # Policy first: the programs fail closed until the endpoint has a policy state, and the
        # other endpoints learn the new identity before it sends its first packet.
        undo.append(lambda: self._policy.endpoint_removed(record))
        self._policy.endpoint_added(record)
        try:
            self._datapath.attach(record)
        except Exception as exc:
            raise ApiError(
                500, CILIA_DATAPATH, f"endpoint {endpoint_id}: loading its BPF programs failed: {exc}"
            ) from exc
        undo.append(lambda: self._datapath.detach(record))

        self._store.save(record)
        state = self._registry.release(endpoint_id, "datapath attached")
        log.info(
            "endpoint %d %s: %s/%s %s %s identity %d", endpoint_id, state.value if state else "?",
            record.pod_namespace, record.pod_name, record.ipv4, record.ipv6, record.identity,
        )
        self._notify()
        return self.view(record)

    # ----- DEL -----------------------------------------------------------------------------------
    def delete_by_container(self, container_id: str, ifname: str) -> bool:
        with self._lock:
            record = self.find_by_container(container_id, ifname)
            if record is None:
                # The IPAM owner may still exist from a crashed ADD: release it so DEL cleans up.
                self._ipam.release(f"{container_id}/{ifname}")
                return False
            self._delete(record)
            return True

    def delete(self, endpoint_id: int) -> bool:
        with self._lock:
            record = self._registry.get(endpoint_id)
            if record is None:
                return False
            self._delete(record)
            return True

    def _delete(self, record: EndpointRecord) -> None:
        # disconnecting first: from here on regeneration leaves the endpoint alone
        self._registry.transition(record.id, S.DISCONNECTING, "delete requested")
        # Every step is attempted even if an earlier one fails: DEL must not leak.
        errors: list[str] = []
        for what, step in (
            ("datapath", lambda: self._datapath.detach(record)),
            ("policy", lambda: self._policy.endpoint_removed(record)),
            ("link", lambda: self._links.delete(record)),
            ("ipam", lambda: self._ipam.release(f"{record.container_id}/{record.ifname}")),
            ("identity", lambda: self._identities.release(LabelSet.parse_many(record.identity_labels))),
            ("state", lambda: self._store.remove(record.id)),
            ("peers", self._policy.identities_changed),
        ):
            try:
                step()
            except Exception as exc:
                log.exception("endpoint %d: removing its %s failed", record.id, what)
                errors.append(f"{what}: {exc}")
        self._registry.remove(record.id, "removed with errors" if errors else "removed")
        self._notify()
        if errors:
            raise ApiError(500, CILIA_DATAPATH, f"endpoint {record.id} removed with errors", "; ".join(errors))

    def gc(self, valid: set[tuple[str, str]]) -> list[int]:
        """CNI GC: remove every endpoint whose (container id, ifname) is not in `valid`."""
        removed: list[int] = []
        with self._lock:
            for record in self._registry.records():
                if (record.container_id, record.ifname) not in valid:
                    self._delete(record)
                    removed.append(record.id)
        return removed

    # ----- restore after restart -----------------------------------------------------------------
    def restore(self) -> None:
        """Adopt the endpoints a previous agent left: their links, maps and programs are still live.

        The datapath kept forwarding while we were down. We take the records from disk, check
        the link is still there, take our identity references again, and re-attach the
        programs with an atomic replace (no window without a program). They stay `regenerating`
        until the start-up regeneration has compared their policy with what is live.
        """
        with self._lock:
            for record in self._store.load_all():
                ifindex = self._links.host_ifindex(record.host_ifname)
                if ifindex is None or ifindex != record.host_ifindex:
                    log.warning(
                        "endpoint %d: link %s is gone; cleaning up its state", record.id, record.host_ifname
                    )
                    for step in (
                        lambda r=record: self._datapath.detach(r),
                        lambda r=record: self._ipam.release(f"{r.container_id}/{r.ifname}"),
                        lambda r=record: self._store.remove(r.id),
                    ):
                        try:
                            step()
                        except Exception:
                            log.exception("endpoint %d: cleanup after restore failed", record.id)
                    continue
                labels = LabelSet.parse_many(record.identity_labels)
                identity = self._identities.allocate(labels)
                if identity.id != record.identity:
                    record = record.model_copy(update={"identity": identity.id})
                machine = EndpointStateMachine(record.id)
                machine.transition(S.WAITING_FOR_IDENTITY, "restored")
                machine.transition(S.REGENERATING, "restored: policy to be compared with the live one")
                try:
                    self._datapath.attach(record)
                except Exception:
                    log.exception("endpoint %d: re-attaching its programs failed; keeping the old ones", record.id)
                self._store.save(record)
                self._registry.add(record, machine, held=False)
                self.restored += 1
            self._notify()

    # ----- relabel -------------------------------------------------------------------------------
    def reevaluate_identities(self, pod_namespace: str | None = None, pod_name: str | None = None) -> int:
        """Recompute identity labels (pod or namespace labels changed); re-attach those that moved."""
        changed = 0
        with self._lock:
            for record in self._registry.records():
                if pod_namespace is not None and record.pod_namespace != pod_namespace:
                    continue
                if pod_name is not None and record.pod_name != pod_name:
                    continue
                labels = self._identity_labels(record.pod_namespace, record.pod_name, record.extra_labels)
                new_labels = [str(label) for label in labels]
                if new_labels == record.identity_labels:
                    continue
                self._registry.hold(record.id, "labels changed")
                identity = self._identities.allocate(labels)
                old_labels = LabelSet.parse_many(record.identity_labels)
                updated = record.model_copy(update={"identity": identity.id, "identity_labels": new_labels})
                self._registry.replace(updated)
                self._policy.endpoint_changed(updated)  # peers learn the new identity before it is used
                try:
                    self._datapath.attach(updated)
                except Exception:
                    log.exception("endpoint %d: re-attach with identity %d failed", record.id, identity.id)
                    self._identities.release(labels)
                    self._registry.replace(record)
                    self._policy.endpoint_changed(record)
                    self._registry.release(record.id, "relabel failed; old identity kept")
                    continue
                self._identities.release(old_labels)
                self._store.save(updated)
                self._registry.release(record.id, f"identity {identity.id}")
                changed += 1
                log.info("endpoint %d: identity %d -> %d", record.id, record.identity, identity.id)
            if changed:
                self._policy.identities_changed()  # the old identities are gone from everyone's maps
                self._notify()
        return changed


def _requested_ips(
    request: EndpointCreateRequest,
) -> tuple[ipaddress.IPv4Address | None, ipaddress.IPv6Address | None]:
    v4: ipaddress.IPv4Address | None = None
    v6: ipaddress.IPv6Address | None = None
    for field, value in (("requested_ipv4", request.requested_ipv4), ("requested_ipv6", request.requested_ipv6)):
        if not value:
            continue
        try:
            address = ipaddress.ip_address(value.split("/")[0])
        except ValueError as exc:
            raise invalid(f"endpoint request field {field!r}: {value!r} is not an IP address") from exc
        if isinstance(address, ipaddress.IPv4Address):
            v4 = address
        else:
            v6 = address
    return v4, v6
