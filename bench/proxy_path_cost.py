"""`python -m bench.proxy_path_cost --baseline-bpf DIR`: what the L7 proxy's cross-node paths cost
the packets that are *not* the proxy's, per packet, against the objects in DIR (built from the
commit before them) in alternating rounds.

The real programs, run by BPF_PROG_RUN on real packets (as bench.lb_cost), median of batches of
single runs (each run gets the packet afresh):

- `to_netdev`: bpf_host's cil_to_netdev (tc egress of the underlay) on a pod's packet to another
  node that the node's stack routed (unmarked: no service reply, not the proxy's);
- `to_container`: bpf_lxc's cil_to_container on an established packet into a pod (ingress policy
  on, no L7): where the remote client's redirect and the upstream replies are decided;
- `to_overlay`: bpf_overlay's cil_to_overlay (tc egress of cilia_vxlan, new: the baseline has no
  program there) on an unmarked packet: its whole cost, a mark compare.

Each round measures the baseline and the current objects (ABBA order), each in its own process (the objects
are found by CILIA_BPF_DIR); reports each round's ns and the median ratio current/baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from statistics import median

from bench.tools import write_results

RUNS = 3_000
BATCHES = 5
ROUNDS = 4


def _batches(run: Callable[[], int]) -> float:
    return median(median(run() for _ in range(RUNS)) for _ in range(BATCHES))


def measure_here() -> dict[str, float]:
    """In this process, with the objects of $CILIA_BPF_DIR."""
    from cilia.bpf import BpfObject, ensure_bpffs, remove_pins
    from cilia.bpf.errors import BpfError
    from cilia.datapath import default_bpf_dir
    from cilia.datapath.config import EndpointConfig
    from cilia.maps.policy import PolicyMaps
    from cilia.policy.mapstate import ALLOW, DirectionState, MapState, PortKey, PortValue
    from cilia.testing.lbnode import Node
    from cilia.testing.packets import PEER, POD, tcp_packet

    ensure_bpffs()
    pins = Path(f"/sys/fs/bpf/cilia-bench-{uuid.uuid4().hex[:8]}")
    node = Node(pins)
    figures: dict[str, float] = {}
    try:
        netdev = node.host.program("cil_to_netdev")
        out = tcp_packet(POD, "10.200.2.5", 40000, 80, flags=0x18)

        def to_netdev() -> int:
            result = netdev.test_run(out)
            if result.retval != 0:
                raise RuntimeError(f"cil_to_netdev: verdict {result.retval}")
            return result.duration_ns

        figures["to_netdev_ns"] = _batches(to_netdev)
        ingress = DirectionState(lookup=True, enforced=True, classes={2: 1},
                                 ports={(1, PortKey(6, 8080, 16)): PortValue(ALLOW, 1)})
        policy = PolicyMaps(*(node.client.map(n) for n in ("cilia_policy_state_v1", "cilia_policy_sel_v1",
                                                            "cilia_policy_v1")))
        policy.install(2, MapState(ingress, DirectionState()))
        backend = node.backend.program("cil_to_container")
        syn = tcp_packet("10.200.2.5", PEER, 40001, 8080)
        if backend.test_run(syn).retval != 0:
            raise RuntimeError("cil_to_container refused the connection")
        established = tcp_packet("10.200.2.5", PEER, 40001, 8080, flags=0x18)

        def to_container() -> int:
            result = backend.test_run(established)
            if result.retval != 0:
                raise RuntimeError(f"cil_to_container: verdict {result.retval}")
            return result.duration_ns

        figures["to_container_ns"] = _batches(to_container)
        overlay_object = default_bpf_dir() / "bpf_overlay.o"
        obj = BpfObject.open(overlay_object, pin_root=pins, rodata={"CONFIG": EndpointConfig.node(0, 5).pack()},
                             max_entries={"cilia_ct_tcp_v1": 4096, "cilia_ct_any_v1": 4096})
        try:
            try:
                overlay = obj.program("cil_to_overlay")
            except BpfError:
                overlay = None  # the baseline has no program there

            def to_overlay() -> int:
                assert overlay is not None
                result = overlay.test_run(out)
                if result.retval != 0:
                    raise RuntimeError(f"cil_to_overlay: verdict {result.retval}")
                return result.duration_ns

            if overlay is not None:
                figures["to_overlay_ns"] = _batches(to_overlay)
        finally:
            obj.close()
    finally:
        node.close()
        remove_pins(pins)
    return figures


def _measure_in(bpf_dir: Path) -> dict[str, float]:
    env = dict(os.environ, CILIA_BPF_DIR=str(bpf_dir))
    done = subprocess.run([sys.executable, "-m", "bench.proxy_path_cost", "--here"], env=env, check=True,
                          capture_output=True, text=True, timeout=600)
    figures: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description="the L7 proxy's cross-node paths: cost for other packets")
    parser.add_argument("--baseline-bpf", type=Path, help="the objects before the change")
    parser.add_argument("--current-bpf", type=Path, default=Path(__file__).resolve().parents[1] / "build" / "bpf")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--here", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.here:
        print(json.dumps(measure_here()))
        return
    if args.baseline_bpf is None:
        parser.error("--baseline-bpf is required")
    rounds: list[dict[str, dict[str, float]]] = []
    for index in range(args.rounds):
        # ABBA: every other round measures the current objects first, so drift hits both sides alike
        order = ("baseline", "current") if index % 2 == 0 else ("current", "baseline")
        dirs = {"baseline": args.baseline_bpf, "current": args.current_bpf}
        pair = {side: _measure_in(dirs[side]) for side in order}
        rounds.append(pair)
        print(f"round {index + 1}: {pair}", flush=True)
    ratios = {key: round(median(r["current"][key] / r["baseline"][key] for r in rounds), 3)
              for key in rounds[0]["baseline"] if key in rounds[0]["current"]}
    print(f"median ratio current/baseline: {ratios}")
    write_results("proxy-path-cost", {"date": time.strftime("%Y-%m-%d %H:%M"), "runs": RUNS, "batches": BATCHES,
                                      "rounds": rounds, "ratios": ratios})


if __name__ == "__main__":
    main()
