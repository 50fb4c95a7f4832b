"""The Tune trainable: one fl_core run of the app per trial, with its data shared through the object store."""

from __future__ import annotations

import functools
import logging
import shutil
import tempfile

from fl_core.callbacks import Callback
from fl_core.logs import show_on_stderr
from fl_core.metrics import client_evaluation_metrics
from fl_sweep.resources import ResourcePlan, client_slots, trial_resources
from fl_sweep.spec import SweepSpec, trials

# Data sets the driver builds and shares per @shared function at most; trials build the others themselves.
MAX_SHARED_DATASETS = 8

# ---------------------------------------------------------------------------
# Data


def share_data(spec: SweepSpec) -> list:
    """The app's @shared data for the sweep's trials, built once each here (before Ray starts).

    Each combination of swept values that needs data no value built so far fits
    (a value fits every trial that agrees on the run-config keys its function
    read) gets its own, up to MAX_SHARED_DATASETS per function. A value that
    depends on a key swept over a range (uniform/loguniform) would fit almost
    no trial: trials then build that function's data themselves.
    """
    from fl_core import shared_data
    from fl_core.runner import bad_data_is_bad_input, import_app

    app = spec.app()
    import_app(app)
    ranged = {k for k, e in spec.search.items() if e["kind"] in ("uniform", "loguniform")}
    values: list = []
    given_up: set[str] = set()
    for _, settings, run_config in trials(spec):
        for function in shared_data.registered():
            if function.name in given_up or any(
                v.answers(function.name, run_config, settings.pool_size) for v in values
            ):
                continue
            with bad_data_is_bad_input():
                value = shared_data.compute_for(function, run_config, settings.pool_size)
            if value is None:  # another app's loader (this process imported more than one app)
                continue
            if ranged & set(value.inputs) or sum(v.function == function.name for v in values) >= MAX_SHARED_DATASETS:
                given_up.add(function.name)
            else:
                values.append(value)
    return [v for v in values if v.function not in given_up]


# ---------------------------------------------------------------------------
# The trainable (runs in a Tune trial)


def _report(metrics: dict, state) -> None:
    """One tune.report, with a checkpoint of `state` (written to a fresh temp dir that Tune copies) when given."""
    from ray import tune

    from fl_core import save_checkpoint

    if state is None:
        tune.report(metrics)
        return
    directory = tempfile.mkdtemp(prefix="fedsweep-ckpt-")
    try:
        save_checkpoint(state, directory)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))
    finally:
        shutil.rmtree(directory, ignore_errors=True)


class TuneReporter(Callback):
    """Reports every round to Tune, with a checkpoint every `checkpoint_every` rounds and at the last round.

    The last round waits for the all-node evaluation, so that its report carries
    the clients_* statistics too. A strategy that loops itself has no state to
    checkpoint: its rounds are reported without one.
    """

    def __init__(self, checkpoint_every: int = 1) -> None:
        """Nothing held back yet."""
        self.checkpoint_every = checkpoint_every
        self.held = None

    def on_round_end(self, event) -> None:
        """Report the round (the last one: keep it for on_run_end)."""
        if event.num_rounds is not None and event.round >= event.num_rounds:
            self.held = event
        else:
            _report(dict(event.metrics), event.state if event.round % self.checkpoint_every == 0 else None)

    def on_run_end(self, event) -> None:
        """Report the final round with the all-node evaluation's statistics, and its checkpoint."""
        if self.held is None:
            if not (event.client_evaluation and event.history):  # resumed after the final round: reported
                return
            metrics = dict(event.history[-1])  # a strategy that loops itself: its last round again
        else:
            metrics = dict(self.held.metrics)
        metrics.update(client_evaluation_metrics(event.client_evaluation))
        _report(metrics, event.state)


def fedsweep_trial(
    config: dict,
    shared_values: list,
    plan: ResourcePlan,
    app_dir: str,
    checkpoint_every: int = 1,
    verbose: bool = False,
) -> None:
    """Tune function trainable: one fl_core run, resumed from the trial's last checkpoint if any.

    `config` holds the trial's sampled values only; the fixed ones come with `plan`. `verbose` is
    the sweep's --verbose: fedsweep's debug messages and Flower's info logging.
    """
    from ray import tune

    from fl_core import load_app_folder, load_checkpoint, run_app
    from fl_core.apps import ROUNDS_KEY

    show_on_stderr("fl_core", verbose)  # the trial's warnings (a client's failed attempt) as a run alone prints them
    if not verbose:
        logging.getLogger("flwr").setLevel(logging.WARNING)
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)  # a line per checkpoint otherwise
    settings, run_config = plan.trial(config)
    # The pool then uses exactly the K client bundles of this trial's placement group.
    settings.max_parallel_clients = client_slots(settings, run_config, plan)
    resume = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            resume = load_checkpoint(directory)
        if resume.round >= run_config.get(ROUNDS_KEY, resume.round + 1):
            return
    run_app(
        load_app_folder(app_dir),
        run_config,
        settings,
        resume=resume,
        shared_values=shared_values,
        callbacks=[TuneReporter(checkpoint_every)],
    )


def make_trainable(spec: SweepSpec, shared_values: list, verbose: bool = False):
    """The trainable as Tune sees it: shared data by object-store reference, resources from the trial's config."""
    from ray import tune

    plan = spec.plan()
    transfer = [value.for_transfer() for value in shared_values]  # the refs only, not the data again
    trainable = tune.with_parameters(
        fedsweep_trial,
        shared_values=transfer,
        plan=plan,
        app_dir=spec.app_dir,
        checkpoint_every=spec.checkpoint_every,
        verbose=verbose,
    )
    return tune.with_resources(trainable, functools.partial(trial_resources, plan=plan))
