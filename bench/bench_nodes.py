"""How fedsweep scales with nodes: start-up, round time against clients a round, driver memory, checkpoints.

    python bench/bench_nodes.py --out nodes.json                 # the default grid below, about 6 minutes
    python bench/bench_nodes.py --runs 1000:10 --rounds 2        # one small run, a smoke check

Each run is `python -m fl_core` with the built-in app on its synthetic set
(`--synthetic-size`, default 200,000 training images), no validation split
(`--val-ratio 0`), `--pool-size P --fraction-train C/P`: C clients of
200,000/P images each train a round (3 local epochs, batch 32, the app's
defaults), central evaluation every round on the 40,000 synthetic test images,
a checkpoint every round. --runs lists P:C pairs; the default is the issue's
100,000-node run at 10, 100 and 1,000 clients a round, and 1,000 and 10,000
nodes at 100 a round (memory per node).

Per run: seconds from the start to round 1's start (the round-1 line's stamp
minus its own `seconds`) and to the exit; the median of rounds 2..N of the
round, its train phase and its central evaluation (metrics.csv); the driver's
peak RSS (psutil, every 0.1 s, the fl_core process alone, not Ray's workers or
object store); the checkpoint's size; and the time to write that checkpoint
once more here (`fl_core.checkpoint.save_checkpoint` of the run's last one).
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import psutil

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH_DIR)
sys.path[:0] = [BENCH_DIR, REPO]
from provenance import versions, write_results  # noqa: E402

DEFAULT_RUNS = ["100000:10", "100000:100", "100000:1000", "1000:100", "10000:100"]


def peak_rss(pid: int, stop: threading.Event, out: list) -> None:
    """Append the process's peak RSS in bytes, polled every 0.1 s until `stop`."""
    peak = 0
    try:
        proc = psutil.Process(pid)
        while not stop.is_set():
            peak = max(peak, proc.memory_info().rss)
            time.sleep(0.1)
    except psutil.NoSuchProcess:
        pass
    out.append(peak)


def run_one(pool: int, cohort: int, args) -> dict:
    """One fl_core run of `pool` nodes, `cohort` trained a round; its figures."""
    from fl_core.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint

    with tempfile.TemporaryDirectory(prefix=f"bench-nodes-{pool}-") as out:
        cmd = [
            sys.executable,
            "-m",
            "fl_core",
            "--dataset",
            "synthetic",
            "--synthetic-size",
            str(args.synthetic_size),
            "--val-ratio",
            "0",
            "--pool-size",
            str(pool),
            "--fraction-train",
            repr(cohort / pool),
            "--min-train-nodes",
            str(cohort),
            "--num-server-rounds",
            str(args.rounds),
            "--seed",
            str(args.seed),
            "--checkpoint-dir",
            out,
        ]
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "RAY_AUTH_MODE": "disabled",
            "PYTHONPATH": os.pathsep.join([REPO, os.path.join(REPO, "apps", "cifar10")]),
        }
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        stop, peak = threading.Event(), []
        poller = threading.Thread(target=peak_rss, args=(proc.pid, stop, peak))
        poller.start()
        first_line, tail = None, []
        for line in proc.stdout:
            tail = (tail + [line])[-40:]
            if first_line is None and line.startswith("round "):
                first_line = time.perf_counter() - start
        proc.wait()
        wall = time.perf_counter() - start
        stop.set()
        poller.join()
        if proc.returncode != 0:
            raise RuntimeError(f"fl_core exited {proc.returncode}:\n{''.join(tail)}")
        with open(os.path.join(out, "metrics.csv")) as f:
            rows = list(csv.DictReader(f))
        path = checkpoint_path(out)
        size = os.path.getsize(path)
        state = load_checkpoint(path)
        with tempfile.TemporaryDirectory(prefix="bench-nodes-ckpt-") as again:
            t = time.perf_counter()
            save_checkpoint(state, again)
            write_s = time.perf_counter() - t

    def steady(key):
        values = [float(r[key]) for r in rows[1:]] or [float(rows[0][key])]
        return statistics.median(values)

    return {
        "pool": pool,
        "cohort": cohort,
        "round1_start_s": first_line - float(rows[0]["seconds"]),
        "wall_s": wall,
        "round_s": steady("seconds"),
        "train_s": steady("train_seconds"),
        "central_s": steady("central_seconds"),
        "round_s_all": [float(r["seconds"]) for r in rows],
        "train_ms_per_client": 1000 * steady("train_seconds") / cohort,
        "driver_peak_rss_mb": peak[0] / 2**20,
        "checkpoint_mb": size / 2**20,
        "checkpoint_write_s": write_s,
    }


def main(argv=None) -> int:
    """Run each P:C pair in turn, print a line each and a table, write the JSON."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", nargs="+", default=DEFAULT_RUNS, help="POOL:CLIENTS_A_ROUND pairs")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--synthetic-size", type=int, default=200_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench_nodes.json")
    args = p.parse_args(argv)
    payload = {"versions": versions(), "settings": vars(args), "runs": []}
    for spec in args.runs:
        pool, cohort = (int(x) for x in spec.split(":"))
        result = run_one(pool, cohort, args)
        payload["runs"].append(result)
        write_results(args.out, payload)
        print(
            f"{pool:>7} nodes {cohort:>5} a round: round 1 starts at {result['round1_start_s']:.1f} s; "
            f"round {result['round_s']:.2f} s (train {result['train_s']:.2f}, central {result['central_s']:.2f}, "
            f"{result['train_ms_per_client']:.1f} ms a client); driver peak RSS {result['driver_peak_rss_mb']:.0f} MB; "
            f"checkpoint {result['checkpoint_mb']:.2f} MB written in {result['checkpoint_write_s']:.3f} s; "
            f"wall {result['wall_s']:.1f} s",
            flush=True,
        )
    print(f"results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
