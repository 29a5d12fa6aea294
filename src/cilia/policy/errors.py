"""Policy input errors: the message names the object, the field path and what is wrong."""

from __future__ import annotations

from cilia.resources.parse import ResourceError


class PolicyError(ResourceError):
    """A policy object the agent will not take; the previous version stays enforced."""


class PolicyMapOverflow(Exception):
    """An endpoint's policy needs more map entries than it may use: the endpoint fails closed."""
