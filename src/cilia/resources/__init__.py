"""Kubernetes-shaped objects the agent watches: parsing, validation and the embedded store."""

from cilia.resources.parse import ResourceError, parse_documents

__all__ = ["ResourceError", "parse_documents"]
