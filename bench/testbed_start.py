"""Benchmark: warm start of the test bed's control plane until every node is Ready.

Run: python bench/testbed_start.py [--runs N]. Prints per-phase seconds and writes
bench/out/testbed_start.json. The binaries must be built (``kiln dev testbed build``);
the time to build them cold is printed by that command.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from kiln.dev.testbed.binaries import ensure_built
from kiln.dev.testbed.cluster import Cluster


def one_run() -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="kiln-bench-") as state:
        cluster = Cluster(Path(state))
        started = time.monotonic()
        try:
            cluster.start()
            total = time.monotonic() - started
        finally:
            cluster.stop()
    return {"all_nodes_ready_s": total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    ensure_built()
    runs = [one_run() for _ in range(args.runs)]
    times = [r["all_nodes_ready_s"] for r in runs]
    result = {"runs": runs, "median_s": statistics.median(times), "max_s": max(times),
              "goal_s": 10.0}
    print(f"warm start to all nodes Ready: median {result['median_s']:.2f}s, "
          f"max {result['max_s']:.2f}s over {len(runs)} runs (goal < 10 s; "
          f"ratio to goal {result['median_s'] / 10.0:.2f})")
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    (out / "testbed_start.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
