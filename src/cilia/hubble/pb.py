"""The generated Hubble modules, generated first if missing or stale (see cilia.hubble.codegen)."""

from __future__ import annotations

from cilia.hubble import codegen

codegen.ensure()

from cilia.hubble._generated.flow import flow_pb2  # noqa: E402
from cilia.hubble._generated.observer import observer_pb2, observer_pb2_grpc  # noqa: E402
from cilia.hubble._generated.peer import peer_pb2, peer_pb2_grpc  # noqa: E402
from cilia.hubble._generated.relay import relay_pb2  # noqa: E402

__all__ = ["flow_pb2", "observer_pb2", "observer_pb2_grpc", "peer_pb2", "peer_pb2_grpc", "relay_pb2"]
