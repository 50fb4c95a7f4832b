"""This engine against fedsweep's engine of an earlier commit, same job, same hour, alternating runs.

    python bench/bench_vs_commit.py --data-dir /work/data-cifar --commit 3e80a5a --repeats 3

Round times on a shared 2-core machine drift by tens of percent from hour to
hour, so a figure measured on another day says little. This checks out
`--commit` into a temporary git worktree and runs the bench_flower job (CIFAR-10,
100 clients, 10 per round, 1 local epoch, lr 0.01, batch 32, central evaluation
every round, federated validation of 10 clients) once on each engine per
repeat, alternating, each in a fresh process with its own local Ray of 2 CPUs;
it reports the median round time (rounds 2..N) of every run.

The current engine runs the built-in app through `fl_core.run_app`; so does an
earlier commit that has it (`fl_core/runner.py`). Commits before the Message API
(3e80a5a and before) run the same job through `fl_core.SimConfig` +
`fl_core.run_simulation`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH_DIR)
sys.path.insert(0, BENCH_DIR)
from provenance import git_commit, versions, write_results  # noqa: E402

# Each side prints one JSON line: its per-round seconds.
CURRENT = r"""
import json, logging, sys, ray
from fl_core import Callback, RunSettings, fuse_run_config, load_app_folder, run_app
logging.getLogger("flwr").setLevel(logging.WARNING)
rows = []
class Rounds(Callback):
    def on_round_end(self, event):
        rows.append(event.metrics["seconds"])
app = load_app_folder(None)
rc = fuse_run_config(app, {"data-dir": sys.argv[1], "num-server-rounds": int(sys.argv[2]), "local-epochs": 1,
                           "lr": 0.01, "fraction-train": 0.1, "fraction-evaluate": 0.1})
ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
run_app(app, rc, RunSettings(pool_size=100), callbacks=[Rounds()])
print("ROUNDS " + json.dumps(rows))
"""
EARLIER = r"""
import json, logging, sys, ray
from fl_core import Callback, SimConfig, run_simulation
logging.getLogger("flwr").setLevel(logging.WARNING)
rows = []
class Rounds(Callback):
    def on_round_end(self, event):
        rows.append(event.metrics["seconds"])
ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
run_simulation(SimConfig(dataset="cifar10", data_dir=sys.argv[1], num_rounds=int(sys.argv[2]), local_epochs=1,
                         lr=0.01, fraction_fit=0.1, fraction_evaluate=0.1), callbacks=[Rounds()])
print("ROUNDS " + json.dumps(rows))
"""


def run_side(code: str, tree: str, data_dir: str, rounds: int) -> list[float]:
    """Per-round seconds of one run of `code` with the engine of the checkout `tree` first on the path."""
    env = {**os.environ, "PYTHONPATH": tree, "RAY_AUTH_MODE": "disabled"}
    done = subprocess.run(
        [sys.executable, "-c", code, data_dir, str(rounds)],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("ROUNDS ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"run in {tree} failed:\n{done.stderr[-3000:]}")
    return json.loads(line[len("ROUNDS ") :])


def main(argv=None) -> int:
    """Alternate the two engines, print each run's median round time, write JSON."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", required=True, help="folder holding cifar-10-batches-py")
    p.add_argument("--commit", default="3e80a5a", help="the earlier engine's commit (before the Message API)")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="bench_vs_commit.json")
    args = p.parse_args(argv)
    tree = tempfile.mkdtemp(prefix="fedsweep-earlier-")
    subprocess.run(
        ["git", "-C", REPO, "worktree", "add", "--detach", tree, args.commit], check=True, capture_output=True
    )
    results = {"current": [], "earlier": []}
    try:
        for repeat in range(args.repeats):
            earlier_code = CURRENT if os.path.exists(os.path.join(tree, "fl_core", "runner.py")) else EARLIER
            for side, code, where in (("earlier", earlier_code, tree), ("current", CURRENT, REPO)):
                seconds = run_side(code, where, args.data_dir, args.rounds)
                results[side].append(statistics.median(seconds[1:]))
                print(
                    f"repeat {repeat + 1}: {side:<8} {results[side][-1]:.3f} s/round (median of rounds "
                    f"2..{args.rounds})",
                    flush=True,
                )
    finally:
        subprocess.run(["git", "-C", REPO, "worktree", "remove", "--force", tree], capture_output=True)
        shutil.rmtree(tree, ignore_errors=True)
    summary = {side: {"runs_s_per_round": runs, "mean": statistics.mean(runs)} for side, runs in results.items()}
    ratio = summary["current"]["mean"] / summary["earlier"]["mean"]
    print(
        f"mean s/round: earlier {summary['earlier']['mean']:.3f}, current {summary['current']['mean']:.3f} "
        f"(current / earlier = {ratio:.3f})"
    )
    write_results(
        args.out,
        {
            "commit": git_commit(),
            "earlier_commit": args.commit,
            "versions": versions(),
            "settings": vars(args),
            "results": summary,
            "current_over_earlier": ratio,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
