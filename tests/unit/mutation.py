"""Mutation fuzzing for the parsers of user input (helpers for tests/unit/test_fuzz_*.py).

Start from valid objects, then replace, delete, retype or add random subtrees at any path, and
check the parser's contract: it either accepts the object or raises *our* error type, whose
message names the object (kind and name, when they are readable) and the field. Anything else
(TypeError, AttributeError, KeyError, a ValueError leaking from ipaddress, ...) is a crash that
the API would answer with 500 and the CNI plugin with a traceback.

Runs are derandomized (a fixed seed per test), so a failure reproduces; for a longer local hunt,
CILIA_FUZZ_EXAMPLES raises the number of examples and CILIA_FUZZ_RANDOM=1 draws new ones each run.
"""

from __future__ import annotations

import copy
import os
import re
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path as Path_
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

EXAMPLES = int(os.environ.get("CILIA_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=not os.environ.get("CILIA_FUZZ_RANDOM"),
                database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

Path = tuple[str | int, ...]

# Values that look like the ones the parsers expect, so mutations reach deep branches too.
_TOKENS = ["", "None", "0", "80", "65536", "-1", "TCP", "UDP", "SCTP", "ANY", "tcp", "ICMP", "IPv4", "IPv6", "FQDN",
           "In", "NotIn", "Exists", "DoesNotExist", "Ingress", "Egress", "ClientIP", "Local", "Cluster",
           "NodePort", "LoadBalancer", "ClusterIP", "ExternalName", "Pod", "world", "all", "host", "cluster",
           "10.0.0.1", "10.0.0.0/8", "fd00::1", "fd00::/64", "0.0.0.0/0", "::/0", "10.0.0.300", "1.2.3.4/40",
           "fe80::1%eth0", "web", "app", "k8s:app", "reserved:host", "a/b", "UPPER", "x" * 70, "echo", "http",
           "EchoRequest", "Ping", "kubernetes.io/service-name", "io.kubernetes.pod.namespace", "true", "1.0.0",
           "\x00", "é", "--", "a--b", "²", "٣", "web\n", " 80"]


def _weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """Pick a strategy by weight (hypothesis' one_of is far from uniform over its branches)."""
    table = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.sampled_from(table).flatmap(lambda strategy: strategy)


def scalars() -> st.SearchStrategy[Any]:
    return _weighted(
        (5, st.sampled_from(_TOKENS)),
        (2, st.text(max_size=12)),
        (1, st.integers(min_value=-(2**65), max_value=2**65)),
        (1, st.floats(allow_nan=True, allow_infinity=True)),
        (1, st.sampled_from([1.5, 80.0, -0.0, float("nan"), float("inf")])),
        (3, st.sampled_from([0, 1, -1, 53, 80, 255, 256, 65535, 65536, 30000, 32767, 86400, 86401, 2**64])),
        (2, st.booleans()),
        (3, st.none()),
    )


def values() -> st.SearchStrategy[Any]:
    """Any JSON/YAML-shaped value: mostly scalars (what a parser meets most), else lists and maps
    nested to a few levels."""
    leaf = scalars()
    nested = st.recursive(
        leaf,
        lambda children: st.one_of(
            st.lists(children, max_size=3),
            st.dictionaries(st.one_of(st.sampled_from(_TOKENS), st.text(max_size=8)), children, max_size=3),
        ),
        max_leaves=6,
    )
    return _weighted((3, leaf), (1, st.lists(leaf, min_size=1, max_size=2)), (1, nested))


def paths(value: Any, prefix: Path = ()) -> Iterator[Path]:
    """Every path to a node of a JSON-shaped value (the root included)."""
    yield prefix
    if isinstance(value, dict):
        for key, child in value.items():
            yield from paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from paths(child, (*prefix, index))


def _get(value: Any, path: Path) -> Any:
    for step in path:
        value = value[step]
    return value


def _retype(value: Any, draw: Callable[[st.SearchStrategy[Any]], Any]) -> Any:
    """The same content in another shape: a map as a list, a number as a string, ... (as YAML does)."""
    if isinstance(value, dict):
        return draw(st.sampled_from([list(value.values()), list(value.keys()), [value], str(value), len(value)]))
    if isinstance(value, list):
        return draw(st.sampled_from([{str(i): v for i, v in enumerate(value)}, value[0] if value else None,
                                     str(value), len(value), [value]]))
    if isinstance(value, bool):
        return draw(st.sampled_from([str(value).lower(), int(value), [value]]))
    if isinstance(value, int):
        return draw(st.sampled_from([str(value), float(value), [value], {"value": value}, value > 0]))
    if isinstance(value, str):
        options: list[Any] = [[value], {value: value}, value.upper(), f" {value}", value + value]
        if value.isascii() and value.isdigit() and len(value) < 20:
            options.append(int(value))
        return draw(st.sampled_from(options))
    return draw(values())


@st.composite
def mutated(draw: Callable[[st.SearchStrategy[Any]], Any], seeds: Sequence[Any], max_mutations: int = 3,
            keep_root: bool = False) -> Any:
    """One of `seeds`, deep-copied, with 1..max_mutations random edits anywhere in it (below the
    root with keep_root: for a parser typed to take a mapping, whose caller checked that much)."""
    obj = copy.deepcopy(draw(st.sampled_from(list(seeds))))
    # Mostly one edit: the rest of the object stays valid, so the parser gets as far as the edit.
    count = draw(st.sampled_from([1, 1, 1, 1, 2, 2, max_mutations]))
    for _ in range(count):
        candidates = [p for p in paths(obj) if p or not keep_root]
        if not candidates:
            break
        path = draw(st.sampled_from(candidates))
        operation = draw(st.sampled_from(["replace", "replace", "retype", "delete", "add", "duplicate"]))
        node = _get(obj, path)
        if operation == "replace" or (operation == "delete" and not path):
            new: Any = draw(values())
        elif operation == "retype":
            new = _retype(node, draw)
        elif operation == "add" and isinstance(node, dict):
            key = draw(st.one_of(st.sampled_from(_TOKENS), st.sampled_from(sorted(str(k) for k in node) or ["x"])))
            node[key] = draw(values())
            continue
        elif operation in ("add", "duplicate") and isinstance(node, list):
            node.append(copy.deepcopy(node[0]) if node and operation == "duplicate" else draw(values()))
            continue
        elif operation == "delete":
            parent, last = _get(obj, path[:-1]), path[-1]
            del parent[last]
            continue
        else:
            new = draw(values())
        if not path:
            obj = new
        else:
            _get(obj, path[:-1])[path[-1]] = new
    return obj


# Every node replaced by each of these, in turn: a value of every JSON type, empty and not.
REPLACEMENTS: list[Any] = [None, 0, -1, 70000, 1.5, True, "", "x", "²", "web\n", [], ["x"], [1], {}, {"x": 1}]


def single_edits(seed: Any) -> Iterator[tuple[str, Any]]:
    """Deterministic, exhaustive one-edit mutants of `seed`: every node replaced by each of
    REPLACEMENTS, and every map key and list item deleted. (description, mutant)"""
    for path in list(paths(seed)):
        if not path:
            continue
        where = "/".join(map(str, path))
        for value in REPLACEMENTS:
            mutant = copy.deepcopy(seed)
            _get(mutant, path[:-1])[path[-1]] = copy.deepcopy(value)
            yield f"{where} = {value!r}", mutant
        mutant = copy.deepcopy(seed)
        del _get(mutant, path[:-1])[path[-1]]
        yield f"{where} deleted", mutant


def crashes_of_single_edits(seeds: Sequence[Any], check: Callable[[Any], None]) -> list[str]:
    """Run `check` (which lets only the allowed error through, after checking its message) on every
    single edit of every seed; the crashes, one line per distinct exception type and place."""
    found: dict[tuple[str, str], str] = {}
    for seed in seeds:
        for edit, mutant in single_edits(seed):
            try:
                check(mutant)
            except Exception as exc:
                frame = traceback.extract_tb(exc.__traceback__)[-1]
                place = f"{Path_(frame.filename).name}:{frame.lineno}"
                found.setdefault((type(exc).__name__, place), f"{edit}: {type(exc).__name__} at {place}: {exc}")
    return sorted(found.values())


def identity(obj: Any) -> list[str]:
    """What an error about `obj` must name: its kind and name, when they are readable strings."""
    if not isinstance(obj, dict):
        return []
    named = []
    kind, metadata = obj.get("kind"), obj.get("metadata")
    if isinstance(kind, str) and kind:
        named.append(kind)
    if isinstance(metadata, dict) and isinstance(metadata.get("name"), str) and metadata["name"]:
        named.append(metadata["name"])
    return named


_FIELD = re.compile(r"field ['\"][^'\"]*['\"]|apiVersion|kind")


def check_error(message: str, obj: Any) -> None:
    """Our error's message names the object and the field (`field 'spec.ports[0].port'`); for
    something that is not an object at all, it says so."""
    if not isinstance(obj, dict):
        assert re.search(r"mapping|object", message), f"the error does not say what is wrong: {message}"
        return
    for part in identity(obj):
        assert part in message, f"the error does not name {part!r}: {message}"
    assert _FIELD.search(message), f"the error names no field: {message}"


def only_raises(parse: Callable[[Any], object], error: type[Exception]) -> Callable[[Any], None]:
    """A check for the fuzzers: `parse` may succeed, or raise `error` naming the object and field."""

    def check(obj: Any) -> None:
        try:
            parse(obj)
        except error as exc:
            check_error(str(exc), obj)

    return check


def fuzz_parser(seeds: Sequence[Any], check: Callable[[Any], None]) -> None:
    """Random mutations of `seeds` (their root kept a mapping) through `check`, FUZZ settings."""

    @FUZZ
    @given(mutated(seeds, keep_root=True))
    def run(obj: Any) -> None:
        check(obj)

    run()
