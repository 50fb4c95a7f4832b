"""fedsweep against Apple's pfl-research 0.6.0 on the same federated job, the two sides alternating in one run.

    python bench/bench_pfl.py --data-dir /tmp/cifar --repeats 3          # both shapes, about 6 minutes
    python bench/bench_pfl.py --data-dir /tmp/cifar --smoke              # 3 rounds, small cohorts, about a minute
    python bench/bench_pfl.py --device cuda --synthetic --data-dir /tmp/syn   # on one GPU (bench/run_gpu.sh)

The job on both sides: Flower's CIFAR CNN (`cifar10_app.task.Net`, the same
initial weights `initial_model(seed)`), FedAvg weighted by examples, an IID
split of the 50,000 training images, plain SGD, pixels in [-1, 1], central
evaluation on the 10,000 test images (batches of 500) after rounds N, 2N, ...
and the last; no federated evaluation, no validation split. Shapes (--shapes):
cross-device (pfl's CIFAR-10 benchmark): 1,000 clients x 50 images, 50 a round,
batch 10, lr 0.1, evaluation every 10 rounds, 30 rounds; seed: 100 clients x
500 images, 10 a round, batch 32, lr 0.01, evaluation every round, 10 rounds;
1 local epoch in both.

fedsweep: `python -m fl_core` of the checkout --fedsweep-repo (default: this
one), run in it with it and its apps/cifar10 first on PYTHONPATH (checked
first), its defaults otherwise (2 workers on 2 cores, a checkpoint a round).
pfl: bench/pfl_job.py under `torchrun --standalone --nproc_per_node 2`, one
torch thread a process, as pfl simulates on one machine. Each side draws its own
split and cohorts; fedsweep's kernels use channels_last on CPU, pfl's not.

Per run: seconds a round by the side's own timer (fedsweep: metrics.csv
`seconds`; pfl: pfl_job.py's clock between ends of rounds) and seen from
outside (time between the subprocess's round lines, stamped as they arrive),
each the median of rounds 2..N; the last central accuracy and its round.

On a GPU (--device cuda): pfl as one process on the GPU (pfl runs one process
per GPU: NCCL refuses two ranks on one device), fedsweep with --gpu-workers
client workers sharing the GPU (`--num-client-gpus 1/N`; central evaluation
where fedsweep's `--central-eval-on auto` puts it). With --synthetic, a data
folder without CIFAR-10 gets a CIFAR-shaped stand-in (50,000 + 10,000 images
of CIFAR's sizes, each class a fixed pattern plus noise): same tensors, same
costs, but accuracies that say nothing about CIFAR-10.
It is for the GPU machine, where CIFAR-10 cannot be carried beside the wheels.

pfl needs its own environment: installing `pfl[pytorch]==0.6.0` into the
project's venv downgrades attrs (26 -> 23, used by Ray's aiohttp and
jsonschema), so it is not in the `bench` extra. With the project's torch:

    python3 -m venv /tmp/pfl-venv && \
        /tmp/pfl-venv/bin/pip install torch==2.14.1 torchvision==0.29.1 'pfl[pytorch]==0.6.0'

--pfl-python defaults to /tmp/pfl-venv/bin/python when it exists.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH_DIR)
sys.path.insert(0, BENCH_DIR)
from provenance import versions, write_results  # noqa: E402

TRAIN_IMAGES = 50_000
EVAL_BATCH = 500  # fedsweep's default eval-batch-size, on both sides
SHAPES = {
    "cross-device": dict(clients=1000, cohort=50, epochs=1, batch_size=10, lr=0.1, eval_every=10, rounds=30),
    "seed": dict(clients=100, cohort=10, epochs=1, batch_size=32, lr=0.01, eval_every=1, rounds=10),
}
SMOKE_COHORT = {"cross-device": 10, "seed": 2}
# The round lines: fedsweep's ProgressPrinter ("round   3/30  acc ...") and pfl_job.py's RoundClock.
ROUND_LINE = {"fedsweep": re.compile(r"^round\s+(\d+)/\d+\s"), "pfl": re.compile(r"^PFL_ROUND (\d+) (\S+) (\S+)")}
DEFAULT_PFL_PYTHON = "/tmp/pfl-venv/bin/python"


def fedsweep_env(repo: str) -> dict:
    """Environment of a fedsweep run: the checkout's fl_core and cifar10_app before any installed copy."""
    path = os.pathsep.join([repo, os.path.join(repo, "apps", "cifar10"), os.environ.get("PYTHONPATH", "")])
    # Unbuffered: the round lines must arrive when they are printed. No Ray auth token: nothing to secure here.
    return {**os.environ, "PYTHONPATH": path.rstrip(os.pathsep), "PYTHONUNBUFFERED": "1", "RAY_AUTH_MODE": "disabled"}


def check_fedsweep_imports(repo: str) -> dict:
    """The files fl_core and cifar10_app load from in a fedsweep run; SystemExit unless both are under `repo`."""
    code = "import fl_core, cifar10_app; print(fl_core.__file__); print(cifar10_app.__file__)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=repo, env=fedsweep_env(repo), capture_output=True, text=True, check=True
    ).stdout.split()
    if not all(os.path.realpath(f).startswith(os.path.realpath(repo) + os.sep) for f in out):
        sys.exit(f"bench_pfl: the fedsweep run would import {out}, not the checkout {repo}")
    return {"fl_core": out[0], "cifar10_app": out[1]}


def stream(cmd: list[str], cwd: str, env: dict, side: str, timeout: float) -> tuple[list[tuple], float]:
    """Run `cmd`, stamping each round line as it arrives: ([(round, seconds since start, match)], wall seconds)."""
    start = time.perf_counter()
    rounds, tail = [], deque(maxlen=100)
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        start_new_session=True,
    )
    # A hung run is killed with its children (torchrun's workers, Ray's processes): they share its session.
    watchdog = threading.Timer(timeout, os.killpg, (proc.pid, signal.SIGKILL))
    watchdog.start()
    try:
        for line in proc.stdout:
            now = time.perf_counter() - start
            tail.append(line)
            m = ROUND_LINE[side].match(line)
            if m:
                rounds.append((int(m.group(1)), now, m))
        proc.wait()
    finally:
        watchdog.cancel()
    if proc.returncode == 0 and not rounds:
        raise RuntimeError(f"{side} printed no round lines (has their format changed?):\n{''.join(tail)}")
    if proc.returncode != 0:
        why = " (killed: past --timeout)" if proc.returncode == -signal.SIGKILL else ""
        raise RuntimeError(f"{side} exited {proc.returncode}{why}:\n{''.join(tail)}")
    return rounds, time.perf_counter() - start


def steady(seconds: list[float]) -> float | None:
    """Median over rounds 2..N (round 1 carries start-up work on both sides); None for a one-round run."""
    return statistics.median(seconds[1:]) if len(seconds) > 1 else None


def summarise(stamps: list[tuple], own: list[float], accuracy: float, scored: int, wall: float) -> dict:
    """One run's figures from its stamped round lines and its own per-round seconds."""
    times = [t for _, t, _ in stamps]
    outside = [b - a for a, b in zip(times, times[1:])]  # round r's line minus round r-1's, r = 2..N
    return {
        "own_s": own,
        "outside_s": outside,
        "own_median": steady(own),
        "outside_median": statistics.median(outside) if outside else None,
        "accuracy": accuracy,
        "accuracy_round": scored,
        "first_round_line_s": times[0],
        "wall_s": wall,
    }


def write_synthetic_cifar(folder: str, seed: int = 0) -> None:
    """A CIFAR-shaped stand-in in the cifar-10-batches-py layout: each class a fixed pattern plus uniform noise."""
    import pickle

    import numpy as np

    rng = np.random.default_rng(seed)
    patterns = rng.integers(0, 256, size=(10, 3072))
    os.makedirs(os.path.join(folder, "cifar-10-batches-py"), exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = rng.integers(0, 10, size=10_000)
        data = (patterns[labels] // 2 + rng.integers(0, 128, size=(10_000, 3072))).astype(np.uint8)
        with open(os.path.join(folder, "cifar-10-batches-py", name), "wb") as f:
            pickle.dump({b"data": data, b"labels": labels.tolist()}, f)


def run_fedsweep(shape: dict, args) -> dict:
    """One `python -m fl_core` run of the shape; figures from its stdout and its metrics.csv."""
    with tempfile.TemporaryDirectory(prefix="bench-pfl-fedsweep-") as out:
        flags = {
            "checkpoint-dir": out,
            "data-dir": args.data_dir,
            "seed": args.seed,
            "partition": "iid",
            "pool-size": shape["clients"],
            "fraction-train": shape["cohort"] / shape["clients"],
            "min-train-nodes": shape["cohort"],
            "fraction-evaluate": 0,
            "val-ratio": 0,
            "local-epochs": shape["epochs"],
            "batch-size": shape["batch_size"],
            "lr": shape["lr"],
            "momentum": 0,
            "weight-decay": 0,
            "num-server-rounds": shape["rounds"],
            "central-eval-every": shape["eval_every"],
            "eval-batch-size": EVAL_BATCH,
        }
        if args.device == "cuda":
            flags["num-client-gpus"] = 1 / args.gpu_workers
        cmd = [sys.executable, "-m", "fl_core"] + [x for k, v in flags.items() for x in (f"--{k}", str(v))]
        stamps, wall = stream(cmd, args.fedsweep_repo, fedsweep_env(args.fedsweep_repo), "fedsweep", args.timeout)
        with open(os.path.join(out, "metrics.csv")) as f:
            rows = list(csv.DictReader(f))
    if any(int(float(r["train_clients"])) != shape["cohort"] for r in rows):  # fraction x clients rounded down
        raise RuntimeError(
            f"fedsweep trained {[r['train_clients'] for r in rows]} clients a round, not {shape['cohort']}"
        )
    last = rows[-1]
    return summarise(
        stamps,
        [float(r["seconds"]) for r in rows],
        float(last["central_accuracy"]),
        int(float(last.get("central_round") or last["round"])),
        wall,
    )


def run_pfl(shape: dict, args) -> dict:
    """One pfl_job.py run of the shape under torchrun; figures from its PFL_ROUND lines."""
    job = {
        "data-dir": args.data_dir,
        "seed": args.seed,
        "clients": shape["clients"],
        "per-client": TRAIN_IMAGES // shape["clients"],
        "cohort": shape["cohort"],
        "epochs": shape["epochs"],
        "batch-size": shape["batch_size"],
        "lr": shape["lr"],
        "rounds": shape["rounds"],
        "eval-every": shape["eval_every"],
        "eval-batch-size": EVAL_BATCH,
    }
    procs = 1 if args.device == "cuda" else args.pfl_procs
    cmd = [
        args.pfl_python,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(procs),
        os.path.join(BENCH_DIR, "pfl_job.py"),
    ] + [x for k, v in job.items() for x in (f"--{k}", str(v))]
    # The model class comes from the fedsweep checkout; one torch thread a process.
    path = os.pathsep.join([os.path.join(args.fedsweep_repo, "apps", "cifar10"), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path.rstrip(os.pathsep), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    stamps, wall = stream(cmd, BENCH_DIR, env, "pfl", args.timeout)
    scored = [(r, float(m.group(3))) for r, _, m in stamps if m.group(3) != "-"]
    return summarise(stamps, [float(m.group(2)) for _, _, m in stamps], scored[-1][1], scored[-1][0], wall)


def side_versions(args) -> dict:
    """pfl's and its torch's versions in the pfl environment, and the measured fedsweep checkout's commit."""
    pfl = subprocess.run(
        [args.pfl_python, "-c", "import pfl, torch; print(pfl.__version__, torch.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    try:  # a copy without git (the GPU machine's) has no commit to name
        commit = subprocess.run(
            ["git", "-C", args.fedsweep_repo, "rev-parse", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", args.fedsweep_repo, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        commit = dirty = ""
    return {"pfl": pfl[0], "pfl_torch": pfl[1], "fedsweep_repo_commit": (commit + ("+dirty" if dirty else "")) or None}


def median_of(runs: list[dict], key: str) -> float | None:
    """Median of the runs' `key` where it is known (None for one-round runs)."""
    values = [r[key] for r in runs if r[key] is not None]
    return statistics.median(values) if values else None


def fmt(x, spec=".3f") -> str:
    """A number for the table, '-' for None."""
    return "-" if x is None else format(x, spec)


def main(argv=None) -> int:
    """Alternate pfl and fedsweep on each shape, print each run and a table, write the JSON."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="data", help="folder holding cifar-10-batches-py")
    p.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    p.add_argument("--repeats", type=int, default=3, help="runs per side and shape, pfl and fedsweep alternating")
    p.add_argument("--rounds", type=int, help="override every shape's rounds")
    p.add_argument("--smoke", action="store_true", help="3 rounds, 10 (cross-device) or 2 (seed) clients a round")
    p.add_argument("--fedsweep-repo", default=REPO, help="the fedsweep checkout to measure (default: this one)")
    p.add_argument(
        "--pfl-python",
        default=DEFAULT_PFL_PYTHON if os.path.exists(DEFAULT_PFL_PYTHON) else sys.executable,
        help="interpreter with pfl[pytorch]==0.6.0 (default: /tmp/pfl-venv/bin/python if present)",
    )
    p.add_argument("--pfl-procs", type=int, default=2, help="torchrun processes (one per core)")
    p.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="cuda: pfl as one process on the GPU, fedsweep's workers sharing it",
    )
    p.add_argument(
        "--gpu-workers", type=int, default=2, help="with --device cuda: fedsweep's client workers on the GPU"
    )
    p.add_argument(
        "--synthetic",
        action="store_true",
        help="write a CIFAR-shaped stand-in into --data-dir when it holds no cifar-10-batches-py",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=1800, help="seconds one run may take")
    p.add_argument("--out", default="bench_pfl.json")
    args = p.parse_args(argv)
    args.fedsweep_repo, args.data_dir = os.path.abspath(args.fedsweep_repo), os.path.abspath(args.data_dir)
    args.data = "cifar-10-batches-py"
    if not os.path.isdir(os.path.join(args.data_dir, args.data)):
        if not args.synthetic:
            sys.exit(
                f"bench_pfl: no cifar-10-batches-py in {args.data_dir}: write it with "
                "../shared/datasets/make_cifar10.py, or pass --synthetic for a CIFAR-shaped stand-in"
            )
        write_synthetic_cifar(args.data_dir, args.seed)
        args.data = "synthetic"
    shapes = {}
    for name in args.shapes:
        shapes[name] = dict(SHAPES[name])
        if args.smoke:
            shapes[name].update(rounds=3, cohort=SMOKE_COHORT[name])
        if args.rounds:
            shapes[name]["rounds"] = args.rounds
    payload = {
        "versions": {**versions(), **side_versions(args)},
        "settings": vars(args),
        "shapes": shapes,
        "fedsweep_imports": check_fedsweep_imports(args.fedsweep_repo),
        "runs": {name: {"pfl": [], "fedsweep": []} for name in shapes},
    }
    for name, shape in shapes.items():
        for repeat in range(args.repeats):
            for side, run in (("pfl", run_pfl), ("fedsweep", run_fedsweep)):
                result = run(shape, args)
                payload["runs"][name][side].append(result)
                print(
                    f"{name} run {repeat + 1} {side:<8}  own {fmt(result['own_median'])} s/round  outside "
                    f"{fmt(result['outside_median'])} s/round  accuracy {result['accuracy']:.4f} "
                    f"(round {result['accuracy_round']})  wall {result['wall_s']:.1f} s",
                    flush=True,
                )
                write_results(args.out, payload)  # a run cut short keeps the runs before it
    print(f"\nmedian s/round over rounds 2..N (median over {args.repeats} run(s)); accuracy at the end, mean over runs")
    print(f"{'shape':<13} {'side':<9} {'own':>7} {'outside':>8} {'accuracy':>9}")
    summary = {}
    for name in shapes:
        for side in ("pfl", "fedsweep"):
            runs = payload["runs"][name][side]
            row = {
                "own": median_of(runs, "own_median"),
                "outside": median_of(runs, "outside_median"),
                "accuracy": statistics.mean(r["accuracy"] for r in runs),
            }
            summary.setdefault(name, {})[side] = row
            print(f"{name:<13} {side:<9} {fmt(row['own']):>7} {fmt(row['outside']):>8} {row['accuracy']:>9.4f}")
    payload["summary"] = summary
    write_results(args.out, payload)
    print(f"results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
