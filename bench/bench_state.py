"""What per-client state costs under fedsweep: time per client call and driver memory, by size of Context.state.

    python bench/bench_state.py [--sizes 0,62006,1000000,11700000] [--call-nodes 10] [--rounds 4]
                                [--memory-nodes 100] [--out results/bench_state.json]

fedsweep keeps every node's `Context.state` in the driver and sends it with
each message, so a node's state follows it to any worker and every checkpoint
holds it (fl_core/grid.py). This measures that design's price with the minimal
app in bench/state_app/, whose nodes keep N float32 numbers in their state (0,
Flower's 62k-parameter CIFAR CNN, 1M, and ResNet-18's 11.7M by default) and do
nothing else:

* time per client call: `--call-nodes` nodes, every node trains every round,
  one worker (calls run one after another, so a round's train time divided by
  its calls is the cost of one call); median over rounds 2.. (round 1 starts
  the worker, and nodes have no state to send yet). `app_s` is the part spent
  inside the ClientApp reading, changing and storing the state (ArrayRecord <->
  numpy); the rest is the engine: Ray transfers of message, Context and reply.
* driver memory: `--memory-nodes` nodes each train twice (2 rounds, the pool's
  default workers); the bytes of state the driver holds afterwards, the
  driver's RSS growth (after the run, and at its peak, polled every 20 ms)
  and USS growth (private memory: RSS without object-store pages) over its
  memory before, and the time and size of writing one checkpoint of it.
  Sizes whose states would exceed `--memory-max-gib` are left out.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import statistics
import sys
import tempfile
import threading
import time

import psutil

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from provenance import versions, write_results  # noqa: E402  (bench/ is on sys.path: scripts run from it)

import fl_core  # noqa: E402
from fl_core.checkpoint import CHECKPOINT_FILE, save_checkpoint  # noqa: E402

APP_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "state_app")
MIB = 2**20


class DriverMemory:
    """Polls this process's RSS in a thread; `peak` is the largest seen."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval, self.peak = interval, 0
        self._process = psutil.Process()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        """Sample until stopped."""
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> "DriverMemory":
        """Start polling."""
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        """Stop polling."""
        self._stop.set()
        self._thread.join()


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
    steady = end.history[1:] or end.history
    per_call = [row["train_seconds"] / row["train_clients"] for row in steady]
    app = [row["train_app_seconds"] for row in steady]
    return {
        "call_s": statistics.median(per_call),
        "app_s": statistics.median(app),
        "rounds": [
            {k: row[k] for k in ("round", "train_seconds", "train_clients", "train_app_seconds")} for row in end.history
        ],
    }


def driver_memory(size: int, nodes: int) -> dict:
    """Driver memory once `nodes` nodes hold `size` numbers each, and one checkpoint's cost."""
    before, before_uss = memory_now()
    with DriverMemory() as memory:
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
        "peak_rss_growth_mib": (max(memory.peak, after) - before) / MIB,
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
    ap.add_argument("--out", default=os.path.join("results", "bench_state.json"))
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="WARNING")
    logging.getLogger("flwr").setLevel(logging.ERROR)
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

    base = results["sizes"].get("0", {}).get("call_s")
    print(
        f"\nper client call: {args.call_nodes} nodes, 1 worker, median of rounds 2-{args.rounds}; "
        f"memory: {args.memory_nodes} nodes, 2 rounds"
    )
    print(
        f"{'numbers/node':>13} {'MiB/node':>9} | {'ms/call':>8} {'in app':>7} {'vs 0':>7} | "
        f"{'state MiB':>9} {'USS +MiB':>9} {'RSS +MiB':>9} {'peak RSS':>9} {'ckpt s':>7} {'ckpt MiB':>8}"
    )
    for size, entry in results["sizes"].items():
        extra = f"{(entry['call_s'] - base) * 1e3:>7.1f}" if base is not None else f"{'':>7}"
        mem = entry["memory"]
        memory = (
            f"{mem['state_mib']:>9.1f} {mem['uss_growth_mib']:>9.1f} {mem['rss_growth_mib']:>9.1f} "
            f"{mem['peak_rss_growth_mib']:>9.1f} {mem['checkpoint_s']:>7.2f} {mem['checkpoint_mib']:>8.1f}"
            if mem
            else f"{'skipped':>9}"
        )
        print(
            f"{int(size):>13,} {entry['mib_per_node']:>9.2f} | {entry['call_s'] * 1e3:>8.1f} "
            f"{entry['app_s'] * 1e3:>7.1f} {extra} | {memory}"
        )
    print(
        f"load average at the end: {', '.join(f'{x:.1f}' for x in results['load_average_at_end'])}; "
        f"results written to {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
