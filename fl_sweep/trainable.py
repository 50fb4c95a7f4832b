"""The Tune trainable: one fl_core simulation per trial, with the data shared through the object store."""

from __future__ import annotations

import functools
import itertools
import json
import logging
import os
import shutil
import tempfile

from fl_core.config import SimConfig
from fl_sweep.resources import ResourcePlan, client_slots, trial_resources
from fl_sweep.spec import CLIENT_EVAL_KEYS, DATA_KEYS, MAX_SHARED_DATASETS, SweepSpec

# ---------------------------------------------------------------------------
# Data


def swept_data_keys(spec: SweepSpec) -> tuple[str, ...]:
    """Swept settings that change the data, in a fixed order."""
    return tuple(k for k in DATA_KEYS if k in spec.search)


def data_key(config: dict, keys: tuple[str, ...]) -> str:
    """Identifies the data set a trial needs: its values of the swept data settings."""
    return json.dumps({k: config.get(k) for k in keys}, sort_keys=True)


def shared_data_configs(spec: SweepSpec) -> dict[str, SimConfig] | None:
    """Data key -> config to load, for every data set the driver shares; None when trials load their own."""
    keys = swept_data_keys(spec)
    if any(spec.search[k]["kind"] not in ("grid", "choice") for k in keys):
        return None
    combos = [dict(zip(keys, c)) for c in itertools.product(*(spec.search[k]["values"] for k in keys))]
    if len(combos) > MAX_SHARED_DATASETS:
        return None
    return {data_key(c, keys): SimConfig.from_dict({**spec.fixed, **c}) for c in combos}


def load_shared_data(spec: SweepSpec) -> dict:
    """Data key -> FederatedData for the data sets the driver shares (empty when trials load their own).

    Also pins CIFAR-10's folder as an absolute path in `spec.fixed`: trials run
    in their own working directories, where a relative default would miss it.
    """
    from fl_core.data import DEFAULT_DATA_DIR, load_cifar10, load_federated_data

    datasets = spec.search["dataset"]["values"] if "dataset" in spec.search else [spec.fixed["dataset"]]
    if "cifar10" in datasets:
        spec.fixed["data_dir"] = os.path.abspath(spec.fixed["data_dir"] or DEFAULT_DATA_DIR)
    configs = shared_data_configs(spec)
    if configs is None:
        if "cifar10" in datasets:
            load_cifar10(spec.fixed["data_dir"])  # trials load their own: check (or download) it once here
        return {}
    return {key: load_federated_data(config) for key, config in configs.items()}


# ---------------------------------------------------------------------------
# The trainable (runs in a Tune trial)


def _test_hooks(trial_id: str, round_: int) -> None:
    """Test-only: inject one failure at round 2, and log every finished round (see module docstring)."""
    marker = os.environ.get("FEDSWEEP_TEST_FAIL_ONCE")
    if marker and round_ == 2:
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # atomic: only one trial fails
        except FileExistsError:
            pass
        else:
            os.write(fd, trial_id.encode())
            os.close(fd)
            raise RuntimeError(f"FEDSWEEP_TEST_FAIL_ONCE: injected failure in round 2 of trial {trial_id}")
    log = os.environ.get("FEDSWEEP_TEST_ROUND_LOG")
    if log:
        with open(log, "a") as f:
            f.write(f"{trial_id},{round_}\n")


def _report(metrics: dict, state) -> None:
    """One tune.report with a checkpoint of `state` (written to a fresh temp dir that Tune copies)."""
    from ray import tune

    from fl_core import save_checkpoint

    directory = tempfile.mkdtemp(prefix="fedsweep-ckpt-")
    try:
        save_checkpoint(state, directory)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _make_reporter(trial_id: str):
    """The fl_core callback that reports each round to Tune (built here so fl_core is imported in the trial)."""
    from fl_core import Callback

    class TuneReporter(Callback):
        """Reports every round; the last round waits for the all-client evaluation to report it too."""

        def __init__(self) -> None:
            """Nothing held back yet."""
            self.last_round = None

        def on_round_end(self, event) -> None:
            """Report the round with its checkpoint (the last one: keep it for on_run_end)."""
            _test_hooks(trial_id, event.round)
            if event.round < event.num_rounds:
                _report(dict(event.metrics), event.state)
            else:
                self.last_round = event

        def on_run_end(self, event) -> None:
            """Report the final round with the per-client evaluation summary."""
            if self.last_round is None:  # resumed after the final round: already reported
                return
            metrics = dict(self.last_round.metrics)
            metrics.update({f"client_acc_{k}": event.client_evaluation.get(k) for k in CLIENT_EVAL_KEYS})
            _report(metrics, event.state)

    return TuneReporter()


def fedsweep_trial(config: dict, data_refs: dict, data_keys: tuple, plan: ResourcePlan) -> None:
    """Tune function trainable: one fl_core simulation, resumed from the trial's last checkpoint if any.

    `config` holds the trial's sampled values only; the fixed settings come with `plan`.
    """
    from ray import tune

    from fl_core import load_checkpoint, load_federated_data, run_simulation

    logging.getLogger("flwr").setLevel(logging.WARNING)
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)  # a line per checkpoint otherwise
    sim = plan.sim_config(config)
    # The pool then uses exactly the K client bundles of this trial's placement group.
    sim.max_parallel_clients = client_slots(sim, plan)
    resume = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            resume = load_checkpoint(directory)
        if resume.round >= sim.num_rounds:
            return
    data_ref = data_refs.get(data_key(config, data_keys))
    data = load_federated_data(sim) if data_ref is None else None  # swept data keys without a shared copy
    reporter = _make_reporter(tune.get_context().get_trial_id())
    run_simulation(sim, data=data, data_ref=data_ref, resume=resume, callbacks=[reporter])


def make_trainable(spec: SweepSpec, data_refs: dict):
    """The trainable as Tune sees it: data via the object store, resources from the trial's config."""
    from ray import tune

    plan = ResourcePlan.of(spec)
    trainable = tune.with_parameters(fedsweep_trial, data_refs=data_refs, data_keys=swept_data_keys(spec), plan=plan)
    return tune.with_resources(trainable, functools.partial(trial_resources, plan=plan))
