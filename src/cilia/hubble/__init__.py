"""Hubble's Observer API over gRPC, served by every agent (wire-compatible with upstream Hubble).

proto/ declares what is served (Hubble's packages `flow`, `observer`, `relay`); the Python code
is generated from it at build time into _generated/ (cilia.hubble.codegen); cilia.hubble.pb is
the one place that imports it."""
