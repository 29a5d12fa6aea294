"""The endpoint state machine: the states, the allowed transitions (checked), a short history.

`creating -> waiting-for-identity -> regenerating -> ready | not-ready`, back to `regenerating`
whenever a change reaches the endpoint's policy, and `disconnecting -> disconnected` on delete
from any state. `not-ready` carries the reason (the policy could not be computed or installed;
the datapath then drops the endpoint's traffic).
"""

from __future__ import annotations

import time
from collections import deque
from enum import StrEnum


class EndpointState(StrEnum):
    CREATING = "creating"
    WAITING_FOR_IDENTITY = "waiting-for-identity"
    REGENERATING = "regenerating"
    READY = "ready"
    NOT_READY = "not-ready"
    DISCONNECTING = "disconnecting"
    DISCONNECTED = "disconnected"


S = EndpointState
TRANSITIONS: dict[EndpointState, frozenset[EndpointState]] = {
    S.CREATING: frozenset({S.WAITING_FOR_IDENTITY, S.DISCONNECTING}),
    S.WAITING_FOR_IDENTITY: frozenset({S.REGENERATING, S.DISCONNECTING}),
    S.REGENERATING: frozenset({S.READY, S.NOT_READY, S.DISCONNECTING, S.WAITING_FOR_IDENTITY}),
    S.READY: frozenset({S.REGENERATING, S.DISCONNECTING}),
    S.NOT_READY: frozenset({S.REGENERATING, S.DISCONNECTING}),
    S.DISCONNECTING: frozenset({S.DISCONNECTED}),
    S.DISCONNECTED: frozenset(),
}


class EndpointStateError(Exception):
    pass


class EndpointStateMachine:
    """Not thread-safe on its own: the endpoint registry serialises every transition."""

    def __init__(self, endpoint_id: int, state: EndpointState = S.CREATING) -> None:
        self.endpoint_id = endpoint_id
        self.state = state
        self.reason = "created"
        self.history: deque[tuple[float, EndpointState, str]] = deque([(time.time(), state, "created")], maxlen=20)

    def transition(self, to: EndpointState, reason: str) -> None:
        if to not in TRANSITIONS[self.state]:
            raise EndpointStateError(
                f"endpoint {self.endpoint_id}: illegal transition {self.state.value} -> {to.value} ({reason})"
            )
        self.state = to
        self.reason = reason
        self.history.append((time.time(), to, reason))

    def states(self) -> list[EndpointState]:
        """The states passed through, oldest first (as far as the history reaches)."""
        return [state for _at, state, _reason in self.history]
