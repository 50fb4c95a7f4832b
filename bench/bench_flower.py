"""fedsweep against Flower's own simulation engine, on the same federated job.

Runs the job twice, each in a fresh subprocess, and compares them:

* fedsweep: `fl_core.run_simulation` (Flower clients on fedsweep's Ray worker
  actors, tensors sliced into batches, no DataLoader);
* Flower: the way Flower 1.42's templates write it (bench/flower_app.py): a
  `ClientApp`/`ServerApp` with the Message-API `FedAvg`, run by
  `flwr.simulation.run_simulation` on its Ray backend, one CPU and no GPU per
  client, a torchvision `DataLoader` with per-sample `ToTensor`/`Normalize`.

Both sides use the same `FederatedData` (`fl_core.load_federated_data`), the
same partitions, clients per round, local epochs, batch size, learning rate and
momentum, the same initial weights, Ray clusters of the same size, federated
evaluation of the same share of clients and central evaluation on the whole
test set after every round. Client sampling and shuffling differ (each side
draws its own), so the accuracy curves agree only up to that noise: with
`--seeds` the job runs once per seed on each side, and the curves are compared
as means over the seeds, next to their spread from seed to seed.

Seconds per round: fedsweep's `RoundEnd.metrics["seconds"]`; Flower's time
between consecutive calls of the ServerApp's `evaluate_fn` (one per round, after
aggregation and federated evaluation). Round 1 includes start-up work on both
sides (Flower also starts its actors then), so the headline ratio uses rounds
2..N; the all-rounds ratio is printed too.

    python bench/bench_flower.py --data-dir /work/data-cifar            # CIFAR-10, 10 rounds
    python bench/bench_flower.py --data-dir /work/data-cifar --local-epochs 3 --lr 0.05 --seeds 0 1 2 3
    python bench/bench_flower.py --dataset synthetic --rounds 2          # smoke run
    python bench/bench_flower.py --flower-python /work/flwr-sim-venv/bin/python ...

`--flower-python` names the interpreter of the Flower side (default: this one);
use it when Flower's engine needs another environment, e.g. one with
`flwr[simulation]` and its pinned Ray.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
from provenance import git_commit, versions, write_results  # noqa: E402  (bench/ is on sys.path: scripts run from it)

SIDES = ("fedsweep", "flower")


# ---------------------------------------------------------------------------
# Command line


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Benchmark options; the job's defaults are fedsweep's (SimConfig's)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", choices=("cifar10", "synthetic"), default="cifar10")
    p.add_argument("--data-dir", help="folder holding cifar-10-batches-py (for --dataset cifar10)")
    p.add_argument("--synthetic-size", type=int, default=6000, help="training images of --dataset synthetic")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--pool-size", type=int, default=100)
    p.add_argument("--fraction-fit", type=float, default=0.1)
    p.add_argument("--fraction-evaluate", type=float, default=0.1, help="share of clients validated each round")
    p.add_argument("--local-epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--num-client-cpus", type=float, default=1.0)
    p.add_argument("--num-cpus", type=int, default=os.cpu_count(), help="CPUs of each side's local Ray cluster")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="run the job once per seed on each side")
    p.add_argument("--out", default="results.json", help="where to write both sides' results and the comparison")
    p.add_argument("--flower-python", default=sys.executable, help="Python interpreter for the Flower side")
    p.add_argument("--only", choices=SIDES, help="run one side only (no comparison)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds allowed for each side")
    p.add_argument("--verbose", action="store_true", help="keep Flower's and Ray's info logging")
    # Internal: run one side in this process and write its results to --side-out.
    p.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    p.add_argument("--side-out", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def sim_config(args: argparse.Namespace):
    """The job as a fedsweep SimConfig (validated)."""
    from fl_core import SimConfig

    return SimConfig(
        dataset=args.dataset,
        data_dir=args.data_dir,
        synthetic_size=args.synthetic_size,
        pool_size=args.pool_size,
        num_rounds=args.rounds,
        fraction_fit=args.fraction_fit,
        fraction_evaluate=args.fraction_evaluate,
        local_epochs=args.local_epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        momentum=args.momentum,
        num_client_cpus=args.num_client_cpus,
        num_client_gpus=0.0,
        seed=args.seeds[0],
    ).validate()


def side_argv(args: argparse.Namespace, side: str, seed: int, out_path: str) -> list[str]:
    """Command-line arguments that make a child process run one side of the job with one seed."""
    argv = [
        "--dataset", args.dataset, "--synthetic-size", str(args.synthetic_size), "--rounds", str(args.rounds),
        "--pool-size", str(args.pool_size), "--fraction-fit", str(args.fraction_fit),
        "--fraction-evaluate", str(args.fraction_evaluate), "--local-epochs", str(args.local_epochs),
        "--batch-size", str(args.batch_size), "--lr", str(args.lr), "--momentum", str(args.momentum),
        "--num-client-cpus", str(args.num_client_cpus), "--num-cpus", str(args.num_cpus), "--seeds", str(seed),
        "--side", side, "--side-out", out_path,
    ]
    if args.data_dir:
        argv += ["--data-dir", os.path.abspath(args.data_dir)]
    if args.verbose:
        argv.append("--verbose")
    return argv


# ---------------------------------------------------------------------------
# One side, in this process


def quiet_logs(verbose: bool) -> None:
    """Keep Flower's per-round INFO lines out of the benchmark's output unless asked for."""
    if not verbose:
        logging.getLogger("flwr").setLevel(logging.WARNING)


def start_ray(num_cpus: int, verbose: bool) -> None:
    """A local Ray cluster with `num_cpus` CPUs and no GPU."""
    import ray

    ray.init(
        num_cpus=num_cpus,
        num_gpus=0,
        include_dashboard=False,
        logging_level=logging.INFO if verbose else logging.WARNING,
    )


def run_fedsweep_side(args: argparse.Namespace) -> dict:
    """The job through fl_core.run_simulation; per-round metrics from its callbacks."""
    import ray

    from fl_core import Callback, load_federated_data, run_simulation

    class Collect(Callback):
        """Keeps each round's metrics."""

        def __init__(self) -> None:
            """Start with no rounds."""
            self.rounds: list[dict] = []

        def on_round_end(self, event) -> None:
            """Store the round's metrics."""
            self.rounds.append(dict(event.metrics))

    quiet_logs(args.verbose)
    config = sim_config(args)
    t_data = time.perf_counter()
    data = load_federated_data(config)
    data_seconds = time.perf_counter() - t_data
    start_ray(args.num_cpus, args.verbose)
    collect = Collect()
    try:
        t0 = time.perf_counter()
        end = run_simulation(config, data=data, callbacks=[collect])
        total = time.perf_counter() - t0
    finally:
        ray.shutdown()
    keys = ("round", "seconds", "central_accuracy", "central_loss", "train_samples", "samples_per_s")
    return {
        "side": "fedsweep",
        "rounds": [{k: m[k] for k in keys} for m in collect.rounds],
        "data_seconds": data_seconds,
        "run_seconds": total,
        "run_seconds_note": "run_simulation call: pool start, rounds, final all-client evaluation",
        "final_all_client_val_accuracy": end.client_evaluation.get("mean"),
        "versions": versions(),
    }


def run_flower_side(args: argparse.Namespace) -> dict:
    """The job through Flower's run_simulation with bench/flower_app.py's ClientApp and ServerApp."""
    import random

    import flower_app
    import ray
    from flwr.simulation import run_simulation

    from fl_core import load_federated_data

    quiet_logs(args.verbose)
    config = sim_config(args)
    t_data = time.perf_counter()
    data = load_federated_data(config)
    data_seconds = time.perf_counter() - t_data
    random.seed(config.seed)  # Flower samples nodes with the global `random`
    start_ray(args.num_cpus, args.verbose)  # Flower's backend uses an initialised Ray as it is
    data_ref = ray.put(data)
    recorder = flower_app.RoundRecorder()
    settings = config.to_dict()
    t0 = time.perf_counter()
    run_simulation(
        server_app=flower_app.make_server_app(data, settings, recorder),
        client_app=flower_app.make_client_app(data_ref, config.model),
        num_supernodes=config.pool_size,
        backend_config={"client_resources": {"num_cpus": config.num_client_cpus, "num_gpus": 0.0}},
        verbose_logging=args.verbose,
    )
    total = time.perf_counter() - t0
    if ray.is_initialized():  # Flower's backend shuts Ray down itself
        ray.shutdown()
    if len(recorder.rounds) != config.num_rounds:
        raise RuntimeError(f"Flower finished {len(recorder.rounds)} of {config.num_rounds} rounds: see the log above")
    return {
        "side": "flower",
        "rounds": recorder.rounds,
        "data_seconds": data_seconds,
        "run_seconds": total,
        "run_seconds_note": "run_simulation call: engine and actor start, initial evaluation, rounds, shutdown",
        "serverapp_start_seconds": recorder.start_seconds,
        "versions": versions(),
    }


def run_side_here(args: argparse.Namespace) -> int:
    """Child-process entry: run one side and write its JSON to --side-out."""
    sys.path[:0] = [REPO_ROOT, BENCH_DIR]
    result = run_fedsweep_side(args) if args.side == "fedsweep" else run_flower_side(args)
    with open(args.side_out, "w") as f:
        json.dump(result, f, indent=1)
    return 0


# ---------------------------------------------------------------------------
# Driver: both sides in subprocesses, then the comparison


def child_env() -> dict:
    """Environment of a side's process: the repo and bench/ importable there and in its Ray workers."""
    env = dict(os.environ)
    paths = [REPO_ROOT, BENCH_DIR] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_side_subprocess(python: str, side: str, seed: int, args: argparse.Namespace) -> dict:
    """Run one side with one seed in a fresh `python` process (its output streams through); return its results."""
    with tempfile.TemporaryDirectory(prefix=f"bench-{side}-") as tmp:
        out_path = os.path.join(tmp, "side.json")
        cmd = [python, os.path.abspath(__file__)] + side_argv(args, side, seed, out_path)
        print(f"\n=== {side}, seed {seed}: {' '.join(cmd[:2])} ... (python {python})", flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, check=False, env=child_env(), cwd=REPO_ROOT, timeout=args.timeout)
        wall = time.perf_counter() - t0
        if proc.returncode != 0 or not os.path.exists(out_path):
            raise SystemExit(f"bench_flower: the {side} side failed (exit status {proc.returncode}); see its output above")
        with open(out_path) as f:
            result = json.load(f)
    result["process_seconds"] = wall
    return result


def round_stats(rounds: list[dict]) -> dict:
    """Mean and median seconds per round, over all rounds and over rounds 2..N."""
    secs = [r["seconds"] for r in rounds]
    steady = secs[1:] or secs
    return {
        "mean_s_all": statistics.fmean(secs),
        "median_s_all": statistics.median(secs),
        "mean_s_steady": statistics.fmean(steady),
        "median_s_steady": statistics.median(steady),
        "steady_rounds": f"2..{len(secs)}" if len(secs) > 1 else "1",
    }


def accuracy_agreement(a: list[dict], b: list[dict]) -> dict:
    """How close two accuracy curves are, round by round."""
    diffs = [abs(x["central_accuracy"] - y["central_accuracy"]) for x, y in zip(a, b)]
    return {
        "max_abs_diff": max(diffs),
        "mean_abs_diff": statistics.fmean(diffs),
        "final_fedsweep": a[-1]["central_accuracy"],
        "final_flower": b[-1]["central_accuracy"],
        "final_abs_diff": diffs[-1],
    }


def compare(fed: dict, flw: dict) -> dict:
    """Speed ratios (Flower's seconds per round over fedsweep's) and accuracy agreement."""
    fs, ws = round_stats(fed["rounds"]), round_stats(flw["rounds"])
    return {
        "fedsweep": fs,
        "flower": ws,
        "speedup_mean_steady": ws["mean_s_steady"] / fs["mean_s_steady"],
        "speedup_median_steady": ws["median_s_steady"] / fs["median_s_steady"],
        "speedup_mean_all": ws["mean_s_all"] / fs["mean_s_all"],
        "speedup_total_run": flw["run_seconds"] / fed["run_seconds"],
        "accuracy": accuracy_agreement(fed["rounds"], flw["rounds"]),
    }


def report_lines(fed: dict, flw: dict, cmp: dict) -> list[str]:
    """The side-by-side table and the summary, as printed."""
    lines = [
        "",
        f"{'round':>5} | {'fedsweep s':>10} {'acc':>7} | {'Flower s':>9} {'acc':>7} | {'|d acc|':>7}",
        "-" * 58,
    ]
    for a, b in zip(fed["rounds"], flw["rounds"]):
        lines.append(
            f"{a['round']:>5} | {a['seconds']:>10.3f} {a['central_accuracy']:>7.4f} | "
            f"{b['seconds']:>9.3f} {b['central_accuracy']:>7.4f} | {abs(a['central_accuracy'] - b['central_accuracy']):>7.4f}"
        )
    fs, ws, acc = cmp["fedsweep"], cmp["flower"], cmp["accuracy"]
    lines += [
        "",
        (f"seconds per round, rounds {fs['steady_rounds']}: fedsweep mean {fs['mean_s_steady']:.3f} "
        f"(median {fs['median_s_steady']:.3f}); Flower mean {ws['mean_s_steady']:.3f} (median {ws['median_s_steady']:.3f})"),
        (f"fedsweep is {cmp['speedup_mean_steady']:.2f}x faster per round (means, rounds {fs['steady_rounds']}); "
        f"{cmp['speedup_median_steady']:.2f}x (medians); {cmp['speedup_mean_all']:.2f}x (means, all rounds); "
        f"{cmp['speedup_total_run']:.2f}x (whole run_simulation call)"),
        (f"central accuracy: final fedsweep {acc['final_fedsweep']:.4f} vs Flower {acc['final_flower']:.4f} "
        f"(|diff| {acc['final_abs_diff']:.4f}); per round |diff| max {acc['max_abs_diff']:.4f}, "
        f"mean {acc['mean_abs_diff']:.4f}"),
    ]
    return lines


def across_seeds(runs: list[dict]) -> dict:
    """Both sides over every seed: mean round times and their ratio, mean accuracy curves and their seed-to-seed spread."""
    def curves(side: str) -> list[list[float]]:
        return [[r["central_accuracy"] for r in run[side]["rounds"]] for run in runs]

    def spread(values: list[float]) -> float | None:
        return statistics.stdev(values) if len(values) > 1 else None

    fed, flw = curves("fedsweep"), curves("flower")
    fed_mean = [statistics.fmean(col) for col in zip(*fed)]
    flw_mean = [statistics.fmean(col) for col in zip(*flw)]
    diffs = [abs(a - b) for a, b in zip(fed_mean, flw_mean)]
    fed_s = statistics.fmean(run["comparison"]["fedsweep"]["mean_s_steady"] for run in runs)
    flw_s = statistics.fmean(run["comparison"]["flower"]["mean_s_steady"] for run in runs)
    return {
        "seeds": [run["seed"] for run in runs],
        "fedsweep_mean_s_steady": fed_s,
        "flower_mean_s_steady": flw_s,
        "speedup_mean_steady": flw_s / fed_s,
        "speedup_per_seed": [run["comparison"]["speedup_mean_steady"] for run in runs],
        "accuracy": {
            "fedsweep_mean": fed_mean,
            "fedsweep_sd": [spread(list(col)) for col in zip(*fed)],
            "flower_mean": flw_mean,
            "flower_sd": [spread(list(col)) for col in zip(*flw)],
            "max_abs_diff_of_means": max(diffs),
            "mean_abs_diff_of_means": statistics.fmean(diffs),
            "final_abs_diff_of_means": diffs[-1],
        },
    }


def summary_lines(summary: dict) -> list[str]:
    """The comparison over all seeds, as printed."""
    acc = summary["accuracy"]

    def cell(mean: float, sd: float | None) -> str:
        return f"{mean:.4f}" + (f" +- {sd:.4f}" if sd is not None else "")

    lines = [
        "",
        f"over seeds {summary['seeds']}: mean central accuracy per round (+- standard deviation over the seeds)",
        f"{'round':>5} | {'fedsweep':>17} | {'Flower':>17} | {'|d mean|':>8}",
        "-" * 58,
    ]
    for i, (a, sa, b, sb) in enumerate(zip(acc["fedsweep_mean"], acc["fedsweep_sd"], acc["flower_mean"], acc["flower_sd"]), 1):
        lines.append(f"{i:>5} | {cell(a, sa):>17} | {cell(b, sb):>17} | {abs(a - b):>8.4f}")
    per_seed = ", ".join(f"{x:.2f}x" for x in summary["speedup_per_seed"])
    lines += [
        "",
        (f"seconds per round (rounds 2..N, mean over seeds): fedsweep {summary['fedsweep_mean_s_steady']:.3f}, "
         f"Flower {summary['flower_mean_s_steady']:.3f}: {summary['speedup_mean_steady']:.2f}x (per seed: {per_seed})"),
        (f"mean accuracy curves: |diff| max {acc['max_abs_diff_of_means']:.4f}, mean {acc['mean_abs_diff_of_means']:.4f}, "
         f"final {acc['final_abs_diff_of_means']:.4f}"),
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    """Run both sides (or one, with --only) for every seed, print the comparison and write --out."""
    args = parse_args(argv)
    if args.side:
        return run_side_here(args)
    sys.path[:0] = [REPO_ROOT]
    from fl_core import ConfigError

    try:
        sim_config(args)  # fail on bad settings before starting anything
    except ConfigError as exc:
        print(f"bench_flower: error: {exc}", file=sys.stderr)
        return 2
    pythons = {"fedsweep": sys.executable, "flower": args.flower_python}
    sides = [args.only] if args.only else list(SIDES)
    commit = git_commit()  # before the runs: what they ran
    payload = {
        "benchmark": "bench_flower",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "git_commit": commit,
        "settings": {k: v for k, v in vars(args).items() if k not in ("side", "side_out")},
        "runs": [],
    }
    for seed in args.seeds:
        run = {"seed": seed, **{side: run_side_subprocess(pythons[side], side, seed, args) for side in sides}}
        if not args.only:
            run["comparison"] = compare(run["fedsweep"], run["flower"])
            print(f"\nseed {seed}:" + "\n".join(report_lines(run["fedsweep"], run["flower"], run["comparison"])))
        payload["runs"].append(run)
        write_results(args.out, payload)  # after every seed: a long run that stops keeps what it measured
    if not args.only:
        payload["summary"] = across_seeds(payload["runs"])
        print("\n".join(summary_lines(payload["summary"])))
    payload["load_average_at_end"] = os.getloadavg()
    write_results(args.out, payload)
    print(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
