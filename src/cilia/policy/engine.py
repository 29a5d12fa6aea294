"""The policy engine: keeps every endpoint's installed policy equal to what the rules say.

Inputs: policy objects from the resource store, pods (named ports), identities (pods, reserved,
and CIDR identities made here for the prefixes rules name), the endpoints (read through
`EndpointSource`), the agent's settings and, for the address-based peers (NetworkPolicy ipBlock
selecting pods, toServices; cilia.policy.addresses), the pod IPs of this node and of the cluster
(`cluster_endpoints_changed`) and the Service / EndpointSlice objects. Output: per endpoint, a
MapState installed through `PolicyDatapath`; CIDR prefixes in the ipcache. No kernel import here: the agent's adapter
implements the Protocols.

A change (a policy applied or deleted, settings, a pod's named ports, identities coming or going)
is handled in the caller's thread only as far as it is cheap: the inputs are snapshotted once
(rules, the identity universe, named ports, settings) and the endpoints the change can affect
are computed - those the old or the new version of a policy selects, plus those with a rule
whose peers match an identity that came or went. They go into the regeneration queue
(policy/regeneration.py) with the change's revision; its workers resolve, compress and install.
When a change's reach cannot be bounded cheaply (settings), every endpoint is queued. With
`mode="sync"` every change regenerates every endpoint in the caller's thread (the behaviour
before the queue; kept so the benchmark can compare).

Every installed state is diffed against what is live, so a restarted agent that computes the
same state writes nothing. Order matters where a packet could slip through or be dropped by
accident: a new CIDR identity enters the ipcache only once every endpoint reflects the revision
that introduced it, and a released one leaves the ipcache before the policies that mentioned it
are replaced.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

from cilia import ipproto
from cilia.endpoint.record import EndpointRecord
from cilia.identity.allocator import IdentityAllocator
from cilia.identity.cidr import CidrIdentities, Network, cidr_labels
from cilia.identity.fqdn import FqdnIdentities, fqdn_labels
from cilia.identity.labels import LabelSet
from cilia.identity.reserved import MAX_CLUSTER_IDENTITY, ReservedIdentity
from cilia.jsonfile import read_json, write_json
from cilia.policy.addresses import IPAddress, address_peers, select
from cilia.policy.errors import PolicyMapOverflow
from cilia.policy.kinds import POLICY_KINDS, is_policy, parse_policy, policy_ref
from cilia.policy.mapstate import MapState, PeerIndex, compute_map_state
from cilia.policy.regeneration import RegenerationQueue, WaitResult
from cilia.policy.repository import PolicyRepository
from cilia.policy.resolve import EndpointPolicy, Enforcement, resolve_endpoint
from cilia.policy.rules import CidrPeer, Direction, FqdnPeer, IdentityView, PolicyRef, Rule, ServicePeer
from cilia.policy.selector import labels_of
from cilia.policy.services import service_facts
from cilia.policy.trace import TraceResult, trace
from cilia.resources.pods import read_pod
from cilia.resources.store import ResourceStore

log = logging.getLogger(__name__)
NamedPorts = dict[str, set[tuple[int, int]]]
PodKey = tuple[str, str]
# An ADD waits this long for the endpoints that must learn its new identity (its own policy it
# always waits for: it fails closed without one).
PEER_WAIT_SECONDS = 10.0
# A trace by labels no endpoint has: a pod identity number no pod is given.
UNALLOCATED_POD_IDENTITY = MAX_CLUSTER_IDENTITY


class PolicyDatapath(Protocol):
    """What policy needs from the datapath (cilia.agent.datapath_adapter implements it)."""

    def install_policy(self, endpoint_id: int, state: MapState) -> bool: ...

    def fail_policy(self, endpoint_id: int) -> None: ...

    def remove_policy(self, endpoint_id: int) -> None: ...

    def policy_endpoints(self) -> set[int]: ...

    def add_cidr_prefixes(self, prefixes: dict[Network, int]) -> None: ...

    def remove_cidr_prefixes(self, prefixes: Iterable[Network]) -> None: ...


class EndpointSource(Protocol):
    """The endpoints, and where regeneration reports to (cilia.endpoint.registry.EndpointRegistry)."""

    def records(self) -> list[EndpointRecord]: ...

    def get(self, endpoint_id: int) -> EndpointRecord | None: ...

    def regeneration_queued(self, endpoint_ids: Iterable[int]) -> None: ...

    def regeneration_done(self, endpoint_id: int, error: str) -> None: ...


@dataclass
class Settings:
    enforcement: Enforcement = Enforcement.DEFAULT
    audit: bool = False
    allow_localhost: str = "auto"
    endpoint_audit: dict[int, bool] = field(default_factory=dict)

    def copy(self) -> Settings:
        return replace(self, endpoint_audit=dict(self.endpoint_audit))


@dataclass(frozen=True)
class EndpointResult:
    policy: EndpointPolicy
    entries: int
    error: str = ""


@dataclass(frozen=True)
class PolicyStatus:
    """An endpoint's policy as the API shows it: enforcement per direction ("enabled", "disabled",
    "audit", "failed"), entries installed, the policies selecting it, and why it failed."""

    ingress: str
    egress: str
    audit: bool
    map_entries: int
    selected_by: list[str]
    error: str = ""


@dataclass(frozen=True)
class PolicyInputs:
    """Everything a regeneration reads, as of one revision. Never changed once published."""

    rules: tuple[Rule, ...] = ()
    views: Mapping[int, IdentityView] = field(default_factory=dict)  # the identity universe
    index: PeerIndex = field(default_factory=lambda: PeerIndex([]))
    cidrs: Mapping[Network, int] = field(default_factory=dict)
    pod_ports: Mapping[PodKey, NamedPorts] = field(default_factory=dict)
    cluster_ports: NamedPorts = field(default_factory=dict)
    settings: Settings = field(default_factory=Settings)


def named_ports(pod: dict[str, Any] | None) -> NamedPorts:
    ports: NamedPorts = {}
    for port in read_pod(pod).named_ports() if pod else ():
        ports.setdefault(port.name, set()).add((port.protocol, port.port))
    return ports


@lru_cache(maxsize=16384)
def _label_set(labels: tuple[str, ...]) -> LabelSet:
    return LabelSet.parse_many(list(labels))


def labels_of_record(record: EndpointRecord) -> LabelSet:
    return _label_set(tuple(record.identity_labels))


def _peers_match(rule: Rule, index: PeerIndex, identities: set[int]) -> bool:
    """Does a non-wildcard entry of `rule` match one of `identities`? (Identities only wildcard
    entries match fall into class 0 and need no entry of their own.) Asked through the revision's
    index, whose answers the map-state computation then reuses: a rule with 10,000 CIDR peers
    against 10,000 new CIDR identities is 10,000 lookups, not 10^8 prefix comparisons."""
    return bool(identities) and any(
        not index.matches(peer).isdisjoint(identities) for direction in Direction
        for entry in rule.entries(direction) if not entry.matches_unknown for peer in entry.peers)


def _uses_named_ports(rule: Rule) -> bool:
    return any(entry.named_ports for direction in Direction for entry in rule.entries(direction))


class PolicyEngine:
    def __init__(
        self,
        *,
        resources: ResourceStore,
        identities: IdentityAllocator,
        datapath: PolicyDatapath,
        endpoints: EndpointSource,
        state_dir: Path,
        settings: Settings,
        max_entries: int,
        workers: int = 2,
        mode: str = "queue",
    ) -> None:
        if mode not in ("queue", "sync"):
            raise ValueError(f"policy regeneration mode {mode!r} is not 'queue' or 'sync'")
        self.repository = PolicyRepository(state_dir / "policy-rule-ids.json")
        self.cidrs = CidrIdentities(state_dir / "cidr-identities.json")
        # also read by the DNS proxy (cilia.proxy.dns): the toFQDNs selectors and their identities
        self.fqdns = FqdnIdentities(fqdn_identities_file(state_dir))
        self.mode = mode
        self._resources = resources
        self._identities = identities
        self._datapath = datapath
        self._endpoints = endpoints
        self._settings_file = state_dir / "policy-settings.json"
        self._max_entries = max_entries
        self._lock = threading.RLock()  # one change at a time; never held while waiting on the queue
        self._results: dict[int, EndpointResult] = {}
        self._pod_ports: dict[PodKey, NamedPorts] = {}
        # other nodes' pod IPs (the cluster ipcache) and pod CIDRs, for the address-based peers
        self._remote_addresses: dict[IPAddress, int] = {}
        self._remote_pod_cidrs: tuple[Network, ...] = ()
        self._gone: set[int] = set()  # endpoints being removed: their IPs no longer count
        self._inputs = PolicyInputs()
        self.queue: RegenerationQueue[PolicyInputs] = RegenerationQueue(
            self._regenerate, self._inputs, workers=0 if mode == "sync" else max(1, workers),
            on_queued=endpoints.regeneration_queued, on_done=endpoints.regeneration_done)
        saved = read_json(self._settings_file, None)
        self.settings = settings
        if saved is not None:  # runtime changes (PATCH /v1/config) survive restarts
            self.settings = Settings(Enforcement(saved["enforcement"]), bool(saved["audit"]),
                                     saved["allow_localhost"], {int(k): v for k, v in saved["endpoint_audit"].items()})

    @property
    def revision(self) -> int:
        return self.queue.revision

    # ----- start-up ------------------------------------------------------------------------------
    def load(self) -> None:
        """Take the policies persisted in the store (they were validated when applied) and the pods' ports."""
        for kind in sorted(POLICY_KINDS):
            for obj in self._resources.list(kind):
                try:
                    self.repository.replace(policy_ref(obj), parse_policy(obj))
                except Exception:
                    log.exception("stored policy %s/%s no longer parses; skipped", kind, obj["metadata"]["name"])
        self.repository.forget_absent()
        for pod in self._resources.list("Pod"):
            metadata = pod.get("metadata", {})
            self._pod_ports[(metadata.get("namespace", "default"), metadata.get("name", ""))] = named_ports(pod)

    def start(self, timeout: float = 600.0) -> WaitResult:
        """Start the workers and bring every endpoint's policy up to date (blocking: before the API
        serves). An endpoint whose computed state equals what is live is not written to."""
        self.queue.start()
        with self._lock:
            revision = self._change(lambda _old, _new: [r.id for r in self._endpoints.records()])
        result = self.queue.wait(revision, timeout)
        if not result.reached:
            log.error("start-up regeneration did not finish within %.0f s: %d endpoints pending",
                      timeout, len(result.pending))
        known = {r.id for r in self._endpoints.records()}
        for endpoint_id in self._datapath.policy_endpoints() - known:
            self._datapath.remove_policy(endpoint_id)
            self._results.pop(endpoint_id, None)
        return result

    def stop(self) -> None:
        self.queue.stop()

    # ----- changes -------------------------------------------------------------------------------
    def on_resource_event(self, event: str, obj: dict[str, Any], old: dict[str, Any] | None) -> int | None:
        """A policy or Pod object changed. Returns the revision the change produced, if any."""
        if is_policy(obj):
            ref = policy_ref(obj)
            with self._lock:
                before = self.repository.rules_of(ref)
                if event == "DELETED":
                    self.repository.remove(ref)
                else:
                    self.repository.replace(ref, parse_policy(obj))
                after = self.repository.rules_of(ref)
                return self._change(lambda _old, _new: self._selected_by([*before, *after]))
        if obj.get("kind") in ("Service", "EndpointSlice"):
            return self._refresh(services=True)
        if obj.get("kind") == "Pod":
            metadata = obj.get("metadata", {})
            key = (metadata.get("namespace", "default"), metadata.get("name", ""))
            ports = {} if event == "DELETED" else named_ports(obj)
            with self._lock:
                if self._pod_ports.get(key, {}) == ports:
                    return None  # label changes come through the endpoints (a new identity)
                if ports:
                    self._pod_ports[key] = ports
                else:
                    self._pod_ports.pop(key, None)
                # its own ingress, and egress of whoever names ports (resolved against every pod's)
                return self._change(lambda _old, new: self._selected_by([r for r in new.rules if _uses_named_ports(r)])
                                    | {r.id for r in self._endpoints.records() if (r.pod_namespace, r.pod_name) == key})
        return None

    def cluster_endpoints_changed(self, endpoints: Mapping[IPAddress, int], pod_cidrs: Iterable[Network] = (),
                                  ) -> int | None:
        """The cluster's remote endpoint IPs (IP -> identity) and the other nodes' pod CIDRs, as the
        cluster controller pushes them into the datapath. Matters only to address-based peers:
        returns the revision when the selection changed (the caller waits for it before the new
        ipcache entries go live), else None."""
        with self._lock:
            self._remote_addresses = dict(endpoints)
            self._remote_pod_cidrs = tuple(pod_cidrs)
            return self._refresh()

    def cluster_endpoints_update(self, changed: Mapping[IPAddress, int], gone: Iterable[IPAddress],
                                 pod_cidrs: Iterable[Network] = ()) -> int | None:
        """`cluster_endpoints_changed` as a difference: the remote IPs that are new or have another
        identity, and those gone (cilia.agent.cluster_policy keeps it in step with the cluster
        view, so a sync that changes a few endpoints of 10,000 copies no map of them all)."""
        with self._lock:
            for address in gone:
                self._remote_addresses.pop(address, None)
            self._remote_addresses.update(changed)
            self._remote_pod_cidrs = tuple(pod_cidrs)
            return self._refresh()

    def cluster_endpoints(self) -> dict[IPAddress, int]:
        """The remote endpoint IPs (IP -> identity) as the engine holds them."""
        with self._lock:
            return dict(self._remote_addresses)

    def _refresh(self, services: bool = False) -> int | None:
        """Publish a revision if the address-based peers now select other identities (or need other
        CIDR identities); the identity diff queues exactly the endpoints whose rules that changes."""
        with self._lock:
            peers = address_peers(self._inputs.rules)
            if not peers or (services and not any(isinstance(p, ServicePeer) for p in peers)):
                return None
            inputs = self._build_inputs()
            if inputs.views == self._inputs.views and inputs.cidrs == self._inputs.cidrs:
                return None
            return self._publish(lambda _old, _new: (), inputs)[0]

    def _change(self, affected: Callable[[PolicyInputs, PolicyInputs], Iterable[int]]) -> int:
        """New inputs, the endpoints to regenerate, the next revision. Called under the lock."""
        return self._publish(affected)[0]

    def _publish(self, affected: Callable[[PolicyInputs, PolicyInputs], Iterable[int]],
                 built: PolicyInputs | None = None) -> tuple[int, set[int]]:
        previous = self._inputs
        inputs = built if built is not None else self._build_inputs()
        if self.mode == "sync":
            targets = {r.id for r in self._endpoints.records()}
        else:
            targets = set(affected(previous, inputs)) | self._identity_affected(previous, inputs)
        self._inputs = inputs
        revision = self.queue.publish(inputs, sorted(targets))
        added = {p: n for p, n in inputs.cidrs.items() if previous.cidrs.get(p) != n}
        if added:
            self.queue.when_reached(revision, lambda: self._add_cidrs(inputs.cidrs))
        return revision, targets

    def _build_inputs(self) -> PolicyInputs:
        rules = tuple(self.repository.rules())
        prefixes = {p for r in rules for d in Direction for e in r.entries(d) for peer in e.peers
                    if isinstance(peer, CidrPeer) for p in (peer.network, *peer.excepts)}
        views: dict[int, IdentityView] = {i.id: IdentityView(i.id, i.labels) for i in self._identities.all()}
        peers = address_peers(rules)
        service_prefixes: dict[Network, frozenset[object]] = {}
        if peers:
            selection = select(peers, views.values(), self._pod_addresses(), self._service_facts(peers),
                               self._remote_pod_cidrs)
            for number, chosen in selection.pods.items():
                view = views.get(number)
                if view is not None and view.is_pod:
                    views[number] = replace(view, address_peers=frozenset(chosen))
            service_prefixes = dict(selection.service_prefixes)
            prefixes |= service_prefixes.keys()
        current, released = self.cidrs.sync(prefixes)
        if released:
            self._datapath.remove_cidr_prefixes(released)
        views.update({n: IdentityView(n, cidr_labels(p), p, service_prefixes.get(p, frozenset()))
                      for p, n in current.items()})
        fqdn_keys = {peer.matcher.key for r in rules for e in r.entries(Direction.EGRESS) for peer in e.peers
                     if isinstance(peer, FqdnPeer)}
        fqdn_sets, _released = self.fqdns.sync(fqdn_keys)
        views.update({n: IdentityView(n, fqdn_labels(k)) for k, n in fqdn_sets.items()})
        cluster: NamedPorts = {}
        for ports in self._pod_ports.values():
            for name, values in ports.items():
                cluster.setdefault(name, set()).update(values)
        return PolicyInputs(rules, views, PeerIndex(list(views.values())), dict(current), dict(self._pod_ports),
                            cluster, self.settings.copy())

    def fqdn_identity(self, selectors: Iterable[str], timeout: float = 2.0) -> int | None:
        """The FQDN identity of a set of toFQDNs selectors (the DNS proxy asks for an IP that names
        matching several selectors resolved to). A new one is in every endpoint's policy before
        this returns (bounded by `timeout`); None for an unknown selector or when that timed out."""
        started = time.monotonic()
        with self._lock:
            before = self.fqdns.current()
            number = self.fqdns.request(selectors)
            if number is None:
                return None
            if number in before.values():
                return number
            revision = self._change(lambda _old, _new: ())
        published = time.monotonic()
        result = self.queue.wait(revision, timeout)
        done = time.monotonic()
        log.info("FQDN set identity %d for %s: published in %.1f ms, in every endpoint's policy %.1f ms later%s",
                 number, sorted(selectors), (published - started) * 1000, (done - published) * 1000,
                 "" if result.reached else " (timed out)")
        return number if result.reached else None

    def _pod_addresses(self) -> dict[int, set[IPAddress]]:
        """Every pod identity's IPs this node knows: its endpoints' and the cluster's."""
        found: dict[int, set[IPAddress]] = {}
        records = self._endpoints.records()
        self._gone &= {r.id for r in records}  # removed from the registry: forgotten
        for record in records:
            if record.id in self._gone:
                continue
            for text in (record.ipv4, record.ipv6):
                if text:
                    found.setdefault(record.identity, set()).add(ipaddress.ip_address(text))
        for address, number in self._remote_addresses.items():
            found.setdefault(number, set()).add(address)
        return found

    def _service_facts(self, peers: Iterable[object]) -> list[Any]:
        if not any(isinstance(p, ServicePeer) for p in peers):
            return []
        return service_facts(self._resources.list("Service"), self._resources.list("EndpointSlice"))

    def _add_cidrs(self, cidrs: Mapping[Network, int]) -> None:
        with self._lock:  # only what is still wanted: a later change may have released some
            current = self.cidrs.current()
            self._datapath.add_cidr_prefixes({p: n for p, n in cidrs.items() if current.get(p) == n})

    def _selected_by(self, rules: Iterable[Rule]) -> set[int]:
        subjects = {rule.subject for rule in rules}
        if not subjects:
            return set()
        return {r.id for r in self._endpoints.records()
                if any(subject.matches(labels_of_record(r)) for subject in subjects)}

    def _identity_affected(self, previous: PolicyInputs, inputs: PolicyInputs) -> set[int]:
        """Endpoints with a rule whose peers match an identity that came, went or changed labels."""
        # new or relabelled identities as they are now, gone or relabelled ones as they were
        now = {i for i, v in inputs.views.items() if previous.views.get(i) != v}
        before = {i for i, v in previous.views.items() if inputs.views.get(i) != v}
        if not now and not before:
            return set()
        rules = set(previous.rules) | set(inputs.rules)
        return self._selected_by(rule for rule in rules if _peers_match(rule, inputs.index, now)
                                 or _peers_match(rule, previous.index, before))

    # ----- endpoint lifecycle (called by the endpoint manager) -----------------------------------
    def endpoint_added(self, record: EndpointRecord) -> str:
        """A new endpoint (already in the registry): its policy is installed before this returns,
        and the endpoints that must learn its identity are regenerated (waited for, bounded).
        Returns "" or why its policy is not installed (its traffic is then dropped)."""
        with self._lock:
            self._gone.discard(record.id)
            revision, peers = self._publish(lambda _old, _new: ())
        if self.queue.synchronous:
            return self.queue.error(record.id)  # a sync change regenerated every endpoint, this one too
        error = self.queue.run_now(record.id)
        result = self.queue.wait(revision, PEER_WAIT_SECONDS, only=peers - {record.id})
        if not result.reached:
            log.warning("endpoint %d: %d peers did not learn its identity within %.0f s", record.id,
                        len(result.pending), PEER_WAIT_SECONDS)
        return error

    endpoint_changed = endpoint_added  # a relabel: same steps, with the endpoint's new record

    def identities_changed(self) -> int:
        """Identities were released (an endpoint went away or moved): peers forget them."""
        with self._lock:
            return self._change(lambda _old, _new: ())

    def endpoint_removed(self, record: EndpointRecord) -> None:
        self.queue.forget(record.id)  # not under the lock: it may wait for a worker
        with self._lock:
            self._gone.add(record.id)  # the identities_changed() that follows no longer counts its IPs
            self._datapath.remove_policy(record.id)
            self._results.pop(record.id, None)
            if self.settings.endpoint_audit.pop(record.id, None) is not None:
                self._save_settings()

    # ----- regeneration (a worker, or the caller in sync mode) -----------------------------------
    def _regenerate(self, endpoint_id: int, inputs: PolicyInputs) -> str:
        record = self._endpoints.get(endpoint_id)
        if record is None:  # gone, or going: nothing may be installed for it
            return ""
        policy = self._resolve(inputs, labels_of_record(record), endpoint_id,
                               inputs.pod_ports.get((record.pod_namespace, record.pod_name), {}))
        try:
            state = compute_map_state(policy, inputs.index, max_entries=self._max_entries)
            if state.proxy:  # the proxy's access log names the policy that decided each request
                state.proxy = state.proxy.with_policies(self._policy_of)
            self._datapath.install_policy(endpoint_id, state)
        except PolicyMapOverflow as exc:
            self._datapath.fail_policy(endpoint_id)
            error = f"failed closed: {exc}"
            self._results[endpoint_id] = EndpointResult(policy, 0, error)
            log.error("endpoint %d: %s; its traffic is dropped until the policy fits", endpoint_id, exc)
            return error
        except Exception as exc:  # a map write failed: install_policy marked the endpoint failed
            error = f"failed closed: installing policy: {exc}"
            self._results[endpoint_id] = EndpointResult(policy, 0, error)
            log.exception("endpoint %d: installing its policy failed; its traffic is dropped", endpoint_id)
            return error
        self._results[endpoint_id] = EndpointResult(policy, state.size())
        return ""

    @staticmethod
    def _resolve(inputs: PolicyInputs, labels: LabelSet, endpoint_id: int | None,
                 own_ports: NamedPorts) -> EndpointPolicy:
        settings = inputs.settings
        audit = settings.endpoint_audit.get(endpoint_id, settings.audit) if endpoint_id is not None \
            else settings.audit
        return resolve_endpoint(
            inputs.rules, labels,
            enforcement=settings.enforcement,
            own_named_ports=own_ports,
            cluster_named_ports=inputs.cluster_ports,
            audit=audit,
            allow_host_ingress=settings.allow_localhost in ("auto", "always"),
        )

    def resolve(self, labels: LabelSet, endpoint_id: int | None = None,
                pod: dict[str, Any] | None = None) -> EndpointPolicy:
        """The policy the current inputs give an endpoint with these labels (for trace)."""
        return self._resolve(self._inputs, labels, endpoint_id, named_ports(pod))

    def wait(self, revision: int | None, timeout: float) -> WaitResult:
        return self.queue.wait(revision, timeout)

    # ----- settings ------------------------------------------------------------------------------
    def config(self) -> tuple[Settings, int]:
        return self.settings.copy(), self.revision

    def patch_config(self, enforcement: str | None, audit: bool | None, allow_localhost: str | None) -> int:
        """Settings reach every endpoint: all are queued. Returns the revision."""
        with self._lock:
            if enforcement is not None:
                self.settings.enforcement = Enforcement(enforcement)
            if audit is not None:
                self.settings.audit = audit
            if allow_localhost is not None:
                self.settings.allow_localhost = allow_localhost
            self._save_settings()
            return self._change(lambda _old, _new: [r.id for r in self._endpoints.records()])

    def set_endpoint_audit(self, endpoint_id: int, audit: bool | None) -> int:
        with self._lock:
            if audit is None:
                self.settings.endpoint_audit.pop(endpoint_id, None)
            else:
                self.settings.endpoint_audit[endpoint_id] = audit
            self._save_settings()
            return self._change(lambda _old, _new: [endpoint_id])

    def _save_settings(self) -> None:
        s = self.settings
        write_json(self._settings_file, {"enforcement": s.enforcement.value, "audit": s.audit,
                                         "allow_localhost": s.allow_localhost,
                                         "endpoint_audit": {str(k): v for k, v in s.endpoint_audit.items()}})

    # ----- views ---------------------------------------------------------------------------------
    def result(self, endpoint_id: int) -> EndpointResult | None:
        return self._results.get(endpoint_id)

    def status(self, endpoint_id: int) -> PolicyStatus | None:
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
        return PolicyStatus(mode(Direction.INGRESS), mode(Direction.EGRESS), policy.audit, result.entries,
                            sorted(selected), result.error)

    def selecting(self, ref: PolicyRef) -> list[int]:
        return sorted(endpoint_id for endpoint_id, result in list(self._results.items())
                      if any(ref in result.policy.direction(d).selected_by for d in Direction)
                      or any(e.rule_id and (info := self.repository.info(e.rule_id)) is not None and info.ref == ref
                             for d in Direction for e in result.policy.direction(d).entries))

    def _policy_of(self, rule_id: int) -> tuple[str, str, str] | None:
        info = self.repository.info(rule_id)
        return None if info is None else (info.ref.kind, info.ref.namespace, info.ref.name)

    def describe_rule(self, rule_id: int) -> dict[str, Any] | None:
        info = self.repository.info(rule_id)
        if info is None:
            return None
        return {"kind": info.ref.kind, "namespace": info.ref.namespace, "name": info.ref.name,
                "rule": info.field, "id": rule_id}

    # ----- trace ---------------------------------------------------------------------------------
    def trace(self, src: tuple[str | None, list[str], str | None], dst: tuple[str | None, list[str], str | None],
              protocol: str, port: int) -> TraceResult:
        src_view, src_policy = self._trace_side(*src, "source")
        dst_view, dst_policy = self._trace_side(*dst, "destination")
        try:
            number = ipproto.number_of(protocol)
        except KeyError as exc:
            raise ValueError(str(exc.args[0])) from exc
        return trace(self.repository, src_view, dst_view, number, port, src_policy, dst_policy)

    def _trace_side(self, pod: str | None, labels: list[str], ip: str | None,
                    what: str) -> tuple[IdentityView, EndpointPolicy | None]:
        if pod:
            namespace, _, name = pod.rpartition("/")
            namespace = namespace or "default"
            for record in self._endpoints.records():
                if record.pod_namespace == namespace and record.pod_name == name:
                    label_set = labels_of_record(record)
                    pod_obj = self._resources.get("Pod", namespace, name)
                    view = self._inputs.views.get(record.identity) or IdentityView(record.identity, label_set)
                    return view, self.resolve(label_set, record.id, pod_obj)
            raise LookupError(f"{what}: no local endpoint for pod {namespace}/{name}")
        if labels:
            label_set = labels_of(labels)
            found = next((i.id for i in self._identities.all() if i.labels == label_set), UNALLOCATED_POD_IDENTITY)
            return IdentityView(found, label_set), self.resolve(label_set)
        if ip:
            address = ipaddress.ip_address(ip)
            for record in self._endpoints.records():
                if ip in (record.ipv4, record.ipv6):
                    return self._trace_side(f"{record.pod_namespace}/{record.pod_name}", [], None, what)
            remote = self._remote_addresses.get(address)
            if remote is not None and remote in self._inputs.views:
                return self._inputs.views[remote], None
            matches = [(p, n) for p, n in self.cidrs.current().items() if address in p]
            if matches:
                prefix, number = max(matches, key=lambda pn: pn[0].prefixlen)
                return IdentityView(number, cidr_labels(prefix), prefix), None
            return IdentityView(int(ReservedIdentity.WORLD), labels_of(["reserved:world"])), None
        raise LookupError(f"{what}: give a pod, labels or an IP")


def fqdn_identities_file(state_dir: Path) -> Path:
    """Where the agent keeps the FQDN identities (cilia.identity.fqdn), which the DNS proxy reads."""
    return state_dir / "fqdn-identities.json"
