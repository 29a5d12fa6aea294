"""Hubble's agent events (GetAgentEvents, `hubble observe agent-events`): what the agent did, as
Cilium's monitor API agent notifications, with upstream's AgentEventType values and messages.

Recorded: AGENT_STARTED (agent_start), POLICY_UPDATED / POLICY_DELETED (policy_update: the
policy's labels as Cilium derives them, the policy revision after the change, the rule count),
ENDPOINT_CREATED / ENDPOINT_DELETED (endpoint_update: id, identity labels, pod name, namespace),
ENDPOINT_REGENERATE_SUCCESS / _FAILURE (endpoint_regenerate: id, labels, error). Not recorded:
ipcache and service events (upstream's SERVICE_* are deprecated; cilia has no ipcache stream).

`AgentEventLog` keeps the last `capacity` events (its own buffer: Hubble shares the flow ring,
whose readers count flows when rewinding for `number`; here `number` counts agent events) and
hands new ones to followers on their event loop. `select` applies a request's number / first /
since / until as Hubble's ring reader does for flows."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from google.protobuf.timestamp_pb2 import Timestamp

from cilia.hubble.pb import flow_pb2, observer_pb2

DEFAULT_CAPACITY = 1024
FOLLOW_QUEUE = 1024


def _timestamp(ns: int) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(ns)
    return stamp


def agent_started(started_ns: int) -> flow_pb2.AgentEvent:
    event = flow_pb2.AgentEvent(type=flow_pb2.AGENT_STARTED)
    event.agent_start.time.CopyFrom(_timestamp(started_ns))
    return event


def policy_labels(obj: Mapping[str, Any]) -> list[str]:
    """Cilium's labels of an imported policy (k8s:io.cilium.k8s.policy.*; a clusterwide policy
    has no namespace)."""
    metadata = obj.get("metadata") or {}
    kind = str(obj.get("kind", ""))
    labels = [f"k8s:io.cilium.k8s.policy.derived-from={kind}",
              f"k8s:io.cilium.k8s.policy.name={metadata.get('name', '')}"]
    if kind != "CiliumClusterwideNetworkPolicy":
        labels.append(f"k8s:io.cilium.k8s.policy.namespace={metadata.get('namespace') or 'default'}")
    if metadata.get("uid"):
        labels.append(f"k8s:io.cilium.k8s.policy.uid={metadata['uid']}")
    return labels


def rule_count(obj: Mapping[str, Any]) -> int:
    """The rules a policy object holds: a Cilium policy's `spec` and each of its `specs`, one for
    a Kubernetes NetworkPolicy."""
    if obj.get("kind") == "NetworkPolicy":
        return 1
    specs = obj.get("specs") or []
    return (1 if obj.get("spec") is not None else 0) + (len(specs) if isinstance(specs, list) else 0)


def policy_event(deleted: bool, obj: Mapping[str, Any], revision: int) -> flow_pb2.AgentEvent:
    event = flow_pb2.AgentEvent(type=flow_pb2.POLICY_DELETED if deleted else flow_pb2.POLICY_UPDATED)
    event.policy_update.labels.extend(policy_labels(obj))
    event.policy_update.revision = revision
    event.policy_update.rule_count = rule_count(obj)
    return event


def endpoint_event(created: bool, endpoint_id: int, labels: Iterable[str], pod_name: str, namespace: str,
                   error: str = "") -> flow_pb2.AgentEvent:
    event = flow_pb2.AgentEvent(type=flow_pb2.ENDPOINT_CREATED if created else flow_pb2.ENDPOINT_DELETED)
    update = event.endpoint_update
    update.id = endpoint_id
    update.labels.extend(labels)
    update.pod_name = pod_name
    update.namespace = namespace
    update.error = error
    return event


def regeneration_event(endpoint_id: int, labels: Iterable[str], error: str) -> flow_pb2.AgentEvent:
    event = flow_pb2.AgentEvent(
        type=flow_pb2.ENDPOINT_REGENERATE_FAILURE if error else flow_pb2.ENDPOINT_REGENERATE_SUCCESS)
    event.endpoint_regenerate.id = endpoint_id
    event.endpoint_regenerate.labels.extend(labels)
    event.endpoint_regenerate.error = error
    return event


@dataclass(frozen=True)
class Recorded:
    time_ns: int
    event: flow_pb2.AgentEvent


@dataclass(eq=False)
class Follower:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Recorded] = field(default_factory=lambda: asyncio.Queue(FOLLOW_QUEUE))
    lost: int = 0

    def offer(self, item: Recorded) -> None:
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.lost += 1


class AgentEventLog:
    """The last `capacity` agent events, thread-safe; followers get new ones on their loop."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY, clock: Callable[[], int] = time.time_ns) -> None:
        self._events: deque[Recorded] = deque(maxlen=capacity)
        self._followers: set[Follower] = set()
        self._lock = threading.Lock()
        self._clock = clock

    def record(self, event: flow_pb2.AgentEvent, time_ns: int | None = None) -> None:
        item = Recorded(self._clock() if time_ns is None else time_ns, event)
        with self._lock:
            self._events.append(item)
            followers = list(self._followers)
        for follower in followers:
            follower.loop.call_soon_threadsafe(follower.offer, item)

    def snapshot(self) -> list[Recorded]:
        with self._lock:
            return list(self._events)

    def follow(self, loop: asyncio.AbstractEventLoop) -> tuple[Follower, list[Recorded]]:
        """A follower, subscribed atomically with the history it must not miss."""
        follower = Follower(loop)
        with self._lock:
            self._followers.add(follower)
            return follower, list(self._events)

    def unfollow(self, follower: Follower) -> None:
        with self._lock:
            self._followers.discard(follower)


class _Request(Protocol):
    number: int
    first: bool
    follow: bool

    def HasField(self, name: str) -> bool: ...

    @property
    def since(self) -> Timestamp: ...

    @property
    def until(self) -> Timestamp: ...


def select(events: list[Recorded], request: _Request) -> list[Recorded]:
    """The history a GetAgentEvents / GetDebugEvents request gets before following: as Hubble's
    ring reader, `since` takes precedence over `number`; `first` reads from the oldest; a
    follower without `number` or `since` starts at the end; `until` ends the reading at the first
    event past it; `number` caps what is read forward (not when following)."""
    since = request.since.ToNanoseconds() if request.HasField("since") else None
    until = request.until.ToNanoseconds() if request.HasField("until") else None
    if request.follow and request.number == 0 and since is None:
        return []
    if since is not None:
        start = next((i for i in range(len(events) - 1, -1, -1) if events[i].time_ns < since), -1) + 1
    elif request.first or request.number == 0:
        start = 0
    else:
        start = max(0, len(events) - request.number)
    out: list[Recorded] = []
    for item in events[start:]:
        if until is not None and item.time_ns > until:
            break
        if since is not None and item.time_ns < since:
            continue
        if request.number and not request.follow and len(out) >= request.number:
            break
        out.append(item)
    return out


class EndpointLike(Protocol):
    @property
    def id(self) -> int: ...

    @property
    def identity_labels(self) -> list[str]: ...

    @property
    def pod_name(self) -> str: ...

    @property
    def pod_namespace(self) -> str: ...


class AgentEventRecorder:
    """Turns the agent's hooks into agent events: a regeneration queue observer, an endpoint
    manager listener (which says only that something changed: the endpoints are compared with
    the last call's), a resource watcher (policies)."""

    def __init__(self, log: AgentEventLog, endpoints: Callable[[], Iterable[EndpointLike]],
                 revision: Callable[[], int], is_policy: Callable[[dict[str, Any]], bool]) -> None:
        self.log = log
        self._endpoints = endpoints
        self._revision = revision
        self._is_policy = is_policy
        self._lock = threading.Lock()
        self._known: dict[int, EndpointLike] = {e.id: e for e in endpoints()}  # restored: not "created"

    def on_regeneration(self, endpoint_id: int, _seconds: float, error: str) -> None:
        with self._lock:
            known = self._known.get(endpoint_id)
        labels = known.identity_labels if known is not None else []
        self.log.record(regeneration_event(endpoint_id, labels, error))

    def on_endpoints_changed(self) -> None:
        current = {e.id: e for e in self._endpoints()}
        with self._lock:
            created = [e for i, e in current.items() if i not in self._known]
            deleted = [e for i, e in self._known.items() if i not in current]
            self._known = current
        for endpoint in created:
            self.log.record(endpoint_event(True, endpoint.id, endpoint.identity_labels, endpoint.pod_name,
                                           endpoint.pod_namespace))
        for endpoint in deleted:
            self.log.record(endpoint_event(False, endpoint.id, endpoint.identity_labels, endpoint.pod_name,
                                           endpoint.pod_namespace))

    def on_resource_event(self, event: str, obj: dict[str, Any], _old: dict[str, Any] | None) -> None:
        if self._is_policy(obj):
            self.log.record(policy_event(event == "DELETED", obj, self._revision()))


def response(item: Recorded, node: str) -> observer_pb2.GetAgentEventsResponse:
    reply = observer_pb2.GetAgentEventsResponse(node_name=node, time=_timestamp(item.time_ns))
    reply.agent_event.CopyFrom(item.event)
    return reply
