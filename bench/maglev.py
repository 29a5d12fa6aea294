"""`python -m bench.maglev [--repeats 5]`: how long a Maglev table takes to compute, and how much of it
a backend change moves.

For each table size M (the default, 16381, and 65521) and backend count N (100 and 1,000): the
median over the repeats of building the table for N backends, and, as the baseline in the same run,
of rebuilding it with one backend added, with the share of entries that rebuild changed against the
ideal 1 / (N + 1) (Maglev moves somewhat more than the ideal; less the larger M is against N).
Printed as a table and written to build/bench/maglev-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from cilia.lb.maglev import DEFAULT_SIZE, MaglevBackend, build_table, table_changes

SIZES = (DEFAULT_SIZE, 65521)
BACKENDS = (100, 1000)


def backends(count: int) -> list[MaglevBackend]:
    """Pod-like keys: distinct addresses in 10.0.0.0/8, one port."""
    return [MaglevBackend(i, f"10.{i // 65536}.{i // 256 % 256}.{i % 256}:8080") for i in range(count)]


def timed(members: list[MaglevBackend], size: int, repeats: int) -> tuple[float, list[int]]:
    """Median seconds over `repeats` builds, and the table built."""
    times: list[float] = []
    table: list[int] = []
    for _ in range(repeats):
        start = time.perf_counter()
        table = build_table(members, size)
        times.append(time.perf_counter() - start)
    return statistics.median(times), table


def measure(size: int, count: int, repeats: int) -> dict[str, Any]:
    members = backends(count)
    build_s, before = timed(members, size, repeats)
    # The newcomer is the next address in the same pattern, so it sorts among the others.
    rebuild_s, after = timed([*members, *backends(count + 1)[count:]], size, repeats)
    changed = table_changes(before, after) / size
    ideal = 1 / (count + 1)
    return {"size": size, "backends": count, "build_ms": round(build_s * 1000, 2),
            "rebuild_plus_one_ms": round(rebuild_s * 1000, 2), "changed_share": round(changed, 5),
            "ideal_share": round(ideal, 5), "changed_over_ideal": round(changed / ideal, 2)}


def run(repeats: int) -> dict[str, Any]:
    rows = []
    for size in SIZES:
        for count in BACKENDS:
            row = measure(size, count, repeats)
            rows.append(row)
            print(f"M={size} N={count}: {row['build_ms']} ms", flush=True)
    return {"date": time.strftime("%Y-%m-%d %H:%M"), "repeats": repeats, "statistic": "median", "results": rows}


def render(rows: list[dict[str, Any]]) -> str:
    header = f"{'M':>7} {'N':>6} {'build ms':>9} {'+1 rebuild ms':>14} {'changed':>8} {'ideal':>8} {'x ideal':>8}"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r['size']:>7} {r['backends']:>6} {r['build_ms']:>9.2f} {r['rebuild_plus_one_ms']:>14.2f} "
                     f"{r['changed_share']:>8.2%} {r['ideal_share']:>8.2%} {r['changed_over_ideal']:>8.2f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description="Maglev table computation time and disruption on backend changes")
    parser.add_argument("--repeats", type=int, default=5, help="builds per figure; the median is reported")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    results = run(args.repeats)
    print(render(results["results"]))
    out = Path("build/bench")
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"maglev-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2))
    print(f"written to {path}", flush=True)


if __name__ == "__main__":
    main()
