"""fedsweep-tune: hyperparameter sweeps of Flower apps run by fl_core, with Ray Tune.

Run a sweep (default: a grid over fraction-train x local-epochs)::

    python tune_search.py --set dataset=synthetic --set num-server-rounds=5
    python tune_search.py --app examples/quickstart-pytorch --grid lr=0.01,0.1 --metric fed_eval_acc
    python tune_search.py --config sweep.yaml --loguniform lr=1e-3,1e-1 --search random --num-samples 8
    python tune_search.py --name fedsweep --resume          # continue an interrupted sweep
    python tune_search.py report ./ray_results/fedsweep     # tables and plots, at any time

Design, in short:

* Every trial is one `fl_core.run_app` of the app (default: the built-in
  CIFAR-10 app). Keys are the engine's settings (pool_size, seed, resources) or
  the app's run-config keys. When the app hands its rounds to fedsweep
  (`fl_core.start`), each round reports its metrics with a checkpoint of that
  round (`fl_checkpoint.npz`), so a crashed trial and a resumed sweep continue
  after the last reported round; an app that loops itself reports per round
  without checkpoints and restarts from round 1.
* A trial's placement group is [server bundle] + K client bundles, with
  K = min(clients per round, max parallel clients); fl_core puts one client
  worker actor on each client bundle.
* The app's @shared data is built once by the driver per distinct data set and
  shared through the object store (see fl_sweep.trainable.share_data).
* The sweep's settings are written to `fedsweep_sweep.json` in the experiment
  directory; `--resume` and `report` refuse a directory without it.
* Trials run in the driver's working directory (RAY_CHDIR_TO_TRIAL_DIR=0), so
  an app's relative paths mean what they mean for `python -m fl_core`.
* Exit status: 0 all trials finished, 1 some trial failed, 2 bad input (refused
  before Ray starts or anything is written).

Test-only hooks (environment variables read by the trainable, harmless otherwise):
FEDSWEEP_TEST_ROUND_LOG=<file> appends "trial_id,round" for every round a trial
finishes; FEDSWEEP_TEST_FAIL_ONCE=<file> makes the first trial that reaches
round 2 raise once (the file, holding that trial's id, records that it happened).
"""

from __future__ import annotations

import argparse
import os
import sys

from fl_core.settings import ConfigError, local_resources
from fl_sweep.report import write_report
from fl_sweep.spec import (DEFAULT_NAME, DEFAULT_STORAGE, PROG, SCHEDULERS, SEARCH_ALGS, SWEEP_FLAGS, SweepSpec,
                           build_spec, validate_spec)
from fl_sweep.storage import check_writable, exists, experiment_location, is_uri, read_marker
from fl_sweep.trainable import share_data
from fl_sweep.tuner import execute

class _Parser(argparse.ArgumentParser):
    """argparse that reports bad usage as one ConfigError line instead of usage + exit."""

    def error(self, message):
        """Raise instead of printing the usage block."""
        raise ConfigError(message)


# ---------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    """Parser of a sweep run (the `report` sub-command has its own)."""
    p = _Parser(
        prog=PROG,
        description="Sweep a Flower app run by fl_core with Ray Tune. Default search: a grid over fraction-train "
        "{0.05, 0.1, 0.2} x local-epochs {1, 2, 5}; any search flag replaces it. Keys are the engine's settings "
        "(pool_size, seed, ...) or the app's run-config keys (see `python -m fl_core --app DIR --help`). Also: "
        "`%(prog)s report EXPERIMENT_PATH` writes the tables and plots of a sweep at any time.",
        epilog="Exit status: 0 when every trial finished, 1 when some trial failed (its error is in its trial "
        "folder; --resume retries it from its last round), 2 on bad input (nothing is written then).",
    )
    s = p.add_argument_group("app, settings and search space")
    s.add_argument("--app", metavar="DIR", help="Flower app folder (default: the built-in CIFAR-10 app, apps/cifar10)")
    s.add_argument("--config", metavar="FILE", help="YAML/JSON file with sections fixed: {key: value} and "
                   "search: {key: {grid|choice: [..]} or {uniform|loguniform: [lo, hi]}}; flags override it")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="fix a setting (repeatable)")
    for kind, shape in (("grid", "V1,V2,..."), ("choice", "V1,V2,..."), ("uniform", "LO,HI"), ("loguniform", "LO,HI")):
        s.add_argument(f"--{kind}", action="append", default=[], metavar=f"KEY={shape}",
                       help=f"sweep KEY with tune.{kind if kind != 'grid' else 'grid_search'} (repeatable)")
    s.add_argument("--num-samples", type=int, help="repeats of the grid (grid search) or trials drawn "
                   "(random/optuna); default 1 for grid, 10 otherwise")
    s.add_argument("--search", choices=SEARCH_ALGS, help="grid: grid values are crossed; random: grid values become "
                   "choices; optuna: OptunaSearch (needs optuna; no grid values). Default grid")
    s.add_argument("--search-seed", type=int, help="seed of random/optuna sampling")
    s.add_argument("--metric", help="per-round metric to optimise, as fl_core reports it: central_* (the app's central "
                   "evaluation), fed_* (federated evaluation), train_* (default central_accuracy)")
    s.add_argument("--mode", choices=("min", "max"), help="default: min for losses, max for anything else")
    s.add_argument("--scheduler", choices=SCHEDULERS, help="fifo (default) or asha (early stopping on rounds)")
    s.add_argument("--asha-grace-rounds", type=int, help="rounds every trial runs before ASHA may stop it (default 1)")
    s.add_argument("--max-concurrent-trials", type=int, help="cap on trials running at once (default: as resources allow)")
    r = p.add_argument_group("resources (per trial: one server bundle + K client bundles)")
    r.add_argument("--server-cpus", type=int, help="CPUs of the trial's own bundle: server and central evaluation (default 1)")
    r.add_argument("--server-gpus", type=float, help="GPUs of the trial's own bundle (default 0)")
    r.add_argument("--num-client-cpus", type=float, help="CPUs per client bundle (default 1)")
    r.add_argument("--num-client-gpus", type=float, help="GPUs per client bundle, fractions allowed (default 0)")
    r.add_argument("--max-parallel-clients", type=int, help="K = min(clients per round, this); default: (CPUs - "
                   "server CPUs) / client CPUs, at least 1, so that one trial always fits the cluster")
    o = p.add_argument_group("storage, failures, Ray")
    o.add_argument("--storage-path", help=f"where experiments live: a local path, NFS, s3:// or gs:// (default {DEFAULT_STORAGE})")
    o.add_argument("--name", help=f"experiment name (default {DEFAULT_NAME}); an existing sweep of that name is never "
                   "overwritten: continue it with --resume or pick another --name")
    o.add_argument("--resume", action="store_true", help="continue the interrupted sweep at --storage-path/--name: "
                   "finished trials are kept, unfinished and errored ones continue from their last round")
    o.add_argument("--keep-checkpoints", type=int, help="round checkpoints kept per trial (default 2)")
    o.add_argument("--max-failures", type=int, help="restarts of a crashed trial, from its last round (default 2)")
    o.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                   help="join a Ray cluster (auto, ray://...); default: $RAY_ADDRESS when set (as in a Ray Job), "
                   "else start a local Ray in-process")
    o.add_argument("--ray-temp-dir", help="temp/session folder of the local Ray started here (keep it short)")
    o.add_argument("--top", type=int, default=5, help="rows of the best-trials table (default 5)")
    return p


def prepare(args: argparse.Namespace) -> tuple[SweepSpec, str]:
    """Check everything that can be checked without Ray; returns (spec, experiment location)."""
    experiment = experiment_location(args.storage_path, args.name)
    if args.resume:
        given = [f"--{k.replace('_', '-')}" for k in SWEEP_FLAGS if getattr(args, k) not in (None, [], False)]
        if given:
            raise ConfigError(f"--resume continues the sweep as it was started; drop {', '.join(given)}")
        spec = SweepSpec.from_dict(read_marker(experiment)["spec"])
        from ray import tune

        if not tune.Tuner.can_restore(experiment):
            raise ConfigError(f"{experiment} holds a sweep that never saved its state: start it again under another --name")
        return spec, experiment
    check_writable(experiment)
    if exists(experiment):
        raise ConfigError(f"{experiment} already exists: continue that sweep with --resume, or pick another --name")
    if args.address is None:
        cpus, gpus = local_resources()
        spec = build_spec(args, cpus, gpus)
        validate_spec(spec, cpus, gpus)
    else:
        spec = build_spec(args, 0, 0)  # cluster size filled in once connected
        validate_spec(spec, None, None)
    return spec, experiment


def run_main(argv: list[str] | None) -> int:
    """`tune_search [options]`: run or resume a sweep, then write its report."""
    try:
        args = build_parser().parse_args(argv)
        spec, experiment = prepare(args)
        shared_values = share_data(spec)  # before Ray: bad data is bad input too
    except ConfigError as exc:
        return fail(exc)
    try:
        timings = execute(args, spec, experiment, shared_values)
    except ConfigError as exc:  # e.g. a joined cluster too small for one trial
        return fail(exc)
    print(f"sweep ran {timings['sweep_s']:.1f} s (Ray start {timings['ray_start_s']:.1f} s)")
    summary = write_report(experiment, top=args.top)
    return 1 if summary["errored"] else 0


def fail(exc: Exception) -> int:
    """Print the one-line error and return the bad-input exit status."""
    message = " ".join(str(exc).split())
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


def report_main(argv: list[str]) -> int:
    """`tune_search report EXPERIMENT_PATH`: the tables and plots of a sweep, finished or not."""
    parser = _Parser(prog=f"{PROG} report", description="Write trials.csv, rounds.csv, best.json and plots "
                     "for a sweep (finished, running or interrupted) and print its best trials.")
    parser.add_argument("experiment", help="the sweep's folder: STORAGE_PATH/NAME")
    parser.add_argument("--top", type=int, default=5, help="rows of the best-trials table (default 5)")
    try:
        args = parser.parse_args(argv)
        path = args.experiment if is_uri(args.experiment) else os.path.abspath(args.experiment)
        write_report(path, top=args.top)
    except ConfigError as exc:
        return fail(exc)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python tune_search.py` and `fedsweep-tune`; returns the exit status (2: bad input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["report"]:
            return report_main(argv[1:])
        return run_main(argv)
    except SystemExit as exc:  # --help
        return int(exc.code or 0)


if __name__ == "__main__":
    sys.exit(main())
