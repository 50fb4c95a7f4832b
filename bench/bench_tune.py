"""What Ray Tune costs a fedsweep sweep: trial packing and per-round overhead.

    python bench/bench_tune.py [--data-dir DIR] [--rounds 5] [--out bench_tune.json]

1. A sweep of 4 trials (local_epochs {1, 2} x lr {0.01, 0.02}) through
   tune_search's own code path on the local machine. Packing efficiency =
   (sum of the trials' own times / trials that fit at once) / sweep wall time:
   1.0 means Tune kept every slot busy; the rest is scheduling, trial start-up
   and idle slots at the end.
2. The first trial's config run by `fl_core.run_app` alone, in-process,
   with the same client workers (K) and server CPUs. Per-round overhead =
   Tune's wall time between two round reports minus fl_core's alone (rounds
   after the first, which holds the workers' start-up). Tune's side includes
   writing each round's checkpoint and `tune.report`.

Synthetic data by default; real CIFAR-10 with --data-dir (a folder holding
cifar-10-batches-py, e.g. made by `python ../shared/datasets/make_cifar10.py DIR`).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
os.chdir(REPO)  # Ray puts the driver's working directory on its workers' path: tune_search must import there

import pandas as pd  # noqa: E402

import tune_search  # noqa: E402
from fl_sweep.report import write_report  # noqa: E402
from fl_sweep.resources import ResourcePlan, client_slots, server_bundle_cpus, trial_bundles  # noqa: E402
from fl_sweep.trainable import share_data  # noqa: E402
from fl_sweep.tuner import execute  # noqa: E402
from fl_core import Callback, load_app_folder, run_app  # noqa: E402
from provenance import write_results  # noqa: E402  (bench/ is on sys.path: scripts run from it)


class RoundClock(Callback):
    """Wall-clock time at the end of every round, plus the loop's own round seconds."""

    def __init__(self) -> None:
        """Start the clock."""
        self.t0 = time.perf_counter()
        self.ends: list[float] = []
        self.seconds: list[float] = []

    def on_round_end(self, event) -> None:
        """Record the round's end."""
        self.ends.append(time.perf_counter() - self.t0)
        self.seconds.append(event.metrics["seconds"])


def plain(value):
    """A pandas/numpy scalar as the Python value Tune gave the trial."""
    return value.item() if hasattr(value, "item") else value


def parse_args(argv=None) -> argparse.Namespace:
    """Command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", help="folder with cifar-10-batches-py: use real CIFAR-10 (default: synthetic data)")
    p.add_argument("--rounds", type=int, default=5, help="rounds per trial (default 5)")
    p.add_argument("--pool-size", type=int, default=10, help="clients (default 10)")
    p.add_argument("--fraction-train", type=float, default=0.2, help="client fraction (default 0.2)")
    p.add_argument("--synthetic-size", type=int, default=10000, help="synthetic training images (default 10000)")
    p.add_argument("--storage-path", help="where the sweep is written (default: a temp folder)")
    p.add_argument("--out", help="write the figures as JSON here")
    return p.parse_args(argv)


def sweep_argv(args: argparse.Namespace, storage: str) -> list[str]:
    """tune_search arguments of the 4-trial sweep."""
    data = (["--set", "dataset=cifar10", "--set", f"data-dir={args.data_dir}"] if args.data_dir
            else ["--set", "dataset=synthetic", "--set", f"synthetic-size={args.synthetic_size}"])
    return data + [
        "--set", f"pool_size={args.pool_size}", "--set", f"fraction-train={args.fraction_train}",
        "--set", f"num-server-rounds={args.rounds}", "--set", "fraction-evaluate=0.2",
        "--grid", "local-epochs=1,2", "--grid", "lr=0.01,0.02",
        "--storage-path", storage, "--name", time.strftime("bench-%Y%m%d-%H%M%S"),
    ]


def run_sweep(args: argparse.Namespace, storage: str) -> dict:
    """Run the sweep through tune_search; returns spec, experiment, timings, shared data and its two tables."""
    targs = tune_search.build_parser().parse_args(sweep_argv(args, storage))
    spec, experiment = tune_search.prepare(targs)
    shared_values = share_data(spec)
    timings = execute(targs, spec, experiment, shared_values)
    write_report(experiment)
    trials = pd.read_csv(os.path.join(experiment, "trials.csv"))
    rounds = pd.read_csv(os.path.join(experiment, "rounds.csv"))
    return {"spec": spec, "experiment": experiment, "timings": timings, "shared": shared_values, "trials": trials,
            "rounds": rounds}


def packing(sweep: dict) -> dict:
    """Sweep wall time against the trials' own times divided by the trials that fit at once."""
    spec, trials = sweep["spec"], sweep["trials"]
    plan = ResourcePlan.of(spec)
    sizes = []
    for _, row in trials.iterrows():
        bundles = trial_bundles({k: plain(row[k]) for k in spec.search}, plan)
        sizes.append(sum(b["CPU"] for b in bundles))
    at_once = max(1, math.floor(spec.cluster_cpus / max(sizes)))
    trial_sum = float(trials["wall_time_s"].sum())
    wall = sweep["timings"]["sweep_s"]
    return {
        "trials": len(trials),
        "cpus_per_trial": max(sizes),
        "trials_at_once": at_once,
        "trial_seconds": [round(float(t), 3) for t in trials["wall_time_s"]],
        "sum_trial_s": trial_sum,
        "ideal_wall_s": trial_sum / at_once,
        "sweep_wall_s": wall,
        "ray_start_s": sweep["timings"]["ray_start_s"],
        "packing_efficiency": trial_sum / at_once / wall,
    }


def run_alone(sweep: dict) -> tuple[dict, RoundClock, float]:
    """The first trial's config through fl_core.run_app in-process; returns (config, clock, total seconds)."""
    import logging

    import ray

    logging.getLogger("flwr").setLevel(logging.WARNING)  # as inside a trial
    spec, trials = sweep["spec"], sweep["trials"]
    first = trials.sort_values("trial_id").iloc[0]
    sampled = {k: plain(first[k]) for k in spec.search}
    plan = ResourcePlan.of(spec)
    settings, run_config = plan.trial(sampled)
    settings.max_parallel_clients = client_slots(settings, run_config, plan)  # same K workers as the trial
    settings.server_cpus = server_bundle_cpus(settings)
    temp_dir = tempfile.mkdtemp(prefix="fsb", dir="/tmp")
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="WARNING", _temp_dir=temp_dir)
    try:
        clock = RoundClock()
        t0 = time.perf_counter()
        fresh = [dataclasses.replace(v, ref=None) for v in sweep["shared"]]  # the sweep's object store is gone
        run_app(load_app_folder(spec.app_dir), run_config, settings, callbacks=[clock], shared_values=fresh)
        total = time.perf_counter() - t0
    finally:
        ray.shutdown()
    return {"trial_id": first["trial_id"], **sampled}, clock, total


def overhead(sweep: dict, sampled: dict, clock: RoundClock, alone_total: float) -> dict:
    """Per-round wall time and round-loop time in Tune vs alone (rounds after the first)."""
    mine = sweep["rounds"][sweep["rounds"]["trial_id"] == sampled["trial_id"]].sort_values("round")
    tune_ends = mine["time_total_s"].tolist()
    tune_walls = [b - a for a, b in zip(tune_ends, tune_ends[1:])]
    alone_walls = [b - a for a, b in zip(clock.ends, clock.ends[1:])]
    tune_wall, alone_wall = statistics.mean(tune_walls), statistics.mean(alone_walls)
    return {
        "config": sampled,
        "tune_round_wall_s": tune_wall,
        "alone_round_wall_s": alone_wall,
        "overhead_per_round_s": tune_wall - alone_wall,
        "overhead_per_round_pct": 100 * (tune_wall - alone_wall) / alone_wall,
        "tune_round_loop_s": statistics.mean(mine["seconds"].tolist()[1:]),
        "alone_round_loop_s": statistics.mean(clock.seconds[1:]),
        "tune_first_round_end_s": tune_ends[0],
        "alone_first_round_end_s": clock.ends[0],
        "tune_trial_s": tune_ends[-1],
        "alone_run_s": alone_total,
    }


def print_tables(pack: dict, over: dict) -> None:
    """The figures as two small tables."""
    print("\nPacking (4-trial sweep)")
    rows = [
        ("CPUs per trial / trials at once", f"{pack['cpus_per_trial']:g} / {pack['trials_at_once']}"),
        ("trials' own times (s)", ", ".join(f"{t:.1f}" for t in pack["trial_seconds"])),
        ("sum of trial times / at once (s)", f"{pack['ideal_wall_s']:.1f}"),
        ("sweep wall time, Tuner.fit (s)", f"{pack['sweep_wall_s']:.1f}"),
        ("packing efficiency", f"{pack['packing_efficiency']:.2f}"),
        ("Ray start (s, not in the wall time)", f"{pack['ray_start_s']:.1f}"),
    ]
    print("\n".join(f"  {name:<38} {value}" for name, value in rows))
    print(f"\nPer-round cost, trial {over['config']} (rounds 2..N)")
    print(f"  {'':<34} {'in Tune':>9} {'fl_core alone':>14} {'difference':>11}")
    for label, t, a in (
        ("wall time per round (s)", over["tune_round_wall_s"], over["alone_round_wall_s"]),
        ("round loop's own time (s)", over["tune_round_loop_s"], over["alone_round_loop_s"]),
        ("end of round 1 from start (s)", over["tune_first_round_end_s"], over["alone_first_round_end_s"]),
        ("whole run (s)", over["tune_trial_s"], over["alone_run_s"]),
    ):
        print(f"  {label:<34} {t:>9.3f} {a:>14.3f} {t - a:>+11.3f}")
    print(f"  per-round overhead of Tune: {over['overhead_per_round_s'] * 1000:.0f} ms "
          f"({over['overhead_per_round_pct']:.1f}% of a round)")


def main(argv=None) -> int:
    """Run both measurements, print them, write JSON if asked."""
    args = parse_args(argv)
    storage = args.storage_path or tempfile.mkdtemp(prefix="fedsweep-bench-")
    sweep = run_sweep(args, storage)
    pack = packing(sweep)
    sampled, clock, alone_total = run_alone(sweep)
    over = overhead(sweep, sampled, clock, alone_total)
    print_tables(pack, over)
    result = {
        "machine": {"cpus": os.cpu_count()},
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "experiment": sweep["experiment"],
        "packing": pack,
        "overhead": over,
    }
    if args.out:
        write_results(args.out, result)
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
