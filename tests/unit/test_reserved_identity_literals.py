"""Reserved identities are named (ReservedIdentity), never written as numbers, where code compares
an identity: `identity == 1` silently breaks when the table in identity.h / identity/reserved.py moves."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "cilia"
CHECKED = ["policy/mapstate.py", "flows/build.py"]
IDENTITY_WORDS = ("identity", "identities")


def _names_identity(node: ast.expr) -> bool:
    text = ast.unparse(node).lower()
    return any(word in text for word in IDENTITY_WORDS) or text.endswith(".id")


def _is_int_literal(node: ast.expr) -> bool:
    if isinstance(node, ast.Constant):
        return isinstance(node.value, int) and not isinstance(node.value, bool) and node.value != 0
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return any(_is_int_literal(e) for e in node.elts)
    return False


def literal_identity_comparisons(source: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(_names_identity(s) for s in sides) and any(_is_int_literal(s) for s in sides):
                found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def test_the_check_sees_a_literal() -> None:
    assert literal_identity_comparisons("x = event.src_identity == 1") == ["line 1: event.src_identity == 1"]
    assert literal_identity_comparisons("y = [i for i in r if i.id == 2]")
    assert not literal_identity_comparisons("z = identity == ReservedIdentity.HOST")


@pytest.mark.parametrize("path", CHECKED)
def test_no_reserved_identity_as_a_number(path: str) -> None:
    assert literal_identity_comparisons((SRC / path).read_text()) == []
