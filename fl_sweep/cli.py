"""The sweep's command line: `python tune_search.py [options]` and `python tune_search.py report PATH`.

Flags and the `--config` file become a SweepSpec (fl_sweep.spec), checked as a
whole before Ray starts (fl_sweep.validate); then fl_sweep.tuner runs it and
fl_sweep.report writes its tables and plots. Exit status: 0 all trials
finished, 1 some trial failed, 2 bad input (one line; nothing written).
"""

from __future__ import annotations

import argparse
import os
import sys

from fl_core.apps import FlowerApp, bind_seed, fuse_run_config, load_app_folder
from fl_core.logs import LOGGER, one_line, show_on_stderr
from fl_core.settings import SETTING_NAMES, ConfigError, RunSettings, local_resources
from fl_core.tracking import add_tracking_flags, open_experiment, wandb_mode
from fl_sweep.report import write_report
from fl_sweep.spec import SEARCH_KINDS, SweepSpec, coerce_value, merge_settings, parse_assignment, search_entry
from fl_sweep.storage import (
    DEFAULT_NAME,
    DEFAULT_STORAGE,
    check_writable,
    exists,
    experiment_location,
    is_uri,
    read_marker,
)
from fl_sweep.sweep_file import read_config_file
from fl_sweep.table import check_table
from fl_sweep.trainable import share_data
from fl_sweep.tuner import SCHEDULERS, SEARCH_ALGS, execute
from fl_sweep.validate import same_runs, validate_spec

PROG = "tune_search"


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
    s.add_argument(
        "--config",
        metavar="FILE",
        help="YAML/JSON file with sections fixed: {key: value} and "
        "search: {key: {grid|choice: [..]} or {uniform|loguniform: [lo, hi]}}; flags override it",
    )
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="fix a setting (repeatable)")
    for kind, shape in (("grid", "V1,V2,..."), ("choice", "V1,V2,..."), ("uniform", "LO,HI"), ("loguniform", "LO,HI")):
        s.add_argument(
            f"--{kind}",
            action="append",
            default=[],
            metavar=f"KEY={shape}",
            help=f"sweep KEY with tune.{kind if kind != 'grid' else 'grid_search'} (repeatable)",
        )
    s.add_argument(
        "--num-samples",
        type=int,
        help="repeats of the grid (grid search) or trials drawn (random/optuna); default 1 for grid, 10 otherwise",
    )
    s.add_argument(
        "--search",
        choices=SEARCH_ALGS,
        help="grid: grid values are crossed; random: grid values become "
        "choices; optuna: OptunaSearch (needs optuna; no grid values). Default grid",
    )
    s.add_argument("--search-seed", type=int, help="seed of random/optuna sampling")
    s.add_argument(
        "--metric",
        help="per-round metric to optimise, as fl_core reports it: central_* (the app's central "
        "evaluation), fed_* (federated evaluation), train_* (default central_accuracy)",
    )
    s.add_argument("--mode", choices=("min", "max"), help="default: min for losses, max for anything else")
    s.add_argument("--scheduler", choices=SCHEDULERS, help="fifo (default) or asha (early stopping on rounds)")
    s.add_argument("--asha-grace-rounds", type=int, help="rounds every trial runs before ASHA may stop it (default 1)")
    s.add_argument(
        "--max-concurrent-trials", type=int, help="cap on trials running at once (default: as resources allow)"
    )
    r = p.add_argument_group("resources (per trial: one server bundle + K client bundles)")
    r.add_argument(
        "--server-cpus", type=int, help="CPUs of the trial's own bundle: server and central evaluation (default 1)"
    )
    r.add_argument("--server-gpus", type=float, help="GPUs of the trial's own bundle (default 0)")
    r.add_argument("--num-client-cpus", type=float, help="CPUs per client bundle (default 1)")
    r.add_argument("--num-client-gpus", type=float, help="GPUs per client bundle, fractions allowed (default 0)")
    r.add_argument(
        "--max-parallel-clients",
        type=int,
        help="K = min(clients per round, this); default: (CPUs - "
        "server CPUs) / client CPUs, at least 1, so that one trial always fits the cluster",
    )
    o = p.add_argument_group("storage, failures, Ray")
    o.add_argument(
        "--storage-path", help=f"where experiments live: a local path, NFS, s3:// or gs:// (default {DEFAULT_STORAGE})"
    )
    o.add_argument(
        "--name",
        help=f"experiment name (default {DEFAULT_NAME}); an existing sweep of that name is never "
        "overwritten: continue it with --resume or pick another --name",
    )
    o.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted sweep at --storage-path/--name: "
        "finished trials are kept, unfinished and errored ones continue from their last round",
    )
    o.add_argument("--keep-checkpoints", type=int, help="round checkpoints kept per trial (default 2)")
    add_tracking_flags(
        o, "every trial (a run each, W&B's grouped by the sweep; Tune's callbacks)", "the sweep", "the sweep's folder"
    )
    o.add_argument(
        "--checkpoint-every",
        type=int,
        help="rounds between a trial's checkpoints; its last round always "
        "has one. A crashed or resumed trial redoes at most N-1 rounds, with the same results (default 1)",
    )
    o.add_argument("--max-failures", type=int, help="restarts of a crashed trial, from its last round (default 2)")
    o.add_argument(
        "--address",
        default=os.environ.get("RAY_ADDRESS"),
        help="join a Ray cluster (auto, ray://...); default: $RAY_ADDRESS when set (as in a Ray Job), "
        "else start a local Ray in-process",
    )
    o.add_argument("--ray-temp-dir", help="temp/session folder of the local Ray started here (keep it short)")
    o.add_argument("--top", type=int, default=5, help="rows of the best-trials table (default 5)")
    o.add_argument(
        "--verbose",
        action="store_true",
        help="show fedsweep's debug messages, the sweep's and every trial's (its worker pool and groups); "
        "keep Ray's and Flower's info logging",
    )
    return p


# ---------------------------------------------------------------------------
# From the command line to a checked sweep


# Flags that define the sweep: with --resume they come from the marker file instead.
SWEEP_FLAGS = (
    "app",
    "config",
    "set",
    "grid",
    "choice",
    "uniform",
    "loguniform",
    "num_samples",
    "search",
    "search_seed",
    "metric",
    "mode",
    "scheduler",
    "asha_grace_rounds",
    "max_concurrent_trials",
    "server_cpus",
    "server_gpus",
    "num_client_cpus",
    "num_client_gpus",
    "max_parallel_clients",
    "keep_checkpoints",
    "checkpoint_every",
    "max_failures",
    "mlflow",
    "wandb",
)


def _cli_search(app: FlowerApp, args: argparse.Namespace, file_search: dict) -> dict:
    """Search entries from --grid/--choice/--uniform/--loguniform; `--grid AXIS=NAME,..` picks sets of the
    --config file's grid of sets AXIS."""
    search = {}
    for kind in SEARCH_KINDS:
        for text in getattr(args, kind):
            axis, _, names = text.partition("=")
            if kind == "grid" and "sets" in file_search.get(axis.strip(), {}):
                search[axis.strip()] = _picked_sets(file_search[axis.strip()], names, f"--grid {text}")
                continue
            key, values = parse_assignment(app, text, f"--{kind}")
            if key in search:
                raise ConfigError(f"{key} is swept twice (--{kind} {text}): give one search flag per setting")
            items = values.split(",") if values.strip() else []
            search[key] = search_entry(app, key, kind, items, f"--{kind} {text}")
    return search


def _picked_sets(entry: dict, names: str, where: str) -> dict:
    """The grid-of-sets entry narrowed to the comma-separated `names`, in that order."""
    picked = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in picked if n not in entry["sets"]]
    if unknown or not picked:
        raise ConfigError(
            f"{where}: no set named {', '.join(unknown) or '(none given)'}; the --config file's sets "
            f"are {', '.join(entry['sets'])}"
        )
    return {"kind": "grid", "values": picked, "sets": {n: entry["sets"][n] for n in picked}}


def _cli_fixed(app: FlowerApp, args: argparse.Namespace) -> dict:
    """Fixed values from the resource flags and --set (--set last, so it wins)."""
    fixed = {}
    for key in ("server_cpus", "server_gpus", "num_client_cpus", "num_client_gpus", "max_parallel_clients"):
        if getattr(args, key) is not None:
            fixed[key] = getattr(args, key)
    for text in args.set:
        key, value = parse_assignment(app, text, "--set")
        fixed[key] = coerce_value(app, key, value)
    return fixed


def default_mode(metric: str) -> str:
    """min for losses, max for anything else."""
    return "min" if "loss" in metric else "max"


def build_spec(args: argparse.Namespace, cluster_cpus: float, cluster_gpus: float) -> SweepSpec:
    """The sweep described by the command line (and --config file)."""
    app = load_app_folder(args.app)
    file_fixed, file_search, table = read_config_file(app, args.config) if args.config else ({}, {}, None)
    fixed, search = merge_settings(
        app, file_fixed, file_search, _cli_fixed(app, args), _cli_search(app, args, file_search)
    )
    if table is not None:
        table = check_table(table, search, f"--config {args.config}")
    settings = RunSettings.from_dict({k: v for k, v in fixed.items() if k in SETTING_NAMES}).to_dict()
    run_config = bind_seed(
        app, fuse_run_config(app, {k: v for k, v in fixed.items() if k not in SETTING_NAMES}, "--set"), settings["seed"]
    )
    metric = args.metric or "central_accuracy"
    search_alg = args.search or "grid"
    return SweepSpec(
        app_dir=app.directory,
        settings=settings,
        run_config=run_config,
        search=search,
        metric=metric,
        mode=args.mode or default_mode(metric),
        search_alg=search_alg,
        scheduler=args.scheduler or "fifo",
        num_samples=args.num_samples if args.num_samples is not None else (1 if search_alg == "grid" else 10),
        max_concurrent_trials=args.max_concurrent_trials,
        asha_grace_rounds=args.asha_grace_rounds if args.asha_grace_rounds is not None else 1,
        search_seed=args.search_seed,
        cluster_cpus=cluster_cpus,
        cluster_gpus=cluster_gpus,
        keep_checkpoints=args.keep_checkpoints if args.keep_checkpoints is not None else 2,
        checkpoint_every=args.checkpoint_every if args.checkpoint_every is not None else 1,
        max_failures=args.max_failures if args.max_failures is not None else 2,
        table=table,
    )


def prepare(args: argparse.Namespace) -> tuple[SweepSpec, str]:
    """Check everything that can be checked without Ray; returns (spec, experiment location)."""
    experiment = experiment_location(args.storage_path, args.name)
    if args.resume:
        given = [f"--{k.replace('_', '-')}" for k in SWEEP_FLAGS if getattr(args, k) not in (None, [], False)]
        if given:
            raise ConfigError(f"--resume continues the sweep as it was started; drop {', '.join(given)}")
        spec = SweepSpec.from_dict(read_marker(experiment)["spec"])
        if not os.path.isdir(spec.app_dir):
            raise ConfigError(
                f"the sweep's app folder {spec.app_dir} is gone: put it back to --resume the sweep, "
                "or start it again under another --name"
            )
        from ray import tune

        if not tune.Tuner.can_restore(experiment):
            raise ConfigError(
                f"{experiment} holds a sweep that never saved its state: start it again under another --name"
            )
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
    for note in same_runs(spec):
        LOGGER.warning(note)
    if args.mlflow:
        open_experiment(args.mlflow, os.path.basename(experiment.rstrip("/")))  # before Ray: a bad store is one line
    if args.wandb:
        args.wandb_mode, why = wandb_mode(args.wandb)
        if args.wandb_mode != "online":  # Tune's W&B callback asks for an API key unless WANDB_MODE says otherwise
            os.environ["WANDB_MODE"] = args.wandb_mode
        if why:
            print(f"note: {why} into {experiment}/wandb: wandb sync {experiment}/wandb/offline-run-* uploads it")
    return spec, experiment


def run_main(argv: list[str] | None) -> int:
    """`tune_search [options]`: run or resume a sweep, then write its report."""
    try:
        args = build_parser().parse_args(argv)
        show_on_stderr(PROG, verbose=args.verbose)
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
    LOGGER.error(one_line(exc))
    return 2


def report_main(argv: list[str]) -> int:
    """`tune_search report EXPERIMENT_PATH`: the tables and plots of a sweep, finished or not."""
    parser = _Parser(
        prog=f"{PROG} report",
        description="Write trials.csv, rounds.csv, best.json and plots "
        "for a sweep (finished, running or interrupted) and print its best trials.",
    )
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
    show_on_stderr(PROG)
    try:
        if argv[:1] == ["report"]:
            return report_main(argv[1:])
        return run_main(argv)
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
