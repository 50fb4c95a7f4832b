"""`python -m fl_core`: run one Flower app (default: the built-in CIFAR-10 job) on Ray, checkpointed and resumable.

Flags: the engine's settings (`--pool-size`, `--seed`, resources), the run
(`--app`, `--checkpoint-dir`, `--resume`, `--address`, `--engine`), overrides of
the app's run config written as `flwr run` takes them (`--run-config "k=v ..."`)
and, for convenience, one flag per run-config key of the app (`--lr 0.05`,
`--fedadam.eta 0.01`). Everything that can be checked is checked before Ray
starts (the app's data then loads while Ray starts); bad input gets one line
on stderr and exit status 2. The run folder gets metrics.png at the end and,
for an app with a partitioner hook, partitions.csv/.png as soon as the data is ready.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from fl_core.apps import FlowerApp, bind_seed, coerce, fuse_run_config, load_app_folder, parse_run_config
from fl_core.callbacks import CheckpointWriter, MetricsWriter, ProgressPrinter, TensorBoardWriter
from fl_core.checkpoint import (
    CHECKPOINT_FILE,
    CheckpointError,
    check_app,
    check_resume,
    checkpoint_path,
    load_checkpoint,
    remove_stale_temp_files,
)
from fl_core.failures import ClientAppError, NodeLostError
from fl_core.flower_engine import run_with_flower
from fl_core.logs import LOGGER, one_line, show_on_stderr
from fl_core.plots import MetricsPlotter, write_partition_files
from fl_core.runner import prepare_shared, run_app
from fl_core.settings import (
    RAY_SYSTEM_CONFIG,
    SETTING_NAMES,
    ConfigError,
    RunSettings,
    check_can_create,
    local_resources,
    setting_type,
)
from fl_core.tracking import MlflowLogger, WandbLogger, add_tracking_flags, open_experiment, run_params, wandb_mode

# Ray (imported by the pool) is imported where a run starts: bad input and --help answer without it.

PROG = "python -m fl_core"
SETTING_HELP = {
    "pool_size": "number of clients (nodes); each gets node_config partition-id and num-partitions",
    "seed": "seed of node sampling and of the generators reseeded around every call; also the app's "
    "run-config key seed, when it has one",
    "num_client_cpus": "CPUs per client worker (its torch thread count)",
    "num_client_gpus": "GPUs per client worker, fractions share a GPU (e.g. 0.25)",
    "server_cpus": "torch threads of the server process (central evaluation); default: in a Tune trial its own "
    "bundle's CPUs, alone every local core (client workers idle meanwhile)",
    "server_gpus": "GPUs the server process may use (0: it sees none)",
    "max_parallel_clients": "cap on client workers (default: the clients a round uses, as the cluster allows)",
    "nodes_per_call": "most messages (or cohorts, see --cohort-size) of a phase one worker call carries (default: "
    "the phase's messages split over the workers, one call each); results are the same for any value",
    "cohort_size": "most clients of a phase trained together by an app's cohort function (fl_core.cohorts; the "
    "built-in app's train); cohorts follow message order, so results are the same for any number of workers, "
    "but differ in the last digits from --cohort-size 1 (one ClientApp call per client)",
    "client_retries": "times a client call that raised, lost its worker or timed out is run again (same inputs, "
    "same result)",
    "client_timeout": "seconds one client call may take before its worker is restarted and the call counts as "
    "failed (default: no limit)",
    "on_client_failure": "once a call's retries are spent: abort the run, or drop that client for the round "
    "(Flower's accept-failures; the only choice that can change results)",
    "min_reply_share": "with --on-client-failure drop: a round fails when fewer of its clients reply",
    "central_eval_on": "where an app's sharded central evaluation (fl_core.ShardedEvaluation) runs: its shards on "
    "the client workers side by side, or all in the server process; auto: the workers when they hold more CPUs "
    "than the server has threads, or GPUs the server lacks. The same numbers either way with the same thread "
    "count and device. A plain evaluate_fn always runs in the server",
    "central_eval_every": "rounds between central evaluations (rounds N, 2N, ... and the last); the others carry "
    "the latest one, with central_round saying which round it scored",
}
# Settings of fedsweep before its engine ran Flower apps, and what replaced them (None: removed).
RENAMED = {
    "num-rounds": "num-server-rounds",
    "fraction-fit": "fraction-train",
    "min-fit-clients": "min-train-nodes",
    "min-evaluate-clients": "min-evaluate-nodes",
    "proximal-mu": "fedprox.proximal-mu",
    "server-momentum": "fedavgm.server-momentum",
    "server-lr": "fedavgm.server-learning-rate (FedAvgM) or fedadam.eta, fedyogi.eta, fedadagrad.eta",
    "model": None,
}


def renamed(name: str, prefix: str = "--") -> str | None:
    """What to say about a setting name of the old fedsweep (`num-rounds`, `num_rounds`), or None if it is not one."""
    key = name.lstrip("-").split("=")[0].replace("_", "-")
    if key not in RENAMED:
        return None
    new = RENAMED[key]
    if new is None:
        return f"{prefix}{key} was removed: the built-in app has one model (write an app for another)"
    return f"{prefix}{key} is now {prefix}{new}" if " " not in new else f"{prefix}{key} is now {new}"


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad usage as one ConfigError line instead of usage + exit."""

    def error(self, message):
        """Raise instead of printing the usage block."""
        raise ConfigError(message)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _run_flags(parser: argparse.ArgumentParser) -> None:
    """The flags every invocation has: app, run config, output, resume, cluster, engine."""
    parser.add_argument(
        "--app",
        metavar="DIR",
        help="Flower app folder (its pyproject.toml); default: the built-in CIFAR-10 app, apps/cifar10",
    )
    parser.add_argument(
        "--run-config",
        action="append",
        default=[],
        metavar="'K=V ...'",
        help="run-config overrides as `flwr run --run-config` takes them (repeatable)",
    )
    parser.add_argument(
        "--checkpoint-dir",
        help="folder for the checkpoint and metrics (default: results/run-<time>, or the resumed checkpoint's folder)",
    )
    parser.add_argument(
        "--resume",
        metavar="PATH",
        help="continue from a checkpoint (file or its folder); settings and run config default to the checkpoint's",
    )
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        metavar="N",
        help="rounds between checkpoints; the last "
        "round always has one. A killed run redoes at most N-1 rounds, with the same results "
        "(default 1)",
    )
    parser.add_argument(
        "--address",
        default=os.environ.get("RAY_ADDRESS"),
        help="join this Ray cluster (e.g. auto); default: $RAY_ADDRESS when set (as in a Ray Job), "
        "else start a local Ray in-process",
    )
    parser.add_argument(
        "--engine",
        choices=("fedsweep", "flower"),
        default="fedsweep",
        help="flower: run the app under Flower's own simulation engine instead, for comparison "
        "(no checkpoints, no resume)",
    )
    add_tracking_flags(parser, "the run", "the app", "the run's folder")
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="show fedsweep's debug messages (its worker pool and groups); keep Ray's and Flower's info logging",
    )


def build_parser(app: FlowerApp) -> argparse.ArgumentParser:
    """Parser of the run flags, the engine settings and one flag per run-config key of `app`."""
    parser = _Parser(
        prog=PROG,
        description="Run a Flower app with fedsweep's engine on Ray: a worker pool sized to "
        "the run, data shared through the object store, a checkpoint every round, exact resume.",
        argument_default=argparse.SUPPRESS,
    )
    _run_flags(parser)
    engine = parser.add_argument_group("engine settings")
    defaults = RunSettings()
    for name in SETTING_NAMES:
        kind, _ = setting_type(name)
        shown = "(see text)" if getattr(defaults, name) is None else getattr(defaults, name)
        engine.add_argument(_flag(name), type=kind, help=f"{SETTING_HELP[name]} (default: {shown})")
    taken = {_flag(name) for name in SETTING_NAMES} | {
        "--app",
        "--run-config",
        "--checkpoint-dir",
        "--resume",
        "--checkpoint-every",
        "--address",
        "--engine",
        "--verbose",
    }
    keys = parser.add_argument_group(f"run config of app {app.name} (same as --run-config KEY=VALUE)")
    for key, default in app.defaults.items():
        if "--" + key not in taken:
            keys.add_argument("--" + key, dest="rc:" + key, metavar="VALUE", help=f"(default: {default!r})")
    return parser


def _pre_parse(argv: list[str]) -> argparse.Namespace:
    """--app and --resume, needed before the full parser (its flags come from the app) can be built."""
    pre = _Parser(add_help=False)
    pre.add_argument("--app")
    pre.add_argument("--resume")
    return pre.parse_known_args(argv)[0]


def prepare(argv: list[str]):
    """Parse and check everything that can be checked before Ray starts.

    Returns (app, run_config, settings, resume state or None, output folder, args).
    """
    early = _pre_parse(argv)
    resume = load_checkpoint(early.resume) if early.resume is not None else None
    if resume is not None and early.app is None and not os.path.isdir(resume.app_dir):
        raise CheckpointError(f"the checkpoint's app folder {resume.app_dir} is gone: give the app's folder with --app")
    app = load_app_folder(early.app if early.app is not None or resume is None else resume.app_dir)
    if resume is not None:
        check_app(resume, app)  # before the flags: the checkpoint's run config is the base they override
    args, unknown = build_parser(app).parse_known_args(argv)
    if unknown:
        notes = [renamed(flag) for flag in unknown if flag.startswith("--") and renamed(flag)]
        raise ConfigError(
            "; ".join(notes)
            if notes
            else f"unrecognized arguments: {' '.join(unknown)} "
            f"(app {app.name} has no such run-config key; see {PROG} --help)"
        )
    values = vars(args)
    overrides = parse_run_config(values["run_config"])
    overrides.update({k[3:]: v for k, v in values.items() if k.startswith("rc:")})
    given = {name: values[name] for name in SETTING_NAMES if name in values}
    base = dict(resume.settings) if resume is not None else {}
    settings = RunSettings.from_dict({**base, **given})
    if "seed" in overrides:  # one seed per run: the app's run-config key seed is the engine's seed
        seed = coerce("seed", overrides.pop("seed"), 0)
        if "seed" in given and given["seed"] != seed:
            raise ConfigError(f"--seed {given['seed']} and run-config seed={seed} disagree: give one of them")
        settings.seed = seed
    start = dict(resume.run_config) if resume is not None else {}
    run_config = bind_seed(app, fuse_run_config(app, {**start, **overrides}), settings.seed)
    if values["address"] is None:
        cpus, gpus = local_resources()
        settings.validate(local_cpus=cpus, local_gpus=gpus)
    else:
        settings.validate()
    app.find_components()
    app.check(run_config, settings.pool_size)
    out_dir = values.get("checkpoint_dir")
    if resume is not None:
        for note in check_resume(resume, app, run_config, settings):
            print(f"note: {note}")
        out_dir = out_dir or os.path.dirname(os.path.abspath(checkpoint_path(early.resume)))
    else:
        out_dir = out_dir or os.path.join("results", time.strftime("run-%Y%m%d-%H%M%S"))
        if os.path.exists(os.path.join(out_dir, CHECKPOINT_FILE)):
            raise ConfigError(
                f"{out_dir} already holds a run: continue it with --resume {out_dir}, or pick another --checkpoint-dir"
            )
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ConfigError(f"--checkpoint-dir {out_dir} is a file, not a folder")
    check_can_create(out_dir, "--checkpoint-dir")
    if values.setdefault("checkpoint_every", 1) < 1:
        raise ConfigError(f"--checkpoint-every must be at least 1, got {values['checkpoint_every']}")
    for flag in ("mlflow", "wandb"):
        if values.get(flag) and values["engine"] == "flower":
            raise ConfigError(f"--{flag} logs fedsweep's rounds: drop it with --engine flower")
    if values.get("mlflow"):
        values["mlflow_experiment"] = open_experiment(values["mlflow"], app.name)  # before Ray: a bad store is one line
    if values.get("wandb"):
        values["wandb_mode"] = wandb_mode(values["wandb"])
    return app, run_config, settings, resume, out_dir, values


def _start_ray(address: str | None) -> None:
    """Join `address`, or start a local Ray in this process with every local CPU."""
    import ray

    if address is None:
        ray.init(
            num_cpus=os.cpu_count(),
            include_dashboard=False,
            logging_level=logging.WARNING,
            _system_config=RAY_SYSTEM_CONFIG,
        )
    else:
        ray.init(address=address, logging_level=logging.WARNING)


def _draw_partitions(loading, app: FlowerApp, run_config: dict, num_partitions: int, out_dir: str) -> None:
    """Write partitions.csv and .png into `out_dir` once `loading` (the data) succeeded.

    A hook found broken only now gets a warning line and the run goes on: the
    files are a picture of the data, not worth stopping a run that has its data.
    """
    if loading.exception() is not None:  # bad data: the run ends with that error and writes nothing
        return
    try:
        write_partition_files(app, run_config, num_partitions, out_dir)
    except ConfigError as exc:
        LOGGER.warning(f"{one_line(exc)}; no partitions.csv/.png")
    except Exception as exc:  # a picture is a by-product: never worth the run
        LOGGER.warning(f"partitions.csv/.png not written ({type(exc).__name__}: {exc})")


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for bad input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    show_on_stderr("fl_core")
    try:
        app, run_config, settings, resume, out_dir, args = prepare(argv)
        show_on_stderr("fl_core", verbose=args.get("verbose", False))
        if args["engine"] == "flower":  # Flower's engine reports through Flower's log: keep it
            if resume is not None:
                raise ConfigError("--engine flower cannot --resume: Flower's engine has no checkpoints")
            run_with_flower(app, run_config, settings, verbose=args.get("verbose", False))
            return 0
    except ConfigError as exc:
        LOGGER.error(one_line(exc))
        return 2
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    if not args.get("verbose"):
        logging.getLogger("flwr").setLevel(logging.WARNING)
    import ray

    if resume is not None:  # a killed run may have left a temp file of a write it never finished
        remove_stale_temp_files(out_dir)
    owns_ray = not ray.is_initialized()  # a caller (e.g. a test) may have connected already
    # The app's data loads while Ray starts (each takes seconds); data that cannot be read is still bad input.
    loader = ThreadPoolExecutor(max_workers=1)
    try:
        loading = loader.submit(prepare_shared, app, run_config, settings.pool_size)
        # Next in that thread, the partitions' label distribution (seconds for 100 clients): written as soon as
        # the data is ready (a killed run has it too), beside Ray's start and the first round, not before them.
        loader.submit(_draw_partitions, loading, app, run_config, settings.pool_size, out_dir)
        if owns_ray:
            _start_ray(args["address"])
        try:
            shared_values = loading.result()
        except ConfigError as exc:
            if owns_ray:
                ray.shutdown()
            LOGGER.error(one_line(exc))
            return 2
        where = f"resuming after round {resume.round}" if resume else "starting"
        print(f"{where}: app {app.name} with {settings.pool_size} nodes; checkpoints, metrics and plots in {out_dir}")
        describe = {"app": app.name, "app_dir": app.directory, "run_config": run_config, "settings": settings.to_dict()}
        # The checkpoint first: with one every round, a round printed is a round saved. The trackers (MLflow,
        # W&B) last: they log the files the others write.
        callbacks = [
            CheckpointWriter(out_dir, args["checkpoint_every"]),
            ProgressPrinter(),
            MetricsWriter(out_dir, describe),
            TensorBoardWriter(out_dir),
            MetricsPlotter(out_dir, app.name),
        ]
        trackers = []
        if args.get("mlflow_experiment") or args.get("wandb_mode"):
            params = run_params(run_config, settings.to_dict())
            if args.get("mlflow_experiment"):
                trackers.append(MlflowLogger(*args["mlflow_experiment"], out_dir, params))
            if args.get("wandb_mode"):
                mode, why = args["wandb_mode"]
                trackers.append(WandbLogger(args["wandb"], mode, out_dir, params))
                if why:
                    print(f"note: {why} into {out_dir}/wandb: wandb sync {out_dir}/wandb/offline-run-* uploads it")
        callbacks += trackers
        try:
            try:
                run_app(app, run_config, settings, resume=resume, shared_values=shared_values, callbacks=callbacks)
            except BaseException as exc:
                for tracker in trackers:
                    tracker.end("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
                raise
        except ConfigError as exc:  # e.g. a cluster joined with --address that cannot fit one client
            LOGGER.error(one_line(exc))
            return 2
        except (ClientAppError, NodeLostError) as exc:  # the fault policy stopped the run: say where to go on
            LOGGER.error(f"run stopped: {exc}")
            if os.path.exists(os.path.join(out_dir, CHECKPOINT_FILE)):
                LOGGER.info(f"its last checkpoint is in {out_dir}: continue with {PROG} --resume {out_dir}")
            return 1
        finally:
            if owns_ray:
                ray.shutdown()
    finally:
        loader.shutdown()  # a short run may end before its partition files are written: they are waited for
    return 0
