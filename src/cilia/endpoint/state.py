"""The endpoint state machine: the allowed transitions, checked, with a short history."""

from __future__ import annotations

import time
from collections import deque

from cilia.api.models import EndpointState

S = EndpointState
TRANSITIONS: dict[EndpointState, set[EndpointState]] = {
    S.CREATING: {S.WAITING_FOR_IDENTITY, S.DISCONNECTING},
    S.WAITING_FOR_IDENTITY: {S.REGENERATING, S.DISCONNECTING},
    S.REGENERATING: {S.READY, S.DISCONNECTING, S.WAITING_FOR_IDENTITY},
    S.READY: {S.REGENERATING, S.DISCONNECTING},
    S.DISCONNECTING: {S.DISCONNECTED},
    S.DISCONNECTED: set(),
}


class EndpointStateError(Exception):
    pass


class EndpointStateMachine:
    def __init__(self, endpoint_id: int, state: EndpointState = S.CREATING) -> None:
        self.endpoint_id = endpoint_id
        self.state = state
        self.history: deque[tuple[float, EndpointState, str]] = deque([(time.time(), state, "created")], maxlen=20)

    def transition(self, to: EndpointState, reason: str) -> None:
        if to not in TRANSITIONS[self.state]:
            raise EndpointStateError(
                f"endpoint {self.endpoint_id}: illegal transition {self.state.value} -> {to.value} ({reason})"
            )
        self.state = to
        self.history.append((time.time(), to, reason))
