"""fedsweep against Flower's own simulation engine, on the same federated job.

Runs the job on each side, each in a fresh subprocess, and compares them:

* fedsweep: `fl_core.run_app` with the built-in app (apps/cifar10: its
  ClientApp on fedsweep's Ray worker actors, tensors sliced into batches, no
  DataLoader);
* Flower: the way Flower 1.42's templates write it (bench/flower_app.py): a
  `ClientApp`/`ServerApp` with the Message-API `FedAvg`, run by
  `flwr.simulation.run_simulation` on its Ray backend, one CPU and no GPU per
  client, a torchvision `DataLoader` with per-sample `ToTensor`/`Normalize`;
* with --flower-engine-builtin, also the built-in app itself under Flower's
  engine (`fl_core.flower_engine.run_with_flower`, what `python -m fl_core
  --engine flower` runs): the same tensor-based ClientApp on both engines, so
  that side against fedsweep is the engines' overhead alone.

Every side uses the same `FederatedData` (`cifar10_app.data.load_data`), the
same partitions, clients per round, local epochs, batch size, learning rate and
momentum, the same initial weights, Ray clusters of the same size, federated
evaluation of the same share of clients and central evaluation on the whole
test set after every round. Client sampling differs (each engine draws its
own), so the accuracy curves agree only up to that noise: with `--seeds` the
job runs once per seed on each side, and the curves are compared as means over
the seeds, next to their spread from seed to seed.

Seconds per round: fedsweep's `RoundEnd.metrics["seconds"]`; the Flower
template's time between consecutive calls of its ServerApp's `evaluate_fn` (one
per round, after aggregation and federated evaluation); the built-in app under
Flower's engine, whose evaluate_fn cannot be wrapped from outside, the time
between the `[ROUND k/N]` lines that Flower's `Strategy.start` logs (the last
round ends at its "Strategy execution finished" line), read by a logging
handler; its whole `run_with_flower` call divided by the rounds is reported too
(that includes the actors' start, each actor reading and partitioning the data
itself, and the app's final evaluation of every node). Round 1 includes
start-up work on every side, so the headline ratio uses rounds 2..N; the
all-rounds ratio is printed too.

    python bench/bench_flower.py --data-dir /work/data-cifar            # CIFAR-10, 10 rounds
    python bench/bench_flower.py --data-dir /work/data-cifar --local-epochs 3 --lr 0.05 --seeds 0 1 2 3
    python bench/bench_flower.py --data-dir /work/data-cifar --flower-engine-builtin
    python bench/bench_flower.py --dataset synthetic --rounds 2          # smoke run

`--flower-python` names the interpreter of the Flower sides (default: this one);
use it when Flower's engine needs another environment, e.g. one with
`flwr[simulation]` and its pinned Ray (with fedsweep installed there too, for
the built-in app).
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
from collections.abc import Mapping

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
from provenance import git_commit, versions, write_results  # noqa: E402  (bench/ is on sys.path: scripts run from it)

BUILTIN_ON_FLOWER = "builtin-on-flower"
SIDES = ("fedsweep", "flower", BUILTIN_ON_FLOWER)
OTHER_SIDES = ("flower", BUILTIN_ON_FLOWER)  # each is compared against fedsweep
LABELS = {"fedsweep": "fedsweep", "flower": "Flower", BUILTIN_ON_FLOWER: "built-in on Flower"}


# ---------------------------------------------------------------------------
# Command line


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Benchmark options; the job's defaults are the seed job's (1 local epoch, lr 0.01), not the app's."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--dataset", choices=("cifar10", "synthetic"), default="cifar10")
    p.add_argument("--data-dir", help="folder holding cifar-10-batches-py (for --dataset cifar10)")
    p.add_argument("--synthetic-size", type=int, default=6000, help="training images of --dataset synthetic")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--pool-size", type=int, default=100)
    p.add_argument("--fraction-train", "--fraction-fit", dest="fraction_train", type=float, default=0.1)
    p.add_argument("--fraction-evaluate", type=float, default=0.1, help="share of clients validated each round")
    p.add_argument("--local-epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--num-client-cpus", type=float, default=1.0)
    p.add_argument("--num-cpus", type=int, default=os.cpu_count(), help="CPUs of each side's local Ray cluster")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="run the job once per seed on each side")
    p.add_argument("--out", default="results.json", help="where to write every side's results and the comparison")
    p.add_argument("--flower-python", default=sys.executable, help="Python interpreter for the Flower sides")
    p.add_argument(
        "--flower-engine-builtin",
        action="store_true",
        help=f"also run the built-in app under Flower's engine (side {BUILTIN_ON_FLOWER})",
    )
    p.add_argument("--only", choices=SIDES, help="run one side only (no comparison)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds allowed for each side")
    p.add_argument("--verbose", action="store_true", help="keep Flower's and Ray's info logging")
    # Internal: run one side in this process and write its results to --side-out.
    p.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    p.add_argument("--side-out", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def job(args: argparse.Namespace, seed: int):
    """The job as the built-in app sees it: (app, fused run config, RunSettings), all checked.

    The app's `seed` key and the engine's seed are the same value, as `python -m fl_core` sets them.
    """
    import fl_core

    app = fl_core.load_app_folder(None)
    run_config = fl_core.fuse_run_config(
        app,
        {
            "dataset": args.dataset,
            "data-dir": os.path.abspath(args.data_dir) if args.data_dir else "",
            "synthetic-size": args.synthetic_size,
            "num-server-rounds": args.rounds,
            "fraction-train": args.fraction_train,
            "fraction-evaluate": args.fraction_evaluate,
            "local-epochs": args.local_epochs,
            "batch-size": args.batch_size,
            "lr": args.lr,
            "momentum": args.momentum,
            "seed": seed,
        },
        where="bench_flower",
    )
    settings = fl_core.RunSettings(pool_size=args.pool_size, seed=seed, num_client_cpus=args.num_client_cpus)
    settings.validate(local_cpus=args.num_cpus, local_gpus=0)
    app.check(run_config, settings.pool_size)
    return app, run_config, settings


def side_argv(args: argparse.Namespace, side: str, seed: int, out_path: str) -> list[str]:
    """Command-line arguments that make a child process run one side of the job with one seed."""
    argv = [
        "--dataset",
        args.dataset,
        "--synthetic-size",
        str(args.synthetic_size),
        "--rounds",
        str(args.rounds),
        "--pool-size",
        str(args.pool_size),
        "--fraction-train",
        str(args.fraction_train),
        "--fraction-evaluate",
        str(args.fraction_evaluate),
        "--local-epochs",
        str(args.local_epochs),
        "--batch-size",
        str(args.batch_size),
        "--lr",
        str(args.lr),
        "--momentum",
        str(args.momentum),
        "--num-client-cpus",
        str(args.num_client_cpus),
        "--num-cpus",
        str(args.num_cpus),
        "--seeds",
        str(seed),
        "--side",
        side,
        "--side-out",
        out_path,
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
    """The job through fl_core.run_app with the built-in app; per-round metrics from its history."""
    import ray

    import fl_core
    from fl_core.runner import prepare_shared

    quiet_logs(args.verbose)
    app, run_config, settings = job(args, args.seeds[0])
    t_data = time.perf_counter()
    shared_values = prepare_shared(app, run_config, settings.pool_size)  # as the CLI: data before Ray starts
    data_seconds = time.perf_counter() - t_data
    start_ray(args.num_cpus, args.verbose)
    try:
        t0 = time.perf_counter()
        end = fl_core.run_app(app, run_config, settings, shared_values=shared_values)
        total = time.perf_counter() - t0
    finally:
        ray.shutdown()
    keys = (
        "round",
        "seconds",
        "train_seconds",
        "fed_seconds",
        "central_seconds",
        "central_accuracy",
        "central_loss",
        "train_samples",
        "samples_per_s",
    )
    accuracy = end.client_evaluation.get("stats", {}).get("accuracy", {})
    return {
        "side": "fedsweep",
        "rounds": [{k: m[k] for k in keys if k in m} for m in end.history],
        "data_seconds": data_seconds,
        "run_seconds": total,
        "run_seconds_note": "run_app call: pool start, rounds, final evaluation of every node",
        "final_all_client_val_accuracy": accuracy.get("mean"),
        "versions": versions(),
    }


def run_flower_side(args: argparse.Namespace) -> dict:
    """The job through Flower's run_simulation with bench/flower_app.py's ClientApp and ServerApp."""
    import random

    import flower_app
    import ray
    from cifar10_app.data import load_data
    from flwr.simulation import run_simulation

    quiet_logs(args.verbose)
    _, run_config, settings = job(args, args.seeds[0])
    t_data = time.perf_counter()
    data = load_data(run_config, settings.pool_size)  # no engine here: computed in this process
    data_seconds = time.perf_counter() - t_data
    random.seed(settings.seed)  # Flower samples nodes with the global `random`
    start_ray(args.num_cpus, args.verbose)  # Flower's backend uses an initialised Ray as it is
    data_ref = ray.put(data)
    recorder = flower_app.RoundRecorder()
    t0 = time.perf_counter()
    run_simulation(
        server_app=flower_app.make_server_app(data, run_config, recorder),
        client_app=flower_app.make_client_app(data_ref),
        num_supernodes=settings.pool_size,
        backend_config={"client_resources": {"num_cpus": settings.num_client_cpus, "num_gpus": 0.0}},
        verbose_logging=args.verbose,
    )
    total = time.perf_counter() - t0
    if ray.is_initialized():  # Flower's backend shuts Ray down itself
        ray.shutdown()
    if len(recorder.rounds) != args.rounds:
        raise RuntimeError(f"Flower finished {len(recorder.rounds)} of {args.rounds} rounds: see the log above")
    return {
        "side": "flower",
        "rounds": recorder.rounds,
        "data_seconds": data_seconds,
        "run_seconds": total,
        "run_seconds_note": "run_simulation call: engine and actor start, initial evaluation, rounds, shutdown",
        "serverapp_start_seconds": recorder.start_seconds,
        "versions": versions(),
    }


class StrategyLogRounds(logging.Handler):
    """Round times and central metrics of a `Strategy.start` run, read from the records it logs.

    Flower's `Strategy.start` logs `[ROUND k/N]` as round k begins, the central
    evaluation's MetricRecord after "Global evaluation", and "Strategy execution
    finished" after the last round: round k lasts from its line to the next one.
    """

    def __init__(self) -> None:
        """Start with no rounds seen."""
        super().__init__(level=logging.INFO)
        self.starts: list[tuple[int, float]] = []
        self.central: dict[int, dict] = {}
        self.finished: float | None = None
        self._after_global_evaluation = False

    def emit(self, record: logging.LogRecord) -> None:
        """Note the time of round starts and the end, and keep each round's central metrics."""
        try:
            self._note(record, time.perf_counter())
        except Exception:  # a logging handler must not break the run it watches
            self.handleError(record)

    def _note(self, record: logging.LogRecord, now: float) -> None:
        """Fold one log record into the rounds seen so far."""
        if record.msg == "[ROUND %s/%s]":
            self.starts.append((int(record.args[0]), now))
        elif record.msg == "Global evaluation":
            self._after_global_evaluation = True
        elif record.msg == "\t└──> MetricRecord: %s" and self._after_global_evaluation and self.starts:
            # logging unwraps a lone Mapping argument: record.args is the MetricRecord itself
            metrics = record.args if isinstance(record.args, Mapping) else record.args[0]
            self.central[self.starts[-1][0]] = {k: float(v) for k, v in metrics.items()}
            self._after_global_evaluation = False
        elif isinstance(record.msg, str) and record.msg.startswith("Strategy execution finished"):
            self.finished = now

    def rounds(self) -> list[dict]:
        """One dict per finished round: round, seconds and the central metrics."""
        ends = [t for _, t in self.starts[1:]] + ([self.finished] if self.finished is not None else [])
        out = []
        for (server_round, start), end in zip(self.starts, ends):
            central = self.central.get(server_round, {})
            out.append(
                {"round": server_round, "seconds": end - start, **{f"central_{k}": v for k, v in central.items()}}
            )
        return out


def run_builtin_on_flower_side(args: argparse.Namespace) -> dict:
    """The built-in app under Flower's engine (fl_core.flower_engine.run_with_flower); rounds from Flower's log."""
    import random

    import ray

    from fl_core.flower_engine import run_with_flower

    app, run_config, settings = job(args, args.seeds[0])
    flower_log = logging.getLogger("flwr")
    rounds_log = StrategyLogRounds()
    flower_log.addHandler(rounds_log)  # Flower's logger passes INFO on; only its console handler is quietened
    if not args.verbose:
        for handler in flower_log.handlers:
            if handler is not rounds_log:
                handler.setLevel(logging.WARNING)
    random.seed(settings.seed)  # Flower samples nodes with the global `random`
    start_ray(args.num_cpus, args.verbose)
    t0 = time.perf_counter()
    run_with_flower(app, run_config, settings, verbose=args.verbose)
    total = time.perf_counter() - t0
    if ray.is_initialized():
        ray.shutdown()
    rounds = rounds_log.rounds()
    if len(rounds) != args.rounds:
        raise RuntimeError(f"Flower's engine finished {len(rounds)} of {args.rounds} rounds: see the log above")
    return {
        "side": BUILTIN_ON_FLOWER,
        "rounds": rounds,
        "data_seconds": None,
        "data_seconds_note": "the app loads its data inside the run: in the ServerApp and in every actor",
        "run_seconds": total,
        "run_seconds_note": "run_with_flower call: engine and actor start, data loading in every process, initial "
        "evaluation, rounds, final evaluation of every node, shutdown",
        "run_seconds_per_round": total / args.rounds,
        "versions": versions(),
    }


def run_side_here(args: argparse.Namespace) -> int:
    """Child-process entry: run one side and write its JSON to --side-out."""
    sys.path[:0] = [REPO_ROOT, BENCH_DIR]
    runners = {"fedsweep": run_fedsweep_side, "flower": run_flower_side, BUILTIN_ON_FLOWER: run_builtin_on_flower_side}
    result = runners[args.side](args)
    with open(args.side_out, "w") as f:
        json.dump(result, f, indent=1)
    return 0


# ---------------------------------------------------------------------------
# Driver: every side in subprocesses, then the comparison


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
            raise SystemExit(
                f"bench_flower: the {side} side failed (exit status {proc.returncode}); see its output above"
            )
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
        "final_other": b[-1]["central_accuracy"],
        "final_abs_diff": diffs[-1],
    }


def compare(fed: dict, other: dict) -> dict:
    """Speed ratios (the other side's seconds per round over fedsweep's) and accuracy agreement.

    The whole-run ratio counts fedsweep's data loading too when the other side
    loads its data inside its run (the built-in app under Flower's engine).
    """
    fs, ws = round_stats(fed["rounds"]), round_stats(other["rounds"])
    fed_run = fed["run_seconds"] + (fed["data_seconds"] if other["data_seconds"] is None else 0.0)
    return {
        "fedsweep": fs,
        "other": ws,
        "speedup_mean_steady": ws["mean_s_steady"] / fs["mean_s_steady"],
        "speedup_median_steady": ws["median_s_steady"] / fs["median_s_steady"],
        "speedup_mean_all": ws["mean_s_all"] / fs["mean_s_all"],
        "speedup_total_run": other["run_seconds"] / fed_run,
        "speedup_whole_process": other["process_seconds"] / fed["process_seconds"],
        "accuracy": accuracy_agreement(fed["rounds"], other["rounds"]),
    }


def report_lines(run: dict) -> list[str]:
    """The side-by-side table and one summary per compared side, as printed."""
    others = [s for s in OTHER_SIDES if s in run]
    header = f"{'round':>5} | {'fedsweep s':>10} {'acc':>7}"
    for side in others:
        header += f" | {LABELS[side] + ' s':>20} {'acc':>7} {'|d acc|':>7}"
    lines = ["", header, "-" * len(header)]
    for i, a in enumerate(run["fedsweep"]["rounds"]):
        line = f"{a['round']:>5} | {a['seconds']:>10.3f} {a['central_accuracy']:>7.4f}"
        for side in others:
            b = run[side]["rounds"][i]
            diff = abs(a["central_accuracy"] - b["central_accuracy"])
            line += f" | {b['seconds']:>20.3f} {b['central_accuracy']:>7.4f} {diff:>7.4f}"
        lines.append(line)
    for side in others:
        cmp = run["comparison"][side]
        fs, ws, acc = cmp["fedsweep"], cmp["other"], cmp["accuracy"]
        name = LABELS[side]
        lines += [
            "",
            (
                f"seconds per round, rounds {fs['steady_rounds']}: fedsweep mean {fs['mean_s_steady']:.3f} "
                f"(median {fs['median_s_steady']:.3f}); {name} mean {ws['mean_s_steady']:.3f} "
                f"(median {ws['median_s_steady']:.3f})"
            ),
            (
                f"fedsweep is {cmp['speedup_mean_steady']:.2f}x faster than {name} per round (means, rounds "
                f"{fs['steady_rounds']}); {cmp['speedup_median_steady']:.2f}x (medians); "
                f"{cmp['speedup_mean_all']:.2f}x "
                f"(means, all rounds); {cmp['speedup_total_run']:.2f}x (whole run call); "
                f"{cmp['speedup_whole_process']:.2f}x (whole process)"
            ),
            (
                f"central accuracy: final fedsweep {acc['final_fedsweep']:.4f} vs {name} {acc['final_other']:.4f} "
                f"(|diff| {acc['final_abs_diff']:.4f}); per round |diff| max {acc['max_abs_diff']:.4f}, "
                f"mean {acc['mean_abs_diff']:.4f}"
            ),
        ]
        if side == BUILTIN_ON_FLOWER:
            lines.append(
                f"{name}: whole run_with_flower call {run[side]['run_seconds']:.1f} s = "
                f"{run[side]['run_seconds_per_round']:.3f} s per round (start-up and final evaluation included)"
            )
    return lines


def across_seeds(runs: list[dict], side: str) -> dict:
    """fedsweep and `side` over every seed: mean round times and their ratio, mean accuracy curves and their spread."""

    def curves(name: str) -> list[list[float]]:
        """Each seed's central accuracy per round on side `name`."""
        return [[r["central_accuracy"] for r in run[name]["rounds"]] for run in runs]

    def spread(values: list[float]) -> float | None:
        """Standard deviation over the seeds (None for one seed)."""
        return statistics.stdev(values) if len(values) > 1 else None

    fed, oth = curves("fedsweep"), curves(side)
    fed_mean = [statistics.fmean(col) for col in zip(*fed)]
    oth_mean = [statistics.fmean(col) for col in zip(*oth)]
    diffs = [abs(a - b) for a, b in zip(fed_mean, oth_mean)]
    fed_s = statistics.fmean(run["comparison"][side]["fedsweep"]["mean_s_steady"] for run in runs)
    oth_s = statistics.fmean(run["comparison"][side]["other"]["mean_s_steady"] for run in runs)
    return {
        "side": side,
        "seeds": [run["seed"] for run in runs],
        "fedsweep_mean_s_steady": fed_s,
        "other_mean_s_steady": oth_s,
        "speedup_mean_steady": oth_s / fed_s,
        "speedup_per_seed": [run["comparison"][side]["speedup_mean_steady"] for run in runs],
        "accuracy": {
            "fedsweep_mean": fed_mean,
            "fedsweep_sd": [spread(list(col)) for col in zip(*fed)],
            "other_mean": oth_mean,
            "other_sd": [spread(list(col)) for col in zip(*oth)],
            "max_abs_diff_of_means": max(diffs),
            "mean_abs_diff_of_means": statistics.fmean(diffs),
            "final_abs_diff_of_means": diffs[-1],
        },
    }


def summary_lines(summary: dict) -> list[str]:
    """The comparison of fedsweep and one other side over all seeds, as printed."""
    acc, name = summary["accuracy"], LABELS[summary["side"]]

    def cell(mean: float, sd: float | None) -> str:
        """'mean +- sd' (just the mean for one seed)."""
        return f"{mean:.4f}" + (f" +- {sd:.4f}" if sd is not None else "")

    lines = [
        "",
        f"over seeds {summary['seeds']}: mean central accuracy per round (+- standard deviation over the seeds)",
        f"{'round':>5} | {'fedsweep':>17} | {name:>18} | {'|d mean|':>8}",
        "-" * 59,
    ]
    for i, (a, sa, b, sb) in enumerate(
        zip(acc["fedsweep_mean"], acc["fedsweep_sd"], acc["other_mean"], acc["other_sd"]), 1
    ):
        lines.append(f"{i:>5} | {cell(a, sa):>17} | {cell(b, sb):>18} | {abs(a - b):>8.4f}")
    per_seed = ", ".join(f"{x:.2f}x" for x in summary["speedup_per_seed"])
    lines += [
        "",
        (
            f"seconds per round (rounds 2..N, mean over seeds): fedsweep {summary['fedsweep_mean_s_steady']:.3f}, "
            f"{name} {summary['other_mean_s_steady']:.3f}: {summary['speedup_mean_steady']:.2f}x (per seed: {per_seed})"
        ),
        (
            f"mean accuracy curves: |diff| max {acc['max_abs_diff_of_means']:.4f}, mean "
            f"{acc['mean_abs_diff_of_means']:.4f}, "
            f"final {acc['final_abs_diff_of_means']:.4f}"
        ),
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    """Run every side (or one, with --only) for every seed, print the comparison and write --out."""
    args = parse_args(argv)
    if args.side:
        return run_side_here(args)
    sys.path[:0] = [REPO_ROOT]
    from fl_core import ConfigError

    try:
        job(args, args.seeds[0])  # fail on bad settings before starting anything
    except ConfigError as exc:
        print(f"bench_flower: error: {exc}", file=sys.stderr)
        return 2
    pythons = {"fedsweep": sys.executable, "flower": args.flower_python, BUILTIN_ON_FLOWER: args.flower_python}
    sides = [args.only] if args.only else ["fedsweep", "flower"]
    if args.flower_engine_builtin and not args.only:
        sides.append(BUILTIN_ON_FLOWER)
    compared = [s for s in OTHER_SIDES if s in sides] if "fedsweep" in sides else []
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
        if compared:
            run["comparison"] = {side: compare(run["fedsweep"], run[side]) for side in compared}
            print(f"\nseed {seed}:" + "\n".join(report_lines(run)))
        payload["runs"].append(run)
        write_results(args.out, payload)  # after every seed: a long run that stops keeps what it measured
    if compared:
        payload["summary"] = {side: across_seeds(payload["runs"], side) for side in compared}
        for side in compared:
            print("\n".join(summary_lines(payload["summary"][side])))
    payload["load_average_at_end"] = os.getloadavg()
    write_results(args.out, payload)
    print(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
