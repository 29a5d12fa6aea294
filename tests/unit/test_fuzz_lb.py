"""Mutation fuzz of lb/k8s.py (Service, EndpointSlice), called directly: only ResourceError,
naming the object and the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from mutation import FUZZ, check_error, crashes_of_single_edits, mutated

from cilia.lb.k8s import parse_endpoint_slice, parse_service
from cilia.resources.parse import ResourceError

ROOT = Path(__file__).resolve().parents[2]
SEEDS = [d for path in (ROOT / "tests/unit/fuzz_seeds/resources.yaml", ROOT / "examples/service-echo.yaml")
         for d in yaml.safe_load_all(path.read_text())]
PARSERS = {"Service": parse_service, "EndpointSlice": parse_endpoint_slice}


def checker(kind: str) -> Any:
    def check(obj: Any) -> None:
        try:
            PARSERS[kind](obj)
        except ResourceError as exc:
            check_error(str(exc), obj)

    return check


@pytest.mark.parametrize("kind", sorted(PARSERS))
def test_lb_parser_fails_only_with_resource_error(kind: str) -> None:
    @FUZZ
    @given(mutated([s for s in SEEDS if s["kind"] == kind], keep_root=True))
    def run(obj: Any) -> None:
        checker(kind)(obj)

    run()


@pytest.mark.parametrize("kind", sorted(PARSERS))
def test_lb_parser_every_single_edit(kind: str) -> None:
    assert crashes_of_single_edits([s for s in SEEDS if s["kind"] == kind], checker(kind)) == []
