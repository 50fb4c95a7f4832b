"""What Ray Tune costs a fedsweep sweep: trial packing and per-round overhead.

    python bench/bench_tune.py [--data-dir DIR] [--rounds 8] [--out bench_tune.json]

A sweep of 4 trials (local-epochs {1, 2} x lr {0.01, 0.02}) through tune_search's own code path; packing
efficiency = (sum of the trials' own times / trials that fit at once) / sweep wall time. Then the first trial's
config through `fl_core.run_app` alone with the same workers; per-round overhead = the trial's wall time between
round reports minus the run's alone, over rounds 2..N-1 (round 1 holds start-up, the last report waits for the
all-node evaluation). The trial also times `tune.report` and the checkpoint write where they run (a wrapped trial
function). Synthetic data by default; CIFAR-10 with --data-dir.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import resource
import statistics
import sys
import tempfile
import time

from common import PHASES, REPO, write_results

os.chdir(REPO)  # Ray puts the driver's working directory on its workers' path: tune_search must import there

import pandas as pd  # noqa: E402

from fl_core import Callback, load_app_folder, run_app  # noqa: E402
from fl_sweep import trainable  # noqa: E402
from fl_sweep.cli import build_parser, prepare  # noqa: E402
from fl_sweep.report import write_report  # noqa: E402
from fl_sweep.resources import client_slots, server_bundle_cpus, trial_bundles  # noqa: E402
from fl_sweep.trainable import share_data  # noqa: E402
from fl_sweep.tuner import execute  # noqa: E402


class RoundClock(Callback):
    """Wall-clock time at the end of every round, plus the loop's own round seconds."""

    def __init__(self) -> None:
        """Start the clock."""
        self.t0 = time.perf_counter()
        self.ends: list[float] = []
        self.seconds: list[float] = []
        self.phases: list[dict] = []

    def on_round_end(self, event) -> None:
        """Record the round's end."""
        self.ends.append(time.perf_counter() - self.t0)
        self.seconds.append(event.metrics["seconds"])
        self.phases.append({k: event.metrics[k] for k in PHASES})


def plain(value):
    """A pandas/numpy scalar as the Python value Tune gave the trial."""
    return value.item() if hasattr(value, "item") else value


def parse_args(argv=None) -> argparse.Namespace:
    """Command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", help="folder with cifar-10-batches-py: use real CIFAR-10 (default: synthetic data)")
    p.add_argument("--rounds", type=int, default=8, help="rounds per trial (default 8)")
    p.add_argument("--pool-size", type=int, default=10, help="clients (default 10)")
    p.add_argument("--fraction-train", type=float, default=0.2, help="client fraction (default 0.2)")
    p.add_argument("--synthetic-size", type=int, default=10000, help="synthetic training images (default 10000)")
    p.add_argument("--checkpoint-every", type=int, default=1, help="tune_search's --checkpoint-every (default 1)")
    p.add_argument(
        "--snapshot-s", help="TUNE_GLOBAL_CHECKPOINT_S, Tune's experiment snapshot period (default: tune_search's own)"
    )
    p.add_argument("--storage-path", help="where the sweep is written (default: a temp folder)")
    p.add_argument("--out", help="write the figures as JSON here")
    return p.parse_args(argv)


def sweep_argv(args: argparse.Namespace, storage: str) -> list[str]:
    """tune_search arguments of the 4-trial sweep."""
    synthetic = {"dataset": "synthetic", "synthetic-size": args.synthetic_size}
    sets = {
        **({"dataset": "cifar10", "data-dir": args.data_dir} if args.data_dir else synthetic),
        "pool_size": args.pool_size,
        "fraction-train": args.fraction_train,
        "num-server-rounds": args.rounds,
        "fraction-evaluate": 0.2,
    }
    return [x for k, v in sets.items() for x in ("--set", f"{k}={v}")] + [
        *("--grid", "local-epochs=1,2", "--grid", "lr=0.01,0.02"),
        *("--checkpoint-every", str(args.checkpoint_every), "--storage-path", storage),
        *("--name", time.strftime("bench-%Y%m%d-%H%M%S")),
    ]


def timed_trial(log_path: str):
    """fedsweep's trial function with `tune.report` and `save_checkpoint` timed inside the trial."""

    def fedsweep_trial(config: dict, **parameters) -> None:
        """Run the original (this process never saw the patch) with both calls wrapped."""
        from ray import tune

        import fl_core
        from fl_sweep.trainable import fedsweep_trial as original

        report, save = tune.report, fl_core.save_checkpoint
        trial_id = tune.get_context().get_trial_id()
        saved = []

        def timed_save(state, directory):
            t0 = time.perf_counter()
            save(state, directory)
            saved.append(time.perf_counter() - t0)

        def timed_report(metrics, *args, **kwargs):
            t0 = time.perf_counter()
            report(metrics, *args, **kwargs)
            with open(log_path, "a") as f:
                f.write(
                    f"{trial_id},{metrics['round']},{t0},{time.perf_counter() - t0},{saved.pop() if saved else 0.0}\n"
                )

        tune.report, fl_core.save_checkpoint = timed_report, timed_save
        try:
            original(config, **parameters)
        finally:
            tune.report, fl_core.save_checkpoint = report, save

    return fedsweep_trial


def run_sweep(args: argparse.Namespace, storage: str) -> dict:
    """Run the sweep through tune_search; returns spec, experiment, timings, shared data, its two tables and the
    trials' own report/checkpoint times."""
    if args.snapshot_s:
        os.environ["TUNE_GLOBAL_CHECKPOINT_S"] = args.snapshot_s
    log_path = os.path.join(storage, "report_times.csv")
    trainable.fedsweep_trial = timed_trial(log_path)
    targs = build_parser().parse_args(sweep_argv(args, storage))
    spec, experiment = prepare(targs)
    shared_values = share_data(spec)
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    timings = execute(targs, spec, experiment, shared_values)
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    # The driver's own CPU (Tune's controller, loggers, snapshots; Ray's start included) competes with the trials.
    timings["driver_cpu_s"] = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    write_report(experiment)
    trials = pd.read_csv(os.path.join(experiment, "trials.csv"))
    rounds = pd.read_csv(os.path.join(experiment, "rounds.csv"))
    reports = pd.read_csv(log_path, names=["trial_id", "round", "t", "report_s", "checkpoint_s"])
    return {
        "spec": spec,
        "experiment": experiment,
        "timings": timings,
        "shared": shared_values,
        "trials": trials,
        "rounds": rounds,
        "reports": reports,
    }


def packing(sweep: dict) -> dict:
    """Sweep wall time against the trials' own times divided by the trials that fit at once."""
    spec, trials = sweep["spec"], sweep["trials"]
    plan = spec.plan()
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
        "driver_cpu_s": sweep["timings"]["driver_cpu_s"],
        "driver_cpu_share": sweep["timings"]["driver_cpu_s"] / wall,  # cores the driver kept busy, on average
    }


def run_alone(sweep: dict) -> tuple[dict, RoundClock, float]:
    """The first trial's config through fl_core.run_app in-process; returns (config, clock, total seconds)."""
    import logging

    import ray

    logging.getLogger("flwr").setLevel(logging.WARNING)  # as inside a trial
    spec, trials = sweep["spec"], sweep["trials"]
    first = trials.sort_values("trial_id").iloc[0]
    sampled = {k: plain(first[k]) for k in spec.search}
    plan = spec.plan()
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
    """Per-round wall time and round-loop time in Tune vs alone (rounds 2..N-1), and what reporting costs a trial."""
    mine = sweep["rounds"][sweep["rounds"]["trial_id"] == sampled["trial_id"]].sort_values("round")
    # Wall clock in the trial at each report (Tune's time_total_s leaves out time spent blocked in tune.report).
    timed = sweep["reports"][sweep["reports"]["trial_id"] == sampled["trial_id"]].sort_values("round")
    tune_ends = (timed["t"] - timed["t"].iloc[0] + mine["time_total_s"].iloc[0]).tolist()
    # Deltas ending at rounds 2..N-1 (the last report also waits for the all-node evaluation).
    tune_walls = [b - a for a, b in zip(tune_ends, tune_ends[1:])][:-1]
    alone_walls = [b - a for a, b in zip(clock.ends, clock.ends[1:])][:-1]
    tune_wall, alone_wall = statistics.mean(tune_walls), statistics.mean(alone_walls)
    reports = sweep["reports"]
    middle = reports[(reports["round"] > 1) & (reports["round"] < reports["round"].max())]
    return {
        "config": sampled,
        "rounds_compared": f"2..{len(tune_ends) - 1}",
        "tune_round_wall_s": tune_wall,
        "alone_round_wall_s": alone_wall,
        "overhead_per_round_s": tune_wall - alone_wall,
        "overhead_per_round_pct": 100 * (tune_wall - alone_wall) / alone_wall,
        "tune_round_loop_s": statistics.mean(mine["seconds"].tolist()[1:-1]),
        "alone_round_loop_s": statistics.mean(clock.seconds[1:-1]),
        **{f"tune_{k}": statistics.mean(mine[k].tolist()[1:-1]) for k in PHASES},
        **{f"alone_{k}": statistics.mean(p[k] for p in clock.phases[1:-1]) for k in PHASES},
        # Inside every trial, rounds 2..N-1: the two calls a round adds in Tune, measured where they run.
        "report_s_per_round": float(middle["report_s"].mean()),
        "checkpoint_write_s_per_round": float(middle["checkpoint_s"].mean()),
        "reporting_pct_of_round": 100 * float((middle["report_s"] + middle["checkpoint_s"]).mean()) / alone_wall,
        "last_round_wall_s": tune_ends[-1] - tune_ends[-2],
        "tune_first_round_end_s": tune_ends[0],
        "alone_first_round_end_s": clock.ends[0],
        "tune_trial_s": tune_ends[-1],
        "alone_run_s": alone_total,
    }


def print_tables(pack: dict, over: dict) -> None:
    """The figures: packing, then the per-round cost in Tune and alone, then what reporting costs inside a trial."""
    print("\nPacking (4-trial sweep)\n" + pd.Series(pack).to_string())
    rows = ["round_wall_s", "round_loop_s", *PHASES]
    table = pd.DataFrame({"in Tune": [over[f"tune_{k}"] for k in rows], "alone": [over[f"alone_{k}"] for k in rows]})
    table["difference"] = table["in Tune"] - table["alone"]
    print(f"\nPer round, trial {over['config']}, rounds {over['rounds_compared']} (seconds)")
    print(table.set_axis(rows).to_string(float_format=lambda x: f"{x:.3f}"))
    print(
        f"Tune's per-round overhead {over['overhead_per_round_s'] * 1000:.0f} ms "
        f"({over['overhead_per_round_pct']:.1f}%); inside the trials, a round: "
        f"tune.report {over['report_s_per_round'] * 1000:.1f} ms, checkpoint write "
        f"{over['checkpoint_write_s_per_round'] * 1000:.1f} ms ({over['reporting_pct_of_round']:.1f}% of it); "
        f"the last report {over['last_round_wall_s']:.2f} s after the one before (the all-node evaluation)"
    )


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
