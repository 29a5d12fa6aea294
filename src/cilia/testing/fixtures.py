"""pytest fixtures over cilia.testing, for a conftest to import by name:

    from cilia.testing.fixtures import lab, pin_dir  # noqa: F401  (fixtures)

- `pin_dir`: a bpffs directory of the test's own, removed with its pins afterwards;
- `lab`: the lab of examples/lab-basic.yaml, one per module, torn down after it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cilia.lab.lab import Lab
from cilia.testing.bpf import pin_directory
from cilia.testing.labs import BASIC, running_lab


@pytest.fixture
def pin_dir() -> Iterator[Path]:
    """A bpffs directory of this test's own (not created yet), removed with all its pins afterwards,
    also when the test or its set-up fails."""
    with pin_directory() as pins:
        yield pins


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """examples/lab-basic.yaml, up for one test module, always torn down."""
    with running_lab(BASIC) as running:
        yield running
