"""fedsweep against Apple's pfl-research 0.6.0 on the same federated job, the two sides alternating in one run.

    python bench/bench_pfl.py --data-dir /tmp/cifar --repeats 3          # both shapes, about 6 minutes
    python bench/bench_pfl.py --data-dir /tmp/cifar --smoke              # 3 rounds, small cohorts, about a minute
    python bench/bench_pfl.py --data-dir /tmp/cifar --commit 8a696da --repeats 2   # and an earlier engine
    python bench/bench_pfl.py --device cuda --synthetic --data-dir /tmp/syn   # on one GPU (bench/run_gpu.sh)

Both sides: Flower's CIFAR CNN from the same initial weights, FedAvg weighted by examples, an IID split of the
50,000 training images, plain SGD, central evaluation (batches of 500) after rounds N, 2N, ... and the last; no
federated evaluation. Shapes: cross-device (pfl's CIFAR-10 benchmark: 1,000 clients x 50 images, 50 a round,
batch 10, lr 0.1, evaluation every 10 rounds, 30 rounds) and seed (100 x 500, 10 a round, batch 32, lr 0.01,
every round, 10 rounds). fedsweep: `python -m fl_core` of this checkout (and of --commit's `git archive`), its
defaults otherwise. pfl: pfl_job.py under `torchrun --nproc_per_node 2` (on a GPU one process), one torch thread
a process, in its own venv (--pfl-python, default /tmp/pfl-venv/bin/python: pfl downgrades attrs, which Ray
needs). Per run: seconds a round by the side's own timer and between its round lines seen from outside, medians
of rounds 2..N; the last central accuracy. --synthetic writes a CIFAR-shaped stand-in where CIFAR-10 is absent.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import statistics
import subprocess
import sys

import pandas as pd
from common import BENCH_DIR, checkouts, child_env, run_cli, steady, stream, versions, write_results

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


def round_lines(run: dict, side: str) -> list[tuple]:
    """(round, seconds since start, match) of each round line of a streamed run; RuntimeError when there is none."""
    found = [(int(m.group(1)), t, m) for t, line in run["lines"] if (m := ROUND_LINE[side].match(line))]
    if not found:
        raise RuntimeError(f"{side} printed no round lines (has their format changed?)")
    return found


def summarise(stamps: list[tuple], own: list[float], accuracy: float, scored: int, wall: float) -> dict:
    """One run's figures from its stamped round lines and its own per-round seconds."""
    times = [t for _, t, _ in stamps]
    outside = [b - a for a, b in zip(times, times[1:])]  # round r's line minus round r-1's, r = 2..N
    return {
        "own_s": own,
        "outside_s": outside,
        "own_median": steady(own),
        "outside_median": statistics.median(outside) if outside else float("nan"),
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


def run_fedsweep(shape: dict, args, repo: str) -> dict:
    """One `python -m fl_core` run of the shape with checkout `repo`; figures from its stdout and metrics.csv."""
    flags = {
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
    run = run_cli(flags, repo, args.timeout)
    rows = run["rows"]
    if any(int(r["train_clients"]) != shape["cohort"] for r in rows):  # fraction x clients rounded down
        raise RuntimeError(
            f"fedsweep trained {[r['train_clients'] for r in rows]} clients a round, not {shape['cohort']}"
        )
    last = rows[-1]
    central_round = last.get("central_round")  # absent or NaN when every round is scored
    scored = int(last["round"] if central_round is None or math.isnan(central_round) else central_round)
    own = [float(r["seconds"]) for r in rows]
    return summarise(round_lines(run, "fedsweep"), own, float(last["central_accuracy"]), scored, run["wall_s"])


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
    run = stream(cmd, BENCH_DIR, child_env(OMP_NUM_THREADS="1"), args.timeout)
    stamps = round_lines(run, "pfl")
    scored = [(r, float(m.group(3))) for r, _, m in stamps if m.group(3) != "-"]
    return summarise(stamps, [float(m.group(2)) for _, _, m in stamps], scored[-1][1], scored[-1][0], run["wall_s"])


def pfl_versions(args) -> dict:
    """pfl's and its torch's versions in the pfl environment."""
    code = "import pfl, torch; print(pfl.__version__, torch.__version__)"
    found = subprocess.run([args.pfl_python, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    return {"pfl": found[0], "pfl_torch": found[1]}


def main(argv=None) -> int:
    """Alternate pfl and fedsweep on each shape, print each run and a table, write the JSON."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="data", help="folder holding cifar-10-batches-py")
    p.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    p.add_argument("--repeats", type=int, default=3, help="runs per side and shape, pfl and fedsweep alternating")
    p.add_argument("--rounds", type=int, help="override every shape's rounds")
    p.add_argument("--smoke", action="store_true", help="3 rounds, 10 (cross-device) or 2 (seed) clients a round")
    p.add_argument("--commit", help="also run this earlier commit's fedsweep, after this one's, each repeat")
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
    args.data_dir = os.path.abspath(args.data_dir)
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
        "versions": {**versions(), **pfl_versions(args)},
        "settings": vars(args),
        "shapes": shapes,
        "runs": {name: {} for name in shapes},
    }
    with checkouts(args.commit) as trees:
        sides = [("pfl", lambda shape: run_pfl(shape, args))]
        for label, repo in trees:
            side = "fedsweep" if label == "current" else f"fedsweep {label}"
            sides.append((side, lambda shape, repo=repo: run_fedsweep(shape, args, repo)))
        runs = [
            (name, shape, repeat, side, run)
            for name, shape in shapes.items()
            for repeat in range(args.repeats)
            for side, run in sides
        ]
        for name, shape, repeat, side, run in runs:
            result = run(shape)
            payload["runs"][name].setdefault(side, []).append(result)
            print(
                f"{name} run {repeat + 1} {side:<8}  own {result['own_median']:.3f} s/round  outside "
                f"{result['outside_median']:.3f} s/round  accuracy {result['accuracy']:.4f} "
                f"(round {result['accuracy_round']})  wall {result['wall_s']:.1f} s",
                flush=True,
            )
            write_results(args.out, payload)  # a run cut short keeps the runs before it
    table = pd.DataFrame(
        {"shape": name, "side": side, **{k: r[k] for k in ("own_median", "outside_median", "accuracy")}}
        for name, sides in payload["runs"].items()
        for side, runs in sides.items()
        for r in runs
    )
    summary = table.groupby(["shape", "side"]).agg(
        {"own_median": "median", "outside_median": "median", "accuracy": "mean"}
    )
    print(f"\ns/round, median of rounds 2..N and over the runs; final accuracy, mean over the runs\n{summary}")
    payload["summary"] = summary.reset_index().to_dict("records")
    write_results(args.out, payload)
    print(f"results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
