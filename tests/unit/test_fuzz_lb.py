"""Mutation fuzz of lb/k8s.py (Service, EndpointSlice), called directly: only ResourceError,
naming the object and the field."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from mutation import crashes_of_single_edits, fuzz_parser, only_raises

from cilia.lb.k8s import parse_endpoint_slice, parse_service
from cilia.resources.parse import ResourceError

ROOT = Path(__file__).resolve().parents[2]
SEEDS = [d for path in (ROOT / "tests/unit/fuzz_seeds/resources.yaml", ROOT / "examples/service-echo.yaml")
         for d in yaml.safe_load_all(path.read_text())]
PARSERS = {"Service": parse_service, "EndpointSlice": parse_endpoint_slice}


def checker(kind: str) -> Callable[[Any], None]:
    return only_raises(PARSERS[kind], ResourceError)


def seeds_of(kind: str) -> list[Any]:
    return [s for s in SEEDS if s["kind"] == kind]


@pytest.mark.parametrize("kind", sorted(PARSERS))
def test_lb_parser_fails_only_with_resource_error(kind: str) -> None:
    fuzz_parser(seeds_of(kind), checker(kind))


@pytest.mark.parametrize("kind", sorted(PARSERS))
def test_lb_parser_every_single_edit(kind: str) -> None:
    assert crashes_of_single_edits(seeds_of(kind), checker(kind)) == []
