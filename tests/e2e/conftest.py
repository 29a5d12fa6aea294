"""e2e fixtures: a lab from examples/lab-basic.yaml, always torn down (also when a test fails)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cilia.lab.lab import Lab, cleanup_leftovers
from cilia.lab.topology import load_topology

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    cleanup_leftovers()
    running = Lab.up(load_topology(ROOT / "examples/lab-basic.yaml"))
    try:
        yield running
    finally:
        running.down()
