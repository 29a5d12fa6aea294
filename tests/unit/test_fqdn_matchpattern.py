"""matchName / matchPattern as Cilium 1.19 defines them (cilia.fqdn.matchpattern)."""

from __future__ import annotations

import pytest

from cilia.fqdn.matchpattern import NameMatcher, check_name, check_pattern, fqdn


@pytest.mark.parametrize(("pattern", "name", "matches"), [
    ("*.cdn.example.test", "img.cdn.example.test", True),
    ("*.cdn.example.test", "img.cdn.example.test.", True),
    ("*.cdn.example.test", "IMG.CDN.Example.Test", True),  # case-insensitive
    ("*.cdn.example.test", ".cdn.example.test", True),  # `*` is zero or more characters
    ("*.cdn.example.test", "cdn.example.test", False),
    ("*.cdn.example.test", "a.b.cdn.example.test", False),  # one label only
    ("*.cdn.example.test", "img.cdn.example.test.evil", False),  # anchored
    ("*.cdn.example.test", "imgXcdn.example.test", False),  # the dot is literal
    ("api-*.example.test", "api-v2.example.test", True),
    ("api-*.example.test", "api-.example.test", True),
    ("api-*.example.test", "api.example.test", False),
    ("a*b.example.test", "axxb.example.test", True),
    ("a*b.example.test", "ax.xb.example.test", False),
    ("**.example.test", "a.example.test", True),  # multi-level prefix
    ("**.example.test", "a.b.c.example.test", True),
    ("**.example.test", "example.test", False),
    ("***.example.test", "a.b.example.test", True),  # three stars are two
    ("*", "anything.at.all", True),
    ("*", ".", True),
    ("**.", "a.b", True),
    ("*", "bad name", False),
    ("api.example.test", "api.example.test", True),  # no wildcard: exact
    ("api.example.test", "apixexample.test", False),
])
def test_match_pattern(pattern: str, name: str, matches: bool) -> None:
    assert NameMatcher("matchPattern", pattern).matches(name) is matches


@pytest.mark.parametrize(("value", "name", "matches"), [
    ("api.example.test", "api.example.test.", True),
    ("API.example.test.", "api.EXAMPLE.test", True),
    ("api.example.test", "x.api.example.test", False),
    ("api.example.test", "api.example.tes", False),
])
def test_match_name(value: str, name: str, matches: bool) -> None:
    assert NameMatcher("matchName", value).matches(name) is matches


@pytest.mark.parametrize("value", ["exa mple.com", "a/b", "a$b", "*.x", "", "a..b", "ä.test", "x" * 256])
def test_bad_names_are_rejected(value: str) -> None:
    assert check_name(value)


@pytest.mark.parametrize("value", ["a/b", "*.exa$mple.com", "", "x y", "(a|b).test", "a+.test", "x" * 256])
def test_bad_patterns_are_rejected(value: str) -> None:
    assert check_pattern(value)


@pytest.mark.parametrize("value", ["*", "**.", "*.example.test", "api-*.x_y.test", "a.b."])
def test_good_patterns_pass(value: str) -> None:
    assert check_pattern(value) is None


def test_keys_are_canonical_and_round_trip() -> None:
    m = NameMatcher("matchPattern", "*.CDN.example.test")
    assert m.key == "matchPattern:*.cdn.example.test."
    assert NameMatcher("matchPattern", "*").key == "matchPattern:*"
    back = NameMatcher.from_key(m.key)
    assert back.matches("a.cdn.example.test") and not back.matches("cdn.example.test")
    assert fqdn(" A.b ") == "a.b."
    with pytest.raises(ValueError):
        NameMatcher.from_key("regex:.*")
