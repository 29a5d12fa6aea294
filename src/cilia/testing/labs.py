"""Running labs for tests and benchmarks: a lab that is always torn down, also when the body fails,
and that starts from a clean machine (the leftovers of a crashed earlier run swept first)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cilia.lab.lab import Lab, cleanup_leftovers
from cilia.lab.topology import Topology, load_topology, parse_topology

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
BASIC = EXAMPLES / "lab-basic.yaml"  # one node, client/web in default, db in team-a, world1


def topology_of(source: Topology | Mapping[str, Any] | Path) -> Topology:
    """A topology from a file, from the dict a topology file holds, or as it is."""
    if isinstance(source, Topology):
        return source
    if isinstance(source, Path):
        return load_topology(source)
    return parse_topology(dict(source))


@contextmanager
def running_lab(source: Topology | Mapping[str, Any] | Path,
                agent_args: list[str] | None = None) -> Iterator[Lab]:
    """`with running_lab(BASIC) as lab:` a lab up for the body's duration."""
    cleanup_leftovers()
    lab = Lab.up(topology_of(source), agent_args=agent_args)
    try:
        yield lab
    finally:
        lab.down()
