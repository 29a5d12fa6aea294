"""Kernel-test fixtures (cilia.testing.fixtures). Every test here is marked `kernel` (tests/conftest.py)."""

from __future__ import annotations

from cilia.testing.fixtures import pin_dir

__all__ = ["pin_dir"]  # a fixture: pytest finds it by this name
