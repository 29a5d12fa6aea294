"""Keeps every endpoint's installed policy equal to what the rules say, and answers about it.

Inputs: policy objects from the resource store, pods (labels, named ports), identities (pods,
reserved, and CIDR identities made here for the prefixes rules name) and the agent's settings.
Output: per endpoint, a MapState installed in the datapath atomically; CIDR prefixes in the
ipcache. Everything is recomputed from scratch on a change and diffed against what is live, so a
restarted agent that computes the same state changes nothing in the kernel.

Order matters where a packet could slip through or be dropped by accident: policies are
installed before the ipcache gains a CIDR identity they mention, and a released CIDR identity
leaves the ipcache before the policies that mentioned it are replaced.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cilia.api.models import AgentConfigPatch, AgentConfigView, EndpointPolicyStatus
from cilia.endpoint.record import EndpointRecord
from cilia.identity.allocator import LocalIdentityAllocator
from cilia.identity.cidr import CidrIdentities, Network, cidr_labels
from cilia.identity.labels import LabelSet
from cilia.jsonfile import read_json, write_json
from cilia.policy.errors import PolicyMapOverflow
from cilia.policy.kinds import POLICY_KINDS, is_policy, parse_policy, policy_ref
from cilia.policy.mapstate import MapState, PeerIndex, compute_map_state
from cilia.policy.repository import PolicyRepository
from cilia.policy.resolve import EndpointPolicy, Enforcement, resolve_endpoint
from cilia.policy.rules import PROTOCOL_NUMBERS, CidrPeer, Direction, IdentityView, PolicyRef, Rule
from cilia.policy.selector import labels_of
from cilia.policy.trace import TraceResult, trace
from cilia.resources.store import ResourceStore

log = logging.getLogger(__name__)


class PolicyDatapath(Protocol):
    """What policy needs from the datapath (cilia.agent.datapath_adapter implements it)."""

    def install_policy(self, endpoint_id: int, state: MapState) -> bool: ...

    def fail_policy(self, endpoint_id: int) -> None: ...

    def remove_policy(self, endpoint_id: int) -> None: ...

    def policy_endpoints(self) -> set[int]: ...

    def add_cidr_prefixes(self, prefixes: dict[Network, int]) -> None: ...

    def remove_cidr_prefixes(self, prefixes: Iterable[Network]) -> None: ...


class EndpointSource(Protocol):
    def records(self) -> list[EndpointRecord]: ...


@dataclass
class Settings:
    enforcement: Enforcement = Enforcement.DEFAULT
    audit: bool = False
    allow_localhost: str = "auto"
    endpoint_audit: dict[int, bool] = field(default_factory=dict)


@dataclass(frozen=True)
class EndpointResult:
    policy: EndpointPolicy
    entries: int
    error: str = ""


def _named_ports(pod: dict[str, Any] | None) -> dict[str, set[tuple[int, int]]]:
    ports: dict[str, set[tuple[int, int]]] = {}
    for container in ((pod or {}).get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name"):
                protocol = PROTOCOL_NUMBERS.get(str(port.get("protocol", "TCP")).upper(), 6)
                ports.setdefault(port["name"], set()).add((protocol, int(port["containerPort"])))
    return ports


class PolicyManager:
    def __init__(
        self,
        *,
        resources: ResourceStore,
        identities: LocalIdentityAllocator,
        datapath: PolicyDatapath,
        endpoints: EndpointSource,
        state_dir: Path,
        lock: threading.RLock,
        settings: Settings,
        max_entries: int,
    ) -> None:
        self.repository = PolicyRepository(state_dir / "policy-rule-ids.json")
        self.cidrs = CidrIdentities(state_dir / "cidr-identities.json")
        self._resources = resources
        self._identities = identities
        self._datapath = datapath
        self._endpoints = endpoints
        self._settings_file = state_dir / "policy-settings.json"
        self._lock = lock  # the endpoint manager's: one order of locking for both
        self._max_entries = max_entries
        self._results: dict[int, EndpointResult] = {}
        saved = read_json(self._settings_file, None)
        self.settings = settings
        if saved is not None:  # runtime changes (PATCH /v1/config) survive restarts
            self.settings = Settings(Enforcement(saved["enforcement"]), bool(saved["audit"]),
                                     saved["allow_localhost"], {int(k): v for k, v in saved["endpoint_audit"].items()})

    # ----- inputs --------------------------------------------------------------------------------
    def load(self) -> None:
        """Take the policies persisted in the store (they were validated when applied)."""
        for kind in sorted(POLICY_KINDS):
            for obj in self._resources.list(kind):
                try:
                    self.repository.replace(policy_ref(obj), parse_policy(obj))
                except Exception:
                    log.exception("stored policy %s/%s no longer parses; skipped", kind, obj["metadata"]["name"])
        self.repository.forget_absent()

    def on_resource_event(self, event: str, obj: dict[str, Any], _old: dict[str, Any] | None) -> None:
        if is_policy(obj):
            ref = policy_ref(obj)
            if event == "DELETED":
                self.repository.remove(ref)
            else:
                self.repository.replace(ref, parse_policy(obj))
            self.regenerate()
        elif obj.get("kind") == "Pod":
            self.regenerate()  # named ports may have changed; label changes come via the endpoints

    # ----- regeneration --------------------------------------------------------------------------
    def regenerate(self, extra: EndpointRecord | None = None) -> None:
        """Recompute and install every endpoint's policy (plus `extra`, an endpoint being created)."""
        with self._lock:
            records = {r.id: r for r in self._endpoints.records()}
            if extra is not None:
                records[extra.id] = extra
            rules = self.repository.rules()
            prefixes = {p for r in rules for d in Direction for e in r.entries(d) for peer in e.peers
                        if isinstance(peer, CidrPeer) for p in (peer.network, *peer.excepts)}
            current, released = self.cidrs.sync(prefixes)
            if released:
                self._datapath.remove_cidr_prefixes(released)
            index = PeerIndex(self._universe(current))
            cluster_ports = self._cluster_named_ports()
            for record in records.values():
                self._install(record, rules, index, cluster_ports)
            for endpoint_id in self._datapath.policy_endpoints() - records.keys():
                self._datapath.remove_policy(endpoint_id)
                self._results.pop(endpoint_id, None)
            self._datapath.add_cidr_prefixes(current)

    def endpoint_removed(self, record: EndpointRecord) -> None:
        with self._lock:
            self._datapath.remove_policy(record.id)
            self._results.pop(record.id, None)
            if self.settings.endpoint_audit.pop(record.id, None) is not None:
                self._save_settings()

    def _universe(self, cidrs: dict[Network, int]) -> list[IdentityView]:
        views = [IdentityView(i.id, i.labels) for i in self._identities.all()]
        return views + [IdentityView(n, cidr_labels(p), p) for p, n in cidrs.items()]

    def _cluster_named_ports(self) -> dict[str, set[tuple[int, int]]]:
        ports: dict[str, set[tuple[int, int]]] = {}
        for pod in self._resources.list("Pod"):
            for name, values in _named_ports(pod).items():
                ports.setdefault(name, set()).update(values)
        return ports

    def resolve(self, labels: LabelSet, endpoint_id: int | None = None, pod: dict[str, Any] | None = None,
                rules: list[Rule] | None = None) -> EndpointPolicy:
        settings = self.settings
        audit = settings.endpoint_audit.get(endpoint_id, settings.audit) if endpoint_id is not None \
            else settings.audit
        return resolve_endpoint(
            self.repository.rules() if rules is None else rules, labels,
            enforcement=settings.enforcement,
            own_named_ports=_named_ports(pod),
            cluster_named_ports=self._cluster_named_ports(),
            audit=audit,
            allow_host_ingress=settings.allow_localhost in ("auto", "always"),
        )

    def _install(self, record: EndpointRecord, rules: list[Rule], index: PeerIndex,
                 cluster_ports: dict[str, set[tuple[int, int]]]) -> None:
        pod = self._resources.get("Pod", record.pod_namespace, record.pod_name) if record.pod_name else None
        policy = self.resolve(LabelSet.parse_many(record.identity_labels), record.id, pod, rules)
        try:
            state = compute_map_state(policy, index, max_entries=self._max_entries)
            self._datapath.install_policy(record.id, state)
        except PolicyMapOverflow as exc:
            self._datapath.fail_policy(record.id)
            self._results[record.id] = EndpointResult(policy, 0, f"failed closed: {exc}")
            log.error("endpoint %d: %s; its traffic is dropped until the policy fits", record.id, exc)
            return
        except Exception as exc:  # a map write failed: install_policy marked the endpoint failed
            self._results[record.id] = EndpointResult(policy, 0, f"failed closed: installing policy: {exc}")
            log.exception("endpoint %d: installing its policy failed; its traffic is dropped", record.id)
            return
        self._results[record.id] = EndpointResult(policy, state.size())

    # ----- settings ------------------------------------------------------------------------------
    def config(self) -> AgentConfigView:
        s = self.settings
        return AgentConfigView(policy_enforcement=s.enforcement.value, policy_audit_mode=s.audit,
                               allow_localhost=s.allow_localhost)

    def patch_config(self, patch: AgentConfigPatch) -> AgentConfigView:
        with self._lock:
            if patch.policy_enforcement is not None:
                self.settings.enforcement = Enforcement(patch.policy_enforcement)
            if patch.policy_audit_mode is not None:
                self.settings.audit = patch.policy_audit_mode
            if patch.allow_localhost is not None:
                self.settings.allow_localhost = patch.allow_localhost
            self._save_settings()
            self.regenerate()
            return self.config()

    def set_endpoint_audit(self, endpoint_id: int, audit: bool | None) -> None:
        with self._lock:
            if audit is None:
                self.settings.endpoint_audit.pop(endpoint_id, None)
            else:
                self.settings.endpoint_audit[endpoint_id] = audit
            self._save_settings()
            self.regenerate()

    def _save_settings(self) -> None:
        s = self.settings
        write_json(self._settings_file, {"enforcement": s.enforcement.value, "audit": s.audit,
                                         "allow_localhost": s.allow_localhost,
                                         "endpoint_audit": {str(k): v for k, v in s.endpoint_audit.items()}})

    # ----- views ---------------------------------------------------------------------------------
    def status(self, endpoint_id: int) -> EndpointPolicyStatus | None:
        result = self._results.get(endpoint_id)
        if result is None:
            return None
        policy = result.policy

        def mode(direction: Direction) -> str:
            if result.error:
                return "failed"
            if not policy.direction(direction).enforced:
                return "disabled"
            return "audit" if policy.audit else "enabled"

        selected = {str(ref) for d in Direction for ref in policy.direction(d).selected_by}
        return EndpointPolicyStatus(ingress=mode(Direction.INGRESS), egress=mode(Direction.EGRESS),
                                    audit=policy.audit, map_entries=result.entries, selected_by=sorted(selected),
                                    error=result.error)

    def selecting(self, ref: PolicyRef) -> list[int]:
        return sorted(endpoint_id for endpoint_id, result in self._results.items()
                      if any(ref in result.policy.direction(d).selected_by for d in Direction)
                      or any(e.rule_id and (info := self.repository.info(e.rule_id)) is not None and info.ref == ref
                             for d in Direction for e in result.policy.direction(d).entries))

    def describe_rule(self, rule_id: int) -> dict[str, Any] | None:
        info = self.repository.info(rule_id)
        if info is None:
            return None
        return {"kind": info.ref.kind, "namespace": info.ref.namespace, "name": info.ref.name,
                "rule": info.field, "id": rule_id}

    # ----- trace ---------------------------------------------------------------------------------
    def trace(self, src: tuple[str | None, list[str], str | None], dst: tuple[str | None, list[str], str | None],
              protocol: str, port: int) -> TraceResult:
        with self._lock:
            src_view, src_policy = self._trace_side(*src, "source")
            dst_view, dst_policy = self._trace_side(*dst, "destination")
            return trace(self.repository, src_view, dst_view, PROTOCOL_NUMBERS[protocol.upper()], port,
                         src_policy, dst_policy)

    def _trace_side(self, pod: str | None, labels: list[str], ip: str | None,
                    what: str) -> tuple[IdentityView, EndpointPolicy | None]:
        if pod:
            namespace, _, name = pod.rpartition("/")
            namespace = namespace or "default"
            for record in self._endpoints.records():
                if record.pod_namespace == namespace and record.pod_name == name:
                    label_set = LabelSet.parse_many(record.identity_labels)
                    pod_obj = self._resources.get("Pod", namespace, name)
                    return IdentityView(record.identity, label_set), self.resolve(label_set, record.id, pod_obj)
            raise LookupError(f"{what}: no local endpoint for pod {namespace}/{name}")
        if labels:
            label_set = labels_of(labels)
            found = next((i.id for i in self._identities.all() if i.labels == label_set), 0xFFFF)
            return IdentityView(found, label_set), self.resolve(label_set)
        if ip:
            address = ipaddress.ip_address(ip)
            for record in self._endpoints.records():
                if ip in (record.ipv4, record.ipv6):
                    return self._trace_side(f"{record.pod_namespace}/{record.pod_name}", [], None, what)
            matches = [(p, n) for p, n in self.cidrs.current().items() if address in p]
            if matches:
                prefix, number = max(matches, key=lambda pn: pn[0].prefixlen)
                return IdentityView(number, cidr_labels(prefix), prefix), None
            return IdentityView(2, labels_of(["reserved:world"])), None
        raise LookupError(f"{what}: give a pod, labels or an IP")
