"""Marks by directory: every test under tests/kernel is `kernel`, under tests/e2e `e2e`, so
`-m "not kernel and not e2e"` selects exactly the unit tests (no root, no kernel) and a new module
cannot forget its mark."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import settings

# Property tests judge what an input does, not how fast: a 2-core CI machine running the lab beside
# them can take longer than hypothesis's default 200 ms for one example, which is no bug.
settings.register_profile("cilia", deadline=None)
settings.load_profile("cilia")

HERE = Path(__file__).resolve().parent
MARKS = {"kernel": pytest.mark.kernel, "e2e": pytest.mark.e2e}


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects: it must see these marks
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        try:
            directory = item.path.resolve().relative_to(HERE).parts[0]
        except ValueError:  # not under tests/
            continue
        mark = MARKS.get(directory)
        if mark is not None:
            item.add_marker(mark)
