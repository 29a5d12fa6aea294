"""e2e fixtures (cilia.testing.fixtures): `lab`, a lab from examples/lab-basic.yaml per module, always
torn down (also when a test fails). Every test here is marked `e2e` (tests/conftest.py)."""

from __future__ import annotations

from cilia.testing.fixtures import lab

__all__ = ["lab"]  # a fixture: pytest finds it by this name
