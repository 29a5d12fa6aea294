"""cilia.testing: what the tests and the benchmarks share.

- `wait`: `wait_for`, the one bounded poll loop (also used by the lab);
- `fakes`: in-memory BPF maps for unit tests;
- `packets`: hand-made packets (checksums computed) and a parser that verifies them;
- `lbnode`: a node's service datapath loaded for BPF_PROG_RUN (kernel tests, bench.lb_cost);
- `events`: a ring buffer reader that keeps its records and is always closed;
- `reach`: the reachability oracle (probe matrices through a running lab);
- `labs`: running labs as context managers, and `fixtures`, the pytest fixtures built on them;
- `etcd`: a real etcd (1 or 3 members) for tests that need no lab;
- `cluster`: cluster labs on etcd (topologies, convergence, policy applied once and waited for on
  every node, per-node state to compare, connections that must survive faults).

Only `wait` is imported here: the rest load libbpf or start labs, and are imported by name.
"""

from cilia.testing.wait import WaitTimeout, wait_for

__all__ = ["WaitTimeout", "wait_for"]
