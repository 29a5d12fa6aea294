"""Creates, restores, relabels and removes endpoints: IPAM -> link -> identity -> datapath, with rollback.

This is the only place that knows the order in which an endpoint's pieces are made. Each step
registers its undo on an ExitStack-like list, so a failed ADD leaves no address, link, map
entry or identity reference behind.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

from cilia.agent.errors import (
    CILIA_DATAPATH,
    CILIA_IPAM_EXHAUSTED,
    CILIA_NETLINK,
    CNI_INVALID_ENV,
    ApiError,
    invalid,
    not_found,
)
from cilia.api.models import Endpoint, EndpointCreateRequest, EndpointState
from cilia.endpoint.record import EndpointRecord
from cilia.endpoint.state import EndpointStateMachine
from cilia.endpoint.store import EndpointStore
from cilia.identity.allocator import IdentityAllocator
from cilia.identity.labels import LabelSet
from cilia.ipam import Ipam, IpamError, IpamExhausted
from cilia.resources.store import ResourceStore

log = logging.getLogger(__name__)


class EndpointDatapath(Protocol):
    """What the endpoint manager needs from the datapath (cilia.datapath.Datapath implements it)."""

    def attach(self, record: EndpointRecord) -> None: ...

    def detach(self, record: EndpointRecord) -> None: ...

    def is_attached(self, record: EndpointRecord) -> bool: ...


class EndpointPolicy(Protocol):
    """What the endpoint manager needs from policy (cilia.agent.policy_manager.PolicyManager)."""

    def regenerate(self, extra: EndpointRecord | None = None) -> None: ...

    def endpoint_removed(self, record: EndpointRecord) -> None: ...


class _NoPolicy:
    def regenerate(self, extra: EndpointRecord | None = None) -> None:
        pass

    def endpoint_removed(self, record: EndpointRecord) -> None:
        pass


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
    """Owns every endpoint of this node. Thread-safe: API handlers call it from a threadpool."""

    def __init__(
        self,
        *,
        store: EndpointStore,
        ipam: Ipam,
        identities: IdentityAllocator,
        resources: ResourceStore,
        links: EndpointLinks,
        datapath: EndpointDatapath,
        default_mtu: int = 1500,
    ) -> None:
        self._store = store
        self._ipam = ipam
        self._identities = identities
        self._resources = resources
        self._links = links
        self._datapath = datapath
        self._default_mtu = default_mtu
        self._lock = threading.RLock()
        self._endpoints: dict[int, EndpointRecord] = {}
        self._machines: dict[int, EndpointStateMachine] = {}
        self.restored = 0
        self._listeners: list[Callable[[], None]] = []
        self.policy: EndpointPolicy = _NoPolicy()

    @property
    def lock(self) -> threading.RLock:
        return self._lock

    # ----- queries -------------------------------------------------------------------------------
    def list_endpoints(self) -> list[Endpoint]:
        with self._lock:
            return [record.to_api() for record in sorted(self._endpoints.values(), key=lambda r: r.id)]

    def records(self) -> list[EndpointRecord]:
        with self._lock:
            return list(self._endpoints.values())

    def get(self, endpoint_id: int) -> Endpoint:
        with self._lock:
            record = self._endpoints.get(endpoint_id)
            if record is None:
                raise not_found(f"endpoint {endpoint_id}")
            return record.to_api()

    def find_by_container(self, container_id: str, ifname: str) -> EndpointRecord | None:
        with self._lock:
            for record in self._endpoints.values():
                if record.container_id == container_id and record.ifname == ifname:
                    return record
            return None

    def find_by_ip(self, ip: str) -> EndpointRecord | None:
        with self._lock:
            for record in self._endpoints.values():
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
                pod_labels = dict(pod.get("metadata", {}).get("labels") or {})
                service_account = pod.get("spec", {}).get("serviceAccountName") or "default"
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
                    return existing.to_api()  # a repeated ADD for the same attachment is answered, not redone
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
            state=EndpointState.CREATING,
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

        machine.transition(EndpointState.WAITING_FOR_IDENTITY, "link created")
        machine.transition(EndpointState.REGENERATING, f"identity {identity.id}")
        # Policy first: the programs fail closed until the endpoint has a policy state, and the
        # other endpoints learn the new identity before it sends its first packet.
        undo.append(lambda: self.policy.endpoint_removed(record))
        self.policy.regenerate(extra=record)
        try:
            self._datapath.attach(record)
        except Exception as exc:
            raise ApiError(
                500, CILIA_DATAPATH, f"endpoint {endpoint_id}: loading its BPF programs failed: {exc}"
            ) from exc
        undo.append(lambda: self._datapath.detach(record))

        machine.transition(EndpointState.READY, "datapath attached")
        record = replace(record, state=EndpointState.READY)
        self._store.save(record)
        self._endpoints[endpoint_id] = record
        self._machines[endpoint_id] = machine
        log.info(
            "endpoint %d ready: %s/%s %s %s identity %d",
            endpoint_id, record.pod_namespace, record.pod_name, record.ipv4, record.ipv6, record.identity,
        )
        self._notify()
        return record.to_api()

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
            record = self._endpoints.get(endpoint_id)
            if record is None:
                return False
            self._delete(record)
            return True

    def _delete(self, record: EndpointRecord) -> None:
        machine = self._machines.get(record.id)
        if machine is not None:
            machine.transition(EndpointState.DISCONNECTING, "delete requested")
        # Every step is attempted even if an earlier one fails: DEL must not leak.
        errors: list[str] = []
        for what, step in (
            ("datapath", lambda: self._datapath.detach(record)),
            ("policy", lambda: self.policy.endpoint_removed(record)),
            ("link", lambda: self._links.delete(record)),
            ("ipam", lambda: self._ipam.release(f"{record.container_id}/{record.ifname}")),
            ("identity", lambda: self._identities.release(LabelSet.parse_many(record.identity_labels))),
            ("state", lambda: self._store.remove(record.id)),
        ):
            try:
                step()
            except Exception as exc:
                log.exception("endpoint %d: removing its %s failed", record.id, what)
                errors.append(f"{what}: {exc}")
        self._endpoints.pop(record.id, None)
        self._machines.pop(record.id, None)
        self._notify()
        if errors:
            raise ApiError(500, CILIA_DATAPATH, f"endpoint {record.id} removed with errors", "; ".join(errors))

    def gc(self, valid: set[tuple[str, str]]) -> list[int]:
        """CNI GC: remove every endpoint whose (container id, ifname) is not in `valid`."""
        removed: list[int] = []
        with self._lock:
            for record in list(self._endpoints.values()):
                if (record.container_id, record.ifname) not in valid:
                    self._delete(record)
                    removed.append(record.id)
        return removed

    # ----- restore after restart -----------------------------------------------------------------
    def restore(self) -> None:
        """Adopt the endpoints a previous agent left: their links, maps and programs are still live.

        The datapath kept forwarding while we were down. We take the records from disk, check
        the link is still there, take our identity references again, and re-attach the
        programs with an atomic replace (no window without a program).
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
                    record = replace(record, identity=identity.id)
                machine = EndpointStateMachine(record.id)
                machine.transition(EndpointState.WAITING_FOR_IDENTITY, "restored")
                machine.transition(EndpointState.REGENERATING, "restored")
                try:
                    self._datapath.attach(record)
                except Exception:
                    log.exception("endpoint %d: re-attaching its programs failed; keeping the old ones", record.id)
                machine.transition(EndpointState.READY, "restored")
                record = replace(record, state=EndpointState.READY)
                self._store.save(record)
                self._endpoints[record.id] = record
                self._machines[record.id] = machine
                self.restored += 1
            self._notify()

    # ----- relabel -------------------------------------------------------------------------------
    def reevaluate_identities(self, pod_namespace: str | None = None, pod_name: str | None = None) -> int:
        """Recompute identity labels (pod or namespace labels changed); re-attach those that moved."""
        changed = 0
        with self._lock:
            for record in list(self._endpoints.values()):
                if pod_namespace is not None and record.pod_namespace != pod_namespace:
                    continue
                if pod_name is not None and record.pod_name != pod_name:
                    continue
                labels = self._identity_labels(record.pod_namespace, record.pod_name, record.extra_labels)
                new_labels = [str(label) for label in labels]
                if new_labels == record.identity_labels:
                    continue
                machine = self._machines[record.id]
                machine.transition(EndpointState.REGENERATING, "labels changed")
                identity = self._identities.allocate(labels)
                old_labels = LabelSet.parse_many(record.identity_labels)
                updated = replace(record, identity=identity.id, identity_labels=new_labels)
                self.policy.regenerate(extra=updated)  # peers learn the new identity before it is used
                try:
                    self._datapath.attach(updated)
                except Exception:
                    log.exception("endpoint %d: re-attach with identity %d failed", record.id, identity.id)
                    self._identities.release(labels)
                    self.policy.regenerate()
                    machine.transition(EndpointState.READY, "relabel failed; old identity kept")
                    continue
                self._identities.release(old_labels)
                machine.transition(EndpointState.READY, f"identity {identity.id}")
                self._store.save(updated)
                self._endpoints[record.id] = updated
                changed += 1
                log.info("endpoint %d: identity %d -> %d", record.id, record.identity, identity.id)
        if changed:
            self.policy.regenerate()  # the old identities are gone from everyone's maps
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
