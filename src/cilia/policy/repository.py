"""The set of rules in force, with stable rule ids (persisted) so drops can name their policy."""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cilia.jsonfile import read_json, write_json
from cilia.policy.rules import Direction, Entry, PolicyRef, Rule

DEFAULT_DENY_RULE = 0  # rule id 0: no rule allowed it (or no enforcement, when allowed)


@dataclass(frozen=True)
class RuleInfo:
    id: int
    ref: PolicyRef
    direction: Direction
    deny: bool
    spec_index: int
    entry_index: int

    @property
    def field(self) -> str:
        section = f"{self.direction.value}{'Deny' if self.deny else ''}"
        return f"{section}[{self.entry_index}]"

    def describe(self) -> str:
        return f"{self.ref} {self.field}"


def _rule_key(ref: PolicyRef, spec_index: int, direction: Direction, entry: Entry) -> str:
    return f"{ref}#{spec_index}#{direction.value}#{'deny' if entry.deny else 'allow'}#{entry.index}"


class PolicyRepository:
    """Thread-safe. `replace(ref, rules)` swaps a whole policy at once, so a failed parse upstream
    leaves the previous version in force; ids of entries that did not move are kept."""

    def __init__(self, ids_file: Path | None = None) -> None:
        self._ids_file = ids_file
        empty: dict[str, Any] = {"next": 1, "ids": {}}
        state: dict[str, Any] = read_json(ids_file, empty) if ids_file else empty
        self._next: int = int(state["next"])
        self._ids: dict[str, int] = {k: int(v) for k, v in state["ids"].items()}
        self._policies: dict[PolicyRef, tuple[Rule, ...]] = {}
        self._info: dict[int, RuleInfo] = {}
        self._lock = threading.Lock()
        self.revision = 0

    def replace(self, ref: PolicyRef, rules: list[Rule]) -> None:
        with self._lock:
            numbered = tuple(self._number(ref, rule) for rule in rules)
            self._policies[ref] = numbered
            self._forget_unused(ref)
            self.revision += 1

    def remove(self, ref: PolicyRef) -> bool:
        with self._lock:
            found = self._policies.pop(ref, None) is not None
            if found:
                self._forget_unused(ref)
                self.revision += 1
            return found

    def rules(self) -> list[Rule]:
        with self._lock:
            return [rule for ref in sorted(self._policies) for rule in self._policies[ref]]

    def refs(self) -> list[PolicyRef]:
        with self._lock:
            return sorted(self._policies)

    def rules_of(self, ref: PolicyRef) -> tuple[Rule, ...]:
        with self._lock:
            return self._policies.get(ref, ())

    def info(self, rule_id: int) -> RuleInfo | None:
        return self._info.get(rule_id)

    def _number(self, ref: PolicyRef, rule: Rule) -> Rule:
        def numbered(direction: Direction) -> tuple[Entry, ...]:
            out = []
            for entry in rule.entries(direction):
                key = _rule_key(ref, rule.spec_index, direction, entry)
                rule_id = self._ids.get(key)
                if rule_id is None:
                    rule_id = self._next
                    self._next += 1
                    self._ids[key] = rule_id
                self._info[rule_id] = RuleInfo(rule_id, ref, direction, entry.deny, rule.spec_index, entry.index)
                out.append(replace(entry, rule_id=rule_id))
            return tuple(out)

        return replace(rule, ingress=numbered(Direction.INGRESS), egress=numbered(Direction.EGRESS))

    def forget_absent(self) -> None:
        """After a restore: drop the ids of policies deleted while the agent was not running."""
        with self._lock:
            used = {e.rule_id for rules in self._policies.values() for r in rules for d in Direction
                    for e in r.entries(d)}
            if any(v not in used for v in self._ids.values()):
                self._ids = {k: v for k, v in self._ids.items() if v in used}
                if self._ids_file:
                    write_json(self._ids_file, {"next": self._next, "ids": self._ids})

    def _forget_unused(self, ref: PolicyRef) -> None:
        """Forget the ids of `ref`'s entries that are gone. Only `ref`'s: while the agent restores
        policies one by one, the ids of those not loaded yet must survive, or a restart would
        renumber rules and rewrite every endpoint's policy map."""
        used = {e.rule_id for r in self._policies.get(ref, ()) for d in Direction for e in r.entries(d)}
        prefix = f"{ref}#"
        gone = {v for k, v in self._ids.items() if k.startswith(prefix) and v not in used}
        if gone:
            self._ids = {k: v for k, v in self._ids.items() if v not in gone}
            self._info = {k: v for k, v in self._info.items() if k not in gone}
        if self._ids_file:
            write_json(self._ids_file, {"next": self._next, "ids": self._ids})
