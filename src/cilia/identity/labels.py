"""Cilium-style labels (`source:key=value`) and the label set a pod's identity is made of."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

SOURCES = ("k8s", "reserved", "cidr", "fqdn", "unspec")
NAMESPACE_LABEL = "io.kubernetes.pod.namespace"
NAMESPACE_LABELS_PREFIX = "io.cilium.k8s.namespace.labels."
SERVICE_ACCOUNT_LABEL = "io.cilium.k8s.policy.serviceaccount"
CLUSTER_LABEL = "io.cilium.k8s.policy.cluster"
# Labels Kubernetes controllers set that say nothing about security (Cilium filters them too).
_IGNORED_PREFIXES = ("controller-revision-hash", "pod-template-hash", "pod-template-generation",
                     "statefulset.kubernetes.io/pod-name", "io.kubernetes.pod.uid", "job-name",
                     "controller-uid", "batch.kubernetes.io/")


@dataclass(frozen=True, order=True)
class Label:
    source: str
    key: str
    value: str = ""

    @classmethod
    def parse(cls, text: str) -> Label:
        source, sep, rest = text.partition(":")
        if not sep or source not in SOURCES:
            source, rest = "unspec", text
        key, _, value = rest.partition("=")
        if not key:
            raise ValueError(f"label {text!r} has no key")
        return cls(source, key, value)

    def __str__(self) -> str:
        return f"{self.source}:{self.key}={self.value}"


class LabelSet:
    """An immutable, sorted, hashable set of labels."""

    def __init__(self, labels: Iterable[Label] = ()) -> None:
        self._labels = tuple(sorted(set(labels)))

    @classmethod
    def parse_many(cls, texts: Iterable[str]) -> LabelSet:
        return cls(Label.parse(text) for text in texts)

    @classmethod
    def from_k8s(
        cls,
        pod_labels: Mapping[str, str],
        namespace: str,
        namespace_labels: Mapping[str, str] | None = None,
        service_account: str = "default",
    ) -> LabelSet:
        labels = [
            Label("k8s", key, value)
            for key, value in pod_labels.items()
            if not key.startswith(_IGNORED_PREFIXES)
        ]
        labels.append(Label("k8s", NAMESPACE_LABEL, namespace))
        labels += [
            Label("k8s", NAMESPACE_LABELS_PREFIX + key, value) for key, value in (namespace_labels or {}).items()
        ]
        labels.append(Label("k8s", SERVICE_ACCOUNT_LABEL, service_account))
        labels.append(Label("k8s", CLUSTER_LABEL, "default"))
        return cls(labels)

    def __iter__(self) -> Iterator[Label]:
        return iter(self._labels)

    def __len__(self) -> int:
        return len(self._labels)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LabelSet) and self._labels == other._labels

    def __hash__(self) -> int:
        return hash(self._labels)

    def key(self) -> str:
        return ";".join(str(label) for label in self._labels)

    def get(self, key: str) -> str | None:
        for label in self._labels:
            if label.key == key:
                return label.value
        return None

    def __repr__(self) -> str:
        return f"LabelSet({self.key()!r})"
