"""cilia.fqdn.overlap: which toFQDNs selectors one name can match together. Property: the
answer agrees with NameMatcher on every name (a witness matches all; no witness, no name does)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from cilia.fqdn.matchpattern import NameMatcher
from cilia.fqdn.overlap import co_matching_sets, common_name

LABELS = ["a", "b", "ab", "ba", "c-d", "x_1"]
PATTERN_LABELS = [*LABELS, "*", "a*", "*b", "a*b", "**"]


def key(kind: str, labels: list[str], multi: bool) -> str:
    text = ".".join(labels)
    if multi:
        text = "**." + text
    return NameMatcher(kind, text).key  # type: ignore[arg-type]


names = st.lists(st.sampled_from(LABELS), min_size=1, max_size=4).map(lambda ls: ".".join(ls) + ".")
patterns = st.one_of(
    st.builds(lambda ls: key("matchName", ls, False), st.lists(st.sampled_from(LABELS), min_size=1, max_size=3)),
    st.builds(lambda ls, m: key("matchPattern", ls, m), st.lists(st.sampled_from(PATTERN_LABELS), min_size=1,
                                                                   max_size=3), st.booleans()),
    st.just("matchPattern:*"))


@settings(max_examples=1500, deadline=None)
@given(st.lists(patterns, min_size=2, max_size=3), st.lists(names, min_size=1, max_size=20))
def test_overlap_agrees_with_the_matchers(keys: list[str], candidates: list[str]) -> None:
    matchers = [NameMatcher.from_key(k) for k in keys]
    # also names made from the patterns themselves (their stars filled in), which match one at least
    for k in keys:
        value = k.partition(":")[2]
        for fill in ("", "a", "ab", "b"):
            for multi in ("a.", "b.a.", "ab."):
                candidates.append(value.replace("**.", multi, 1).replace("*", fill))
    witness = common_name(keys)
    if witness is not None:
        assert all(m.matches(witness) for m in matchers), (keys, witness)
    else:
        assert not any(all(m.matches(n) for m in matchers) for n in candidates), keys


def test_examples() -> None:
    assert common_name(["matchName:api.example.test.", "matchPattern:api.*.test."]) == "api.example.test."
    assert common_name(["matchName:api.example.test.", "matchPattern:*.cdn.example.test."]) is None
    assert common_name(["matchPattern:a*.test.", "matchPattern:b*.test."]) is None
    assert common_name(["matchPattern:**.example.test.", "matchPattern:*.cdn.example.test."]) is not None
    assert common_name(["matchPattern:*", "matchName:x."]) == "x."


def test_co_matching_sets_grow_from_pairs_and_are_bounded() -> None:
    keys = ["matchName:api.example.test.", "matchPattern:api.*.test.", "matchPattern:**.example.test.",
            "matchPattern:*.cdn.example.test."]
    found = co_matching_sets(keys)
    assert frozenset(keys[:3]) in found
    assert frozenset({keys[0], keys[3]}) not in found and all(len(g) >= 2 for g in found)
    assert len(found) == 5
    assert len(co_matching_sets([f"matchPattern:*{i}.test." for i in range(30)], max_sets=10)) == 10
