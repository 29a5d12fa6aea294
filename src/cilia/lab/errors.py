"""The lab's one error type: what `cilia lab` prints when it cannot do what was asked."""

from __future__ import annotations


class LabError(Exception):
    pass
