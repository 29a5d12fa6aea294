"""Bounded polling: `wait_for` is the one deadline loop for tests, benchmarks and the lab.

It has no dependency beyond the standard library, so the lab's process supervision can use it too.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """A condition did not hold in time. An AssertionError, so pytest reports it as a failed check
    (with the message) rather than as an error in the test's machinery."""


def wait_for(predicate: Callable[[], T], timeout: float, interval: float = 0.1,
             message: str | Callable[[], str] = "condition not met") -> T:
    """Call `predicate` until it returns something truthy and return that; raise WaitTimeout after
    `timeout` seconds.

    The predicate runs at least once, and once more at the deadline, so a slow predicate (a probe
    that itself takes a second) is never cut short of its last chance. `message` may be a callable,
    evaluated only on timeout, to say what was last seen (the last error, what is still missing)."""
    if timeout < 0 or interval < 0:
        raise ValueError(f"wait_for: timeout ({timeout}) and interval ({interval}) must not be negative")
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            text = message() if callable(message) else message
            raise WaitTimeout(f"{text} (waited {timeout:g} s)")
        time.sleep(min(interval, remaining))
