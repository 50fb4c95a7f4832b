"""`python -m fl_core` timed from outside: start-up, rounds, exit, the driver's memory and its checkpoint.

    python bench/bench_cli.py --data-dir DIR --repeats 2               # the README's main command
    python bench/bench_cli.py --nodes 100000:1000 --rounds 3            # many nodes (synthetic data)
    python bench/bench_cli.py --nodes                                    # the default grid of nodes, ~6 minutes
    python bench/bench_cli.py --data-dir DIR --commit acaa1ea --repeats 4   # alternating with an earlier commit
    python bench/bench_cli.py --smoke                                    # synthetic data, 2 rounds
    python bench/bench_cli.py --nodes 100000:1000 --variants cohort-size=8 cohort-size=32 --repeats 2   # settings

Without --nodes: the README's main command (the built-in app's defaults on --data-dir). --nodes P:C ...: the
app's synthetic set (--synthetic-size images), no validation split, P nodes of which C train a round. Per run,
seconds since spawn (lines stamped as they arrive): Ray up ("starting:"), round 1's start (its line minus its
own seconds) and end, the last round, "done:" and the exit; medians of rounds 2..N of the round, train phase and
central evaluation (metrics.csv); the driver's peak RSS (the fl_core process alone); this checkout's checkpoint
size and the time to write it again. With --commit the earlier commit runs first in each pair; with --variants
each configuration runs once with each variant's extra flags in turn.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

from common import checkouts, run_cli, steady, versions, write_results

DEFAULT_NODES = ["100000:10", "100000:100", "100000:1000", "1000:100", "10000:100"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", help="folder holding cifar-10-batches-py (the main command's --data-dir)")
    p.add_argument("--nodes", nargs="*", help=f"POOL:CLIENTS_A_ROUND runs on synthetic data (none: {DEFAULT_NODES})")
    p.add_argument("--rounds", type=int, help="--num-server-rounds (default: the app's 10; with --nodes 4)")
    p.add_argument("--synthetic-size", type=int, default=200_000, help="with --nodes: training images")
    p.add_argument("--repeats", type=int, default=1, help="runs of each configuration (and checkout)")
    p.add_argument("--commit", help="also run this earlier commit's command line, alternating")
    p.add_argument("--smoke", action="store_true", help="synthetic data (6,000 images), 2 rounds")
    p.add_argument(
        "--variants",
        nargs="+",
        default=[""],
        help="extra fl_core flags, NAME=VALUE[,NAME=VALUE...] per variant; the variants alternate",
    )
    p.add_argument("--timeout", type=float, default=3600, help="seconds a run may take")
    p.add_argument("--out", default=os.path.join("results", "bench_cli.json"))
    args = p.parse_args(argv)
    try:
        args.variants = [dict(kv.split("=", 1) for kv in v.split(",") if kv) for v in args.variants]
    except ValueError:
        p.error("--variants takes NAME=VALUE pairs, comma-separated: --variants cohort-size=8 cohort-size=32")
    if args.nodes == []:
        args.nodes = DEFAULT_NODES
    if args.nodes and args.rounds is None:
        args.rounds = 4
    if args.smoke:
        args.rounds, args.synthetic_size = 2, 6000
    elif not args.nodes and not args.data_dir:
        p.error("the main command needs --data-dir (the folder holding cifar-10-batches-py), or use --nodes/--smoke")
    return args


def configurations(args: argparse.Namespace) -> list[dict]:
    """The flags of each configuration run."""
    rounds = {"num-server-rounds": args.rounds} if args.rounds else {}
    if not args.nodes:
        data = {"dataset": "synthetic", "synthetic-size": args.synthetic_size} if args.smoke else {}
        return [{**({"data-dir": os.path.abspath(args.data_dir)} if args.data_dir else {}), **data, **rounds}]
    runs = []
    for spec in args.nodes:
        pool, cohort = (int(x) for x in spec.split(":"))
        runs.append(
            {
                "dataset": "synthetic",
                "synthetic-size": args.synthetic_size,
                "val-ratio": 0,
                "pool-size": pool,
                "fraction-train": repr(cohort / pool),
                "min-train-nodes": cohort,
                **rounds,
            }
        )
    return runs


def checkpoint(folder: str) -> dict:
    """The run's checkpoint: its size, and the seconds to write it once more."""
    from fl_core.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint

    path = checkpoint_path(folder)
    with tempfile.TemporaryDirectory(prefix="bench-cli-ckpt-") as again:
        state, t0 = load_checkpoint(path), time.perf_counter()
        save_checkpoint(state, again)
        return {"checkpoint_mb": os.path.getsize(path) / 2**20, "checkpoint_write_s": time.perf_counter() - t0}


def figures(run: dict) -> dict:
    """One run's landmarks and steady-round figures."""

    def stamp(prefix: str, last: bool = False) -> float | None:
        """Seconds since spawn of the first (or last) line starting with `prefix`."""
        found = [t for t, line in run["lines"] if line.startswith(prefix)]
        return (found[-1] if last else found[0]) if found else None

    rows = run["rows"]
    clients = rows[-1].get("train_clients") or 1
    return {
        "ray_started": stamp("starting:"),
        "round_1_start": stamp("round ") - rows[0]["seconds"],
        "round_1_done": stamp("round "),
        "last_round_done": stamp("round ", last=True),
        "run_done": stamp("done:"),
        "exit": run["wall_s"],
        "round_s": steady([r["seconds"] for r in rows]),
        "train_s": steady([r["train_seconds"] for r in rows]),
        "central_s": steady([r["central_seconds"] for r in rows]),
        "train_ms_per_client": 1000 * steady([r["train_seconds"] for r in rows]) / clients,
        "final_accuracy": rows[-1].get("central_accuracy"),
        "driver_peak_rss_mb": run["peak_rss"] / 2**20,
        **(run["inspected"] or {}),
    }


def main(argv: list[str] | None = None) -> int:
    """Run every configuration (alternating checkouts) --repeats times; print each run, medians; write --out."""
    args = parse_args(argv)
    payload = {"benchmark": "bench_cli", "versions": versions(), "settings": vars(args), "runs": []}
    with checkouts(args.commit) as trees:
        for repeat in range(args.repeats):
            for flags, variant in ((f, v) for f in configurations(args) for v in args.variants):
                for label, repo in trees:
                    inspect = checkpoint if label == "current" else None  # the checkpoint format of this checkout
                    run = run_cli({**flags, **variant}, repo, args.timeout, echo=not args.nodes, inspect=inspect)
                    result = {"checkout": label, "repeat": repeat + 1, "command": run["command"], **figures(run)}
                    payload["runs"].append(result)
                    write_results(args.out, payload)
                    print(
                        f"{label}: {run['command']}\n  "
                        + ", ".join(f"{k} {v:.3f}" for k, v in result.items() if isinstance(v, float)),
                        flush=True,
                    )
    for label, command in dict.fromkeys((r["checkout"], r["command"]) for r in payload["runs"]):
        mine = [r for r in payload["runs"] if (r["checkout"], r["command"]) == (label, command)]
        print(f"\n{label}: {command} ({len(mine)} runs: median, range)")
        for key in ("ray_started", "round_1_start", "round_1_done", "exit", "round_s", "driver_peak_rss_mb"):
            values = [r[key] for r in mine if r[key] is not None]
            if values:
                print(f"  {key:>20}: {statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})")
    payload["load_average_at_end"] = os.getloadavg()
    write_results(args.out, payload)
    print(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
