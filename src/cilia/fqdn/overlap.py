"""Which toFQDNs selectors one DNS name can match together (so their set identity can be allocated
when policy is applied, before any answer needs it).

Each matcher (cilia.fqdn.matchpattern semantics) is turned into a small NFA over characters; a
group of matchers can match a common name exactly when the product of their NFAs accepts some
word. The alphabet is the literal characters of the group, the dot, and one DNS character none of
them uses (it stands for every other DNS character, which all patterns treat alike).

`co_matching_sets` grows groups from pairs (a group is only non-empty if all its sub-groups are),
bounded in size and count: sets it does not find are still allocated on demand.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from cilia.fqdn.matchpattern import NameMatcher, fqdn, matches_everything

DNS_CHARS = frozenset("-abcdefghijklmnopqrstuvwxyz0123456789_")
DOT = "."
MAX_SET_SIZE = 4
MAX_SETS = 256
log = logging.getLogger(__name__)

# a transition's label: one literal character, or "any DNS character"
ANY = ""


@dataclass
class _Nfa:
    moves: list[list[tuple[str, int]]] = field(default_factory=list)  # state -> (label, next)
    eps: list[list[int]] = field(default_factory=list)
    final: int = 0

    def state(self) -> int:
        self.moves.append([])
        self.eps.append([])
        return len(self.moves) - 1


def _labels(nfa: _Nfa, start: int) -> int:
    """One or more whole labels with their dots, from `start`; returns the state after them."""
    inside = nfa.state()
    after = nfa.state()
    nfa.moves[start].append((ANY, inside))
    nfa.moves[inside].append((ANY, inside))
    nfa.moves[inside].append((DOT, after))
    nfa.moves[after].append((ANY, inside))
    return after


@lru_cache(maxsize=4096)
def _build(key: str) -> _Nfa:
    matcher = NameMatcher.from_key(key)
    nfa = _Nfa()
    cur = nfa.state()
    text = matcher.value.strip().lower()
    if matcher.kind == "matchPattern" and matches_everything(text):
        labels, root, final = _labels(nfa, cur), nfa.state(), nfa.state()
        nfa.moves[cur].append((DOT, root))  # the root "." too, and nothing after it
        nfa.eps[labels].append(final)
        nfa.eps[root].append(final)
        nfa.final = final
        return nfa
    text = fqdn(text)
    i = 0
    if matcher.kind == "matchPattern":
        stars = len(text) - len(text.lstrip("*"))
        if stars >= 2 and text[stars:stars + 1] == DOT:
            cur = _labels(nfa, cur)
            i = stars + 1
    while i < len(text):
        c = text[i]
        if c == "*" and matcher.kind == "matchPattern":
            while i + 1 < len(text) and text[i + 1] == "*":
                i += 1
            nfa.moves[cur].append((ANY, cur))
            nxt = nfa.state()
            nfa.eps[cur].append(nxt)
            cur = nxt
        else:
            nxt = nfa.state()
            nfa.moves[cur].append((c, nxt))
            cur = nxt
        i += 1
    nfa.final = cur
    return nfa


def _closure(nfa: _Nfa, states: Iterable[int]) -> frozenset[int]:
    seen = set(states)
    stack = list(seen)
    while stack:
        for nxt in nfa.eps[stack.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return frozenset(seen)


def _step(nfa: _Nfa, states: frozenset[int], char: str) -> frozenset[int]:
    out = [nxt for s in states for label, nxt in nfa.moves[s]
           if label == char or (label == ANY and char != DOT)]
    return _closure(nfa, out)


@lru_cache(maxsize=16384)
def _common_name(keys: tuple[str, ...]) -> str | None:
    nfas = [_build(k) for k in keys]
    literals = {label for n in nfas for moves in n.moves for label, _ in moves if label not in (ANY, DOT)}
    other = next((c for c in sorted(DNS_CHARS) if c not in literals), None)
    alphabet = [DOT, *sorted(literals), *([other] if other else [])]
    start = tuple(_closure(n, [0]) for n in nfas)
    parent: dict[tuple[frozenset[int], ...], tuple[tuple[frozenset[int], ...], str] | None] = {start: None}
    frontier = deque([start])
    for _ in range(100_000):  # bounded: the product's states are few (patterns <= 255 characters)
        if not frontier:
            return None
        current = frontier.popleft()  # breadth first: the shortest witness
        if all(n.final in s for n, s in zip(nfas, current, strict=True)):
            word = []
            step = parent[current]
            while step is not None:
                word.append(step[1])
                step = parent[step[0]]
            return "".join(reversed(word))
        for char in alphabet:
            nxt = tuple(_step(n, s, char) for n, s in zip(nfas, current, strict=True))
            if all(nxt) and nxt not in parent:
                parent[nxt] = (current, char)
                frontier.append(nxt)
    log.warning("selector overlap check of %s did not finish: assuming they overlap", list(keys))
    return fqdn("unknown")


def common_name(keys: Sequence[str]) -> str | None:
    """A name every selector in `keys` (NameMatcher.key texts) matches, or None when there is none."""
    return _common_name(tuple(sorted(set(keys))))


def common_name_exists(keys: Sequence[str]) -> bool:
    return common_name(keys) is not None


def co_matching_sets(keys: Iterable[str], *, max_size: int = MAX_SET_SIZE, max_sets: int = MAX_SETS,
                     ) -> list[frozenset[str]]:
    """Every group of two or more selectors (up to `max_size`, at most `max_sets` groups) that one
    name can match together, smallest first."""
    ordered = sorted(set(keys))
    found: list[frozenset[str]] = []
    level = {frozenset({k}) for k in ordered}
    for _size in range(2, max_size + 1):
        grown: set[frozenset[str]] = set()
        for group in sorted(level, key=sorted):
            top = max(group)
            for k in ordered:
                candidate = group | {k}
                # grown in key order only; a group overlaps only if each group one smaller does
                if k <= top or any(candidate - {m} not in level for m in candidate):
                    continue
                if common_name_exists(sorted(candidate)):
                    grown.add(candidate)
                    if len(found) + len(grown) >= max_sets:
                        log.warning("more than %d co-matching toFQDNs selector sets: the rest are "
                                    "allocated when an answer needs them", max_sets)
                        return found + sorted(grown, key=sorted)
        if not grown:
            break
        found.extend(sorted(grown, key=sorted))
        level = grown
    return found
