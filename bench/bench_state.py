"""What per-client state costs under fedsweep: time per client call and driver memory, by size of Context.state.

    python bench/bench_state.py [--sizes 0,62006,1000000,11700000] [--out results/bench_state.json]
    python bench/bench_state.py --smoke

fedsweep keeps every node's `Context.state` in the driver and sends it with each message. The minimal app in
bench/state_app/ keeps N float32 numbers a node and does nothing else. Per call: --call-nodes nodes on one
worker, a round's train time over its calls, median of rounds 2..; `app_s` is the ClientApp's own part. Memory:
--memory-nodes nodes train twice; the state the driver holds, its RSS growth (after, and peak polled every
20 ms) and USS growth, and one checkpoint's write time and size. Sizes over --memory-max-gib skip the memory run.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time

import pandas as pd
import psutil
from common import PeakMemory, start_ray, steady, versions, write_results

import fl_core
from fl_core.checkpoint import CHECKPOINT_FILE, save_checkpoint

APP_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "state_app")
MIB = 2**20


def memory_now() -> tuple[int, int]:
    """This process's (RSS, USS) after a garbage collection, in bytes.

    RSS also counts pages of Ray's shared object store that the process has
    touched; USS is its private memory only.
    """
    gc.collect()
    info = psutil.Process().memory_full_info()
    return info.rss, info.uss


def run_state_app(size: int, nodes: int, rounds: int, max_parallel: int | None) -> fl_core.RunEnd:
    """One run of the state app: `nodes` nodes keeping `size` float32 numbers each, every node every round."""
    app = fl_core.load_app_folder(APP_DIR)
    run_config = fl_core.fuse_run_config(app, {"state-size": size, "num-server-rounds": rounds})
    return fl_core.run_app(app, run_config, fl_core.RunSettings(pool_size=nodes, max_parallel_clients=max_parallel))


def state_bytes(node_states: dict) -> int:
    """Bytes of array data in the nodes' states (what the driver holds for them, headers included)."""
    return sum(
        len(array.data)
        for state in node_states.values()
        for record in state.array_records.values()
        for array in record.values()
    )


def call_cost(size: int, nodes: int, rounds: int) -> dict:
    """Median seconds per client call (and the ClientApp's own part of it) over rounds 2..`rounds`, one worker."""
    end = run_state_app(size, nodes, rounds, max_parallel=1)
    return {
        "call_s": steady([row["train_seconds"] / row["train_clients"] for row in end.history]),
        "app_s": steady([row["train_app_seconds"] for row in end.history]),
        "rounds": [
            {k: row[k] for k in ("round", "train_seconds", "train_clients", "train_app_seconds")} for row in end.history
        ],
    }


def driver_memory(size: int, nodes: int) -> dict:
    """Driver memory once `nodes` nodes hold `size` numbers each, and one checkpoint's cost."""
    before, before_uss = memory_now()
    with PeakMemory(lambda: [psutil.Process()], interval=0.02) as memory:
        end = run_state_app(size, nodes, 2, max_parallel=None)
    after, after_uss = memory_now()
    held = state_bytes(end.state.node_states)
    with tempfile.TemporaryDirectory(prefix="bench-state-") as folder:
        t0 = time.perf_counter()
        save_checkpoint(end.state, folder)
        seconds = time.perf_counter() - t0
        file_bytes = os.path.getsize(os.path.join(folder, CHECKPOINT_FILE))
    return {
        "nodes": nodes,
        "nodes_with_state": len(end.state.node_states),
        "state_mib": held / MIB,
        "rss_growth_mib": (after - before) / MIB,
        "uss_growth_mib": (after_uss - before_uss) / MIB,
        "peak_rss_growth_mib": (max(memory.peak_rss, after) - before) / MIB,
        "checkpoint_s": seconds,
        "checkpoint_mib": file_bytes / MIB,
    }


def main() -> int:
    """Measure every size, print the table and write the results file."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="0,62006,1000000,11700000", help="float32 numbers per node, comma-separated")
    ap.add_argument("--call-nodes", type=int, default=10, help="nodes of the per-call timing runs")
    ap.add_argument("--rounds", type=int, default=4, help="rounds of the per-call timing runs (median of 2..)")
    ap.add_argument("--memory-nodes", type=int, default=100, help="nodes of the driver-memory runs")
    ap.add_argument(
        "--memory-max-gib",
        type=float,
        default=8.0,
        help="skip the memory run of sizes whose states would exceed this (the machine may be shared)",
    )
    ap.add_argument("--smoke", action="store_true", help="sizes 0 and 62006, 4 call nodes, 10 memory nodes, 2 rounds")
    ap.add_argument("--out", default=os.path.join("results", "bench_state.json"))
    args = ap.parse_args()
    if args.smoke:
        args.sizes, args.call_nodes, args.memory_nodes, args.rounds = "0,62006", 4, 10, 2
    sizes = [int(s) for s in args.sizes.split(",")]

    import ray

    start_ray()
    results = {
        "benchmark": "bench_state",
        "versions": versions(),
        "machine": f"{os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB",
        "settings": vars(args),
        "sizes": {},
    }
    for size in sizes:
        entry = {
            "float32_numbers": size,
            "mib_per_node": size * 4 / MIB,
            **call_cost(size, args.call_nodes, args.rounds),
        }
        if size * 4 * args.memory_nodes <= args.memory_max_gib * 2**30:
            entry["memory"] = driver_memory(size, args.memory_nodes)
        else:
            entry["memory"] = None
            print(
                f"size {size:,}: memory run skipped ({args.memory_nodes} nodes would hold "
                f"{size * 4 * args.memory_nodes / 2**30:.1f} GiB > --memory-max-gib {args.memory_max_gib})"
            )
        results["sizes"][str(size)] = entry
        write_results(args.out, results)  # after every size: a run cut short keeps what it measured
    results["load_average_at_end"] = os.getloadavg()
    ray.shutdown()
    write_results(args.out, results)

    table = pd.DataFrame(
        {
            "ms/call": 1e3 * entry["call_s"],
            "in app": 1e3 * entry["app_s"],
            "added by state": 1e3 * (entry["call_s"] - results["sizes"][str(sizes[0])]["call_s"]),
            **(entry["memory"] or {}),
        }
        for entry in results["sizes"].values()
    )
    print(f"\nper call: {args.call_nodes} nodes, 1 worker, rounds 2-{args.rounds}; memory: {args.memory_nodes} nodes")
    print(table.set_index(pd.Index(sizes, name="numbers a node")).to_string(float_format=lambda x: f"{x:.1f}"))
    print(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
