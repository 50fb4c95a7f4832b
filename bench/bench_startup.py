"""Where `python -m fl_core`'s time goes before and around its rounds: start-up, first round, total.

    python bench/bench_startup.py --data-dir /work/data-cifar --out startup.json
    python bench/bench_startup.py --dataset synthetic --rounds 2 --out smoke.json      # smoke run

Three measurements, each in fresh processes:

1. The README's main command, `python -m fl_core` (built-in app, its defaults,
   `--data-dir`; `--checkpoint-dir` a temporary folder), run as a subprocess
   whose output lines are timestamped as they arrive: when Ray is up (the
   "starting:" line, printed after flags, data and `ray.init`), when the
   ServerApp runs (its partition summary), when round 1 and the last round end,
   the "done:" line (after the final evaluation of every node) and the exit
   (after `ray.shutdown`); the final accuracy and the per-round times come from
   the run's own metrics.json.
2. The same start-up step by step in one child process, through the code paths
   the CLI uses: `import fl_core.cli`, `fl_core.cli.prepare` (flags, the torch
   import of its resource check, the app's run-config check), importing the
   app, `fl_core.runner.prepare_shared` (reading and partitioning the data),
   `import ray`, `ray.init(num_cpus=os.cpu_count(), include_dashboard=False)`,
   `fl_core.shared_data.publish`, `fl_core.pool.WorkerPool(...).wait_ready()`
   (client workers ready), one central evaluation as the server runs it, then
   `fl_core.run_app` for 2 rounds (its first round waits for its own workers).
   The data step is then split into its parts (reading the batches, importing
   Flower Datasets, partitioning), and the partitioning is timed once more with
   the partition's index column read in one slice instead of row by row, the
   cut this benchmark found (results identical, checked).
3. Each heavy import alone in a fresh interpreter (best of --import-repeats).

Steps 1 and 2 overlap in what they measure; both are kept because the command
is the ground truth and the steps say where its time goes. Figures on a busy
machine are rough: the load average is recorded.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
from provenance import versions, write_results  # noqa: E402  (bench/ is on sys.path: scripts run from it)

# Imports timed alone: the engine's dependencies, fedsweep's own modules, what a client worker imports, and
# torch._dynamo, which torch imports on the first optimizer a process builds (a worker's first training call).
IMPORTS = (
    "torch",
    "torch._dynamo",
    "flwr.serverapp",
    "flwr.clientapp",
    "ray",
    "pandas",
    "datasets",
    "flwr_datasets.partitioner",
    "fl_core",
    "fl_core.cli",
    "cifar10_app.client_app",
    "cifar10_app.server_app",
)
ROUND_LINE = re.compile(r"^round\s+(\d+)/(\d+)")
SUMMARY_LINE = re.compile(r"^\d+ clients; train samples per client")
DONE_LINE = re.compile(r"^done: (\d+) rounds in ([\d.]+) s(?:; final test accuracy ([\d.]+))?")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Benchmark options."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--data-dir", help="folder holding cifar-10-batches-py (the command's --data-dir)")
    p.add_argument("--dataset", choices=("cifar10", "synthetic"), default="cifar10")
    p.add_argument("--rounds", type=int, help="--num-server-rounds for the command (default: the app's, 10)")
    p.add_argument(
        "--repeats", type=int, default=1, help="runs of the command and of the step-by-step child (tables show medians)"
    )
    p.add_argument("--import-repeats", type=int, default=2, help="fresh interpreters per import timed (best kept)")
    p.add_argument(
        "--skip", nargs="*", default=[], choices=("command", "pieces", "imports"), help="measurements to leave out"
    )
    p.add_argument("--out", default="startup.json")
    # Internal: the step-by-step measurement, in a child process.
    p.add_argument("--pieces-child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.dataset == "cifar10" and not args.data_dir:
        p.error("--dataset cifar10 needs --data-dir (the folder holding cifar-10-batches-py)")
    return args


def cli_argv(args: argparse.Namespace, checkpoint_dir: str) -> list[str]:
    """The flags given to `python -m fl_core` (and to `prepare` in the step-by-step child)."""
    argv = ["--checkpoint-dir", checkpoint_dir]
    if args.data_dir:
        argv += ["--data-dir", os.path.abspath(args.data_dir)]
    if args.dataset != "cifar10":
        argv += ["--dataset", args.dataset]
    if args.rounds is not None:
        argv += ["--num-server-rounds", str(args.rounds)]
    return argv


def child_env() -> dict:
    """Environment of the measured processes: unbuffered output, so lines arrive when printed."""
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


# ---------------------------------------------------------------------------
# 1. The command, timed from outside


def run_command(args: argparse.Namespace) -> dict:
    """Run `python -m fl_core` once; timestamps (seconds since spawn) of its landmark lines, and its results."""
    checkpoint_dir = tempfile.mkdtemp(prefix="bench-startup-")
    cmd = [sys.executable, "-m", "fl_core"] + cli_argv(args, checkpoint_dir)
    print(f"$ {' '.join(cmd)}", flush=True)
    marks: dict[str, float] = {}
    lines, done = [], None
    try:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, cwd=REPO_ROOT, env=child_env()
        )
        for line in proc.stdout:
            now = time.perf_counter() - t0
            line = line.rstrip("\n")
            lines.append((round(now, 3), line))
            print(f"{now:7.2f}  {line}", flush=True)
            marks.setdefault("first_output", now)
            if line.startswith("starting:"):
                marks.setdefault("ray_started", now)
            elif SUMMARY_LINE.match(line):
                marks.setdefault("serverapp_running", now)
            elif ROUND_LINE.match(line):
                marks.setdefault("round_1_done", now)
                marks["last_round_done"] = now
            elif DONE_LINE.match(line):
                marks["run_done"], done = now, DONE_LINE.match(line)
        status = proc.wait()
        marks["exit"] = time.perf_counter() - t0
        if status != 0:
            raise SystemExit(f"bench_startup: python -m fl_core exited with status {status}")
        with open(os.path.join(checkpoint_dir, "metrics.json")) as f:
            history = json.load(f)
    finally:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    return {
        "command": " ".join(cmd[1:]),
        "marks_s": marks,
        "rounds": len(history),
        "run_seconds": float(done.group(2)) if done else None,
        "final_accuracy": history[-1].get("central_accuracy"),
        "round_seconds": [m["seconds"] for m in history],
        "round_1": {k: history[0][k] for k in ("seconds", "train_seconds", "fed_seconds", "central_seconds")},
        "median_round_s_after_first": statistics.median(m["seconds"] for m in history[1:])
        if len(history) > 1
        else None,
        "output": lines,
    }


# ---------------------------------------------------------------------------
# 2. Step by step, in a child process (entered with --pieces-child)


class _FirstRound:
    """Callback noting when round 1 ends, and every round's metrics."""

    def __init__(self, t0: float) -> None:
        """Times are taken relative to `t0`."""
        self.t0, self.round_1_end, self.metrics = t0, None, []

    def on_round_end(self, event) -> None:
        """Note the round."""
        if self.round_1_end is None:
            self.round_1_end = time.perf_counter() - self.t0
        self.metrics.append(dict(event.metrics))

    def on_run_end(self, event) -> None:
        """Nothing to do at the end."""


def partition_by_slice(labels, num_partitions: int, seed: int) -> list:
    """cifar10_app.data.partition_indices for "iid", reading each partition's index column in one slice.

    The app reads it as `np.asarray(partition["idx"])`; with datasets 4.x that
    column is a lazy `Column` which numpy consumes row by row, through the
    formatter, once per sample. `partition[:]["idx"]` formats the rows in one batch.
    """
    import datasets
    import numpy as np
    from cifar10_app.data import _make_partitioner

    datasets.disable_progress_bars()
    table = datasets.Dataset.from_dict({"label": labels, "idx": np.arange(len(labels))})
    table = table.shuffle(seed=seed).flatten_indices()
    partitioner = _make_partitioner("iid", num_partitions, len(labels), 0.5, 2, seed)
    partitioner.dataset = table.with_format("numpy")
    return [np.asarray(partitioner.load_partition(i)[:]["idx"], dtype=np.int64) for i in range(num_partitions)]


def pieces_child(args: argparse.Namespace) -> int:
    """Time the CLI's start-up steps in this fresh process; write them to --pieces-child as JSON."""
    entered = time.time()  # against the parent's spawn time: the interpreter's own start-up
    steps: dict[str, float] = {}
    t = time.perf_counter()

    def step(name: str) -> None:
        """Record the seconds since the previous step under `name`."""
        nonlocal t
        now = time.perf_counter()
        steps[name] = now - t
        t = now

    import fl_core.cli as cli

    step("import fl_core.cli")
    checkpoint_dir = tempfile.mkdtemp(prefix="bench-startup-pieces-")
    try:
        app, run_config, settings, _, _, _ = cli.prepare(cli_argv(args, checkpoint_dir))
    finally:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    step("prepare (flags, torch import, run-config check)")
    logging.getLogger("flwr").setLevel(logging.WARNING)  # as main() does
    from fl_core.runner import prepare_shared

    app.load("server")
    app.load("client")
    step("import the app (ServerApp, ClientApp modules)")
    values = prepare_shared(app, run_config, settings.pool_size)
    step("data: read + partition (prepare_shared -> load_data)")
    import ray

    step("import ray")
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level=logging.WARNING)  # as cli._start_ray
    step("ray.init")
    from fl_core import shared_data
    from fl_core.pool import WorkerPool
    from fl_core.runner import RUN_ID

    shared_data.publish(values)
    step("publish the data (ray.put)")
    pool = WorkerPool(app, settings, run_config, values, RUN_ID)
    workers = pool.size
    pool.wait_ready()
    step(f"client workers ready ({workers} ClientAppWorker actors)")
    pool.shutdown()
    step("workers shut down")

    import torch
    from cifar10_app.data import load_data
    from cifar10_app.task import evaluate, initial_model, place_model, to_tensor

    from fl_core.runner import server_threads

    data = next(v.value for v in values if v.function == load_data.name)
    threads = torch.get_num_threads()
    torch.set_num_threads(server_threads(settings))  # as the server process runs it
    model = place_model(initial_model(0), "cpu")
    x, y = to_tensor(data.test_images), torch.from_numpy(data.test_labels)
    t = time.perf_counter()
    evaluate(model, x, y, run_config["eval-batch-size"])
    step("one central evaluation (the ServerApp runs one before round 1)")
    torch.set_num_threads(threads)

    import fl_core

    t0 = time.perf_counter()
    first = _FirstRound(t0)
    short = {**run_config, "num-server-rounds": 2}
    end = fl_core.run_app(app, short, settings, shared_values=values, callbacks=[first])
    run = {
        "round_1_end_s": first.round_1_end,
        "round_1_start_s": first.round_1_end - first.metrics[0]["seconds"],
        "total_s": time.perf_counter() - t0,
        "run_end_seconds": end.seconds,
        "rounds": [
            {k: m[k] for k in ("round", "seconds", "train_seconds", "fed_seconds", "central_seconds")}
            for m in first.metrics
        ],
    }
    t = time.perf_counter()
    ray.shutdown()
    step("ray.shutdown (after run_app)")

    # The data step's parts, taken again (the batch files are now in the page cache).
    from cifar10_app.data import load_cifar10, make_synthetic, partition_indices, split_validation

    parts: dict[str, float] = {}
    t = time.perf_counter()
    if run_config["dataset"] == "cifar10":
        labels = load_cifar10(run_config["data-dir"] or None)[1]
    else:
        labels = make_synthetic(int(run_config["synthetic-size"]), int(run_config["seed"]))[1]
    parts["read the batches (second time: page cache warm)"] = time.perf_counter() - t
    t = time.perf_counter()
    indices = partition_indices(labels, run_config["partition"], settings.pool_size, seed=int(run_config["seed"]))
    parts["partition_indices (as the app does it)"] = time.perf_counter() - t
    t = time.perf_counter()
    split_validation(indices, float(run_config["val-ratio"]), int(run_config["seed"]))
    parts["split_validation"] = time.perf_counter() - t
    if run_config["partition"] == "iid":
        t = time.perf_counter()
        sliced = partition_by_slice(labels, settings.pool_size, int(run_config["seed"]))
        parts["partition_indices, index column read in one slice"] = time.perf_counter() - t
        parts["slice gives identical partitions"] = float(all((a == b).all() for a, b in zip(indices, sliced)))
    with open(args.pieces_child, "w") as f:
        json.dump(
            {
                "entered_at": entered,
                "steps_s": steps,
                "workers": workers,
                "run_app_2_rounds": run,
                "data_parts_s": parts,
            },
            f,
            indent=1,
        )
    return 0


def run_pieces(args: argparse.Namespace) -> dict:
    """The step-by-step measurement in a fresh child process; adds its interpreter start-up."""
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        out = os.path.join(tmp, "pieces.json")
        cmd = [sys.executable, os.path.abspath(__file__), "--pieces-child", out, "--dataset", args.dataset]
        cmd += ["--data-dir", os.path.abspath(args.data_dir)] if args.data_dir else []
        cmd += ["--rounds", str(args.rounds)] if args.rounds is not None else []
        spawned = time.time()
        subprocess.run(cmd, check=True, cwd=REPO_ROOT, env=child_env())
        with open(out) as f:
            result = json.load(f)
    result["steps_s"] = {"interpreter start": result.pop("entered_at") - spawned, **result["steps_s"]}
    return result


# ---------------------------------------------------------------------------
# 3. Imports alone


def time_imports(repeats: int) -> dict:
    """Seconds to import each of IMPORTS alone in a fresh interpreter (best of `repeats`), and the bare interpreter."""
    out = {}
    for module in ("",) + IMPORTS:
        code = (
            "import time; t = time.perf_counter(); "
            + (f"import {module}; " if module else "")
            + "print(time.perf_counter() - t)"
        )
        best, best_wall = float("inf"), float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=REPO_ROOT, env=child_env()
            )
            best_wall = min(best_wall, time.perf_counter() - t0)
            best = min(best, float(done.stdout.strip().splitlines()[-1]))
        if module:
            out[module] = best
        else:
            out["(bare interpreter, whole process)"] = best_wall
    return out


# ---------------------------------------------------------------------------
# Report


def medians(runs: list[dict]) -> dict:
    """Per key, the median over the runs that have it (keys in first-seen order)."""
    keys = list(dict.fromkeys(k for run in runs for k in run))
    return {k: statistics.median(run[k] for run in runs if k in run) for k in keys}


def spread(runs: list[dict], key: str) -> str:
    """' (min-max)' of `key` over the runs when there are several, else ''."""
    values = [run[key] for run in runs if key in run]
    return f" ({min(values):.2f}-{max(values):.2f})" if len(values) > 1 else ""


def report(payload: dict) -> list[str]:
    """The tables (medians over the repeats, with their range), as printed."""
    lines = []
    command = payload.get("command")
    if command:
        runs, marks, first = command["runs"], command["median_marks_s"], command["runs"][0]
        labels = {
            "first_output": "first output line",
            "ray_started": "'starting:' (imports, flags, data, ray.init done)",
            "serverapp_running": "ServerApp running (partition summary)",
            "round_1_done": "round 1 done",
            "last_round_done": f"round {first['rounds']} done",
            "run_done": "'done:' (after the final evaluation of every node)",
            "exit": "process exit (after ray.shutdown)",
        }
        lines += [
            "",
            f"python {first['command']}   ({len(runs)} run(s): median, range)",
            f"{'landmark':>52} | {'s since spawn':>13}",
            "-" * 68,
        ]
        lines += [
            f"{labels[k]:>52} | {marks[k]:>13.2f}{spread([r['marks_s'] for r in runs], k)}"
            for k in labels
            if k in marks
        ]
        for run in runs:
            run_s = run["run_seconds"] or float("nan")
            lines.append(
                f"final test accuracy {run['final_accuracy']:.4f}; run_app {run_s:.1f} s; "
                f"round 1 {run['round_1']['seconds']:.2f} s, median of the others "
                f"{run['median_round_s_after_first'] or float('nan'):.2f} s"
            )
    pieces = payload.get("pieces")
    if pieces:
        runs = pieces["runs"]
        lines += [
            "",
            f"step by step, the CLI's code path (a fresh process each; {len(runs)} run(s): median, range)",
            f"{'step':>66} | {'s':>7}",
            "-" * 76,
        ]
        steps = [r["steps_s"] for r in runs]
        lines += [f"{name:>66} | {s:>7.3f}{spread(steps, name)}" for name, s in pieces["median_steps_s"].items()]
        for run in runs:
            app_run = run["run_app_2_rounds"]
            lines.append(f"{'run_app, 2 rounds: round 1 started after':>66} | {app_run['round_1_start_s']:>7.3f}")
            lines.append(f"{'run_app, 2 rounds: round 1 ended after':>66} | {app_run['round_1_end_s']:>7.3f}")
            for r in app_run["rounds"]:
                lines.append(
                    f"{'round %d: seconds / train / fed / central' % r['round']:>66} | {r['seconds']:>7.3f}"
                    f"  {r['train_seconds']:.3f} / {r['fed_seconds']:.3f} / {r['central_seconds']:.3f}"
                )
        lines += ["", "the data step's parts (median)"]
        parts = [r["data_parts_s"] for r in runs]
        lines += [f"{name:>66} | {s:>7.3f}{spread(parts, name)}" for name, s in medians(parts).items()]
    imports = payload.get("imports")
    if imports:
        lines += [
            "",
            "each import alone, fresh interpreter (best of the repeats)",
            f"{'module':>34} | {'s':>6}",
            "-" * 43,
        ]
        lines += [f"{m:>34} | {s:>6.3f}" for m, s in imports.items()]
    lines.append(
        f"\nload average at the start {payload['load_average_at_start']}, at the end {payload['load_average_at_end']}"
    )
    return lines


def main(argv: list[str] | None = None) -> int:
    """Run the measurements, print the tables and write --out (after each measurement)."""
    args = parse_args(argv)
    if args.pieces_child:
        return pieces_child(args)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    payload = {
        "benchmark": "bench_startup",
        "versions": versions(),
        "settings": vars(args),
        "load_average_at_start": os.getloadavg(),
    }

    def save() -> None:
        """Write what was measured so far."""
        payload["load_average_at_end"] = os.getloadavg()
        write_results(args.out, payload)

    if "command" not in args.skip:
        runs = []
        for _ in range(args.repeats):
            runs.append({**run_command(args), "load_average": os.getloadavg()})
            payload["command"] = {"runs": runs, "median_marks_s": medians([r["marks_s"] for r in runs])}
            save()
    if "pieces" not in args.skip:
        runs = []
        for _ in range(args.repeats):
            runs.append({**run_pieces(args), "load_average": os.getloadavg()})
            payload["pieces"] = {"runs": runs, "median_steps_s": medians([r["steps_s"] for r in runs])}
            save()
    if "imports" not in args.skip:
        payload["imports"] = time_imports(args.import_repeats)
    save()
    print("\n".join(report(payload)))
    print(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
