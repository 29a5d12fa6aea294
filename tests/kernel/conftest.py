"""Shared kernel-test fixtures."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cilia.bpf import ensure_bpffs, remove_pins


@pytest.fixture
def pin_dir() -> Iterator[Path]:
    """A bpffs directory of this test's own (not created yet), removed with all its pins afterwards,
    also when the test or its set-up fails."""
    ensure_bpffs()
    pins = Path(f"/sys/fs/bpf/cilia-test-{uuid.uuid4().hex[:8]}")
    try:
        yield pins
    finally:
        remove_pins(pins)
