"""Tune objects and the run itself: search space, scheduler, run config, starting Ray, fitting or restoring."""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import time

from fl_core.apps import ROUNDS_KEY
from fl_core.metrics import is_model_metric
from fl_core.settings import RAY_SYSTEM_CONFIG, ConfigError
from fl_sweep.partitions import draw_partitions
from fl_sweep.resources import check_fits
from fl_sweep.spec import SweepSpec, combinations
from fl_sweep.storage import is_uri, write_marker
from fl_sweep.trainable import make_trainable

SEARCH_ALGS = ("grid", "random", "optuna")
SCHEDULERS = ("fifo", "asha")
# How often (s) Tune snapshots the experiment state: it decides how much is redone after the driver dies.
EXPERIMENT_SNAPSHOT_S = "1"

# ---------------------------------------------------------------------------
# Tune objects


def param_space(spec: SweepSpec) -> dict:
    """The swept settings as Tune domains (fixed ones travel with the trainable: short trial configs)."""
    from ray import tune

    space = {}
    for key, entry in spec.search.items():
        kind, values = entry["kind"], entry["values"]
        integer = isinstance(values[0], int) and not isinstance(values[0], bool)  # values have the key's type
        if kind == "grid" and spec.search_alg == "grid":
            space[key] = tune.grid_search(values)
        elif kind in ("grid", "choice"):
            space[key] = tune.choice(values)
        elif kind == "uniform":
            space[key] = tune.randint(values[0], values[1] + 1) if integer else tune.uniform(*values)
        else:
            space[key] = tune.lograndint(values[0], values[1] + 1) if integer else tune.loguniform(*values)
    return space


def trial_dirname(trial) -> str:
    """Short trial folder names (Tune's default embeds every swept value)."""
    return f"trial_{trial.trial_id}"


def tune_config(spec: SweepSpec):
    """TuneConfig: metric, search algorithm, scheduler, samples, concurrency."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    if spec.search_alg == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        searcher = OptunaSearch(seed=spec.search_seed)
    else:
        searcher = BasicVariantGenerator(random_state=spec.search_seed)
    scheduler = None
    if spec.scheduler == "asha":
        rounds = spec.run_config[ROUNDS_KEY]
        scheduler = ASHAScheduler(time_attr="round", max_t=rounds, grace_period=min(spec.asha_grace_rounds, rounds))
    return tune.TuneConfig(
        metric=spec.metric,
        mode=spec.mode,
        search_alg=searcher,
        scheduler=scheduler,
        num_samples=spec.num_samples,
        max_concurrent_trials=spec.max_concurrent_trials,
        trial_dirname_creator=trial_dirname,
        # Saves a worker start (imports of torch and Flower, seconds) per trial; a trial
        # whose thread does not end within Tune's timeout gets a fresh actor anyway.
        reuse_actors=True,
    )


def run_config(spec: SweepSpec, experiment: str, args: argparse.Namespace | None = None):
    """RunConfig: where results go, how many checkpoints stay, how often a crashed trial restarts, tracking."""
    from ray import tune

    storage, name = experiment.rstrip("/").rsplit("/", 1)
    callbacks = []
    if args is not None and args.mlflow:
        from fl_sweep.tracking import SweepMlflowLogger

        callbacks.append(SweepMlflowLogger(args.mlflow, name, spec.plan()))
    if args is not None and args.wandb:
        from fl_sweep.tracking import SweepWandbLogger

        folder = None if is_uri(experiment) else experiment  # W&B writes into its wandb/ folder
        callbacks.append(SweepWandbLogger(args.wandb, name, args.wandb_mode, folder, spec.plan()))
    return tune.RunConfig(
        name=name,
        storage_path=storage,
        checkpoint_config=tune.CheckpointConfig(num_to_keep=spec.keep_checkpoints),
        failure_config=tune.FailureConfig(max_failures=spec.max_failures),
        callbacks=callbacks,
        verbose=1,
    )


# ---------------------------------------------------------------------------
# Running a sweep


def start_ray(args: argparse.Namespace, spec: SweepSpec, fresh: bool) -> None:
    """Start local Ray in-process or join --address; for a new sweep on a cluster, size the defaults from it."""
    import ray

    # Snapshot the experiment state often so a killed driver loses at most a second of bookkeeping.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", EXPERIMENT_SNAPSHOT_S)
    # Tune also forces a snapshot every --keep-checkpoints reports and warns when that is frequent: expected here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Trials run in the driver's working directory (Tune propagates this to them), so an app's relative
    # paths (data-dir...) mean what they mean for python -m fl_core.
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    level = logging.INFO if args.verbose else logging.WARNING
    if args.address is None:
        kwargs = {"_temp_dir": os.path.abspath(args.ray_temp_dir)} if args.ray_temp_dir else {}
        ray.init(
            num_cpus=os.cpu_count(),
            include_dashboard=False,
            logging_level=level,
            _system_config=RAY_SYSTEM_CONFIG,
            **kwargs,
        )
        return
    ray.init(address=args.address, logging_level=level)
    if fresh:
        total = ray.cluster_resources()
        spec.cluster_cpus, spec.cluster_gpus = total.get("CPU", 0.0), total.get("GPU", 0.0)
        plan = spec.plan()
        for combo in combinations(spec):
            check_fits(combo, plan)


class _GoneCheckpointFilter(logging.Filter):
    """Turns Tune's traceback for deleting an already-deleted checkpoint into one warning line.

    After a driver was killed, the restored experiment state may list a
    checkpoint that the killed run had already rotated out; Tune registers the
    new checkpoint first and then fails to delete the old one. Nothing is lost.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the matching record; let every other record through unchanged."""
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, FileNotFoundError) and "Error handling checkpoint" in str(record.msg):
            record.msg, record.args, record.exc_info = (
                "an old checkpoint was already deleted before the sweep was interrupted; nothing lost (%s)",
                (exc,),
                None,
            )
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def execute(args: argparse.Namespace, spec: SweepSpec, experiment: str, shared_values: list) -> dict:
    """Start Ray, run (or restore) the sweep, leave Ray shut down; returns its timings in seconds."""
    import ray
    from ray import tune

    from fl_core import shared_data

    t0 = time.perf_counter()
    start_ray(args, spec, fresh=not args.resume)
    timings = {"ray_start_s": time.perf_counter() - t0}
    try:
        shared_data.publish(shared_values)
        trainable = make_trainable(spec, shared_values, verbose=args.verbose)
        if args.resume:
            logging.getLogger("ray.tune.execution.tune_controller").addFilter(_GoneCheckpointFilter())
            tuner = tune.Tuner.restore(experiment, trainable=trainable, resume_errored=True)
        else:
            write_marker(experiment, spec)
            tuner = tune.Tuner(
                trainable,
                param_space=param_space(spec),
                tune_config=tune_config(spec),
                run_config=run_config(spec, experiment, args),
            )
        t0 = time.perf_counter()
        try:
            tuner.fit()
        except tune.TuneError as exc:
            missing = _missing_metric(str(exc), spec.metric)
            if missing is None:
                raise
            if not args.resume and not is_uri(experiment):
                shutil.rmtree(experiment, ignore_errors=True)  # made by this run, before any trial could finish
            raise ConfigError(missing) from None
        timings["sweep_s"] = time.perf_counter() - t0
        # After the trials, not beside them: drawing takes seconds of CPU the trials would lose.
        note = draw_partitions(spec, shared_values, experiment)
        if note:
            print(note)
    finally:
        ray.shutdown()
    return timings


def _missing_metric(error: str, metric: str) -> str | None:
    """For Tune's error on a trial result without the sweep's metric: what to do instead (else None).

    Only the first report shows what an app reports per round (an app that loops
    itself with strategy.start has no central_* metrics), so this is found once Ray runs.
    """
    if "did not include the specified metric" not in error:
        return None
    reported = sorted({key for key in re.findall(r"'([\w.-]+)'", error) if is_model_metric(key)} - {metric})
    return (
        f"the app reports no {metric} per round; it reports {', '.join(reported) or 'no model metrics'}: "
        "sweep one of those with --metric"
    )
