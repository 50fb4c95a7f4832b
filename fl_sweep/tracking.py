"""A sweep's tracking: Ray Tune's MLflow and W&B callbacks, one tracked run per trial, with every parameter.

Imported only for `tune_search --mlflow/--wandb`. The MLflow experiment is
opened, and the store checked, before Ray starts (fl_core.tracking.open_experiment);
W&B's mode is decided then too (fl_core.tracking.wandb_mode).
"""

from __future__ import annotations

from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.air.integrations.wandb import WandbLoggerCallback

from fl_core.tracking import run_params, store
from fl_sweep.resources import ResourcePlan


class SweepMlflowLogger(MLflowLoggerCallback):
    """Tune's MLflowLoggerCallback, whose runs also carry each trial's whole run config and engine settings.

    Tune logs a trial's sampled values (its config) as parameters; a trial is
    also every fixed setting, logged here as `run_config.KEY` and `engine.NAME`
    (fl_core.tracking.run_params, as a run alone logs them).
    """

    def __init__(self, mlflow: str, experiment_name: str, plan: ResourcePlan) -> None:
        super().__init__(
            tracking_uri=store(mlflow)[0], experiment_name=experiment_name, tags={"fedsweep.sweep": experiment_name}
        )
        self.plan = plan

    def log_trial_start(self, trial) -> None:
        """Start (or go on with) the trial's MLflow run and log all its parameters."""
        super().log_trial_start(trial)
        settings, run_config = self.plan.trial(trial.config)
        self.mlflow_util.log_params(
            run_id=self._trial_runs[trial], params_to_log=run_params(run_config, settings.to_dict())
        )


class SweepWandbLogger(WandbLoggerCallback):
    """Tune's WandbLoggerCallback: a W&B run per trial, grouped by the sweep, its config the trial's whole config.

    `mode` is fl_core.tracking.wandb_mode's; offline runs go into `directory`
    (the experiment folder's `wandb/`, `wandb sync` uploads them later).
    """

    def __init__(self, project: str, group: str, mode: str, directory: str | None, plan: ResourcePlan) -> None:
        import wandb

        super().__init__(project=project, group=group, mode=mode, dir=directory, settings=wandb.Settings(silent=True))
        self.plan = plan

    def _start_logging_actor(self, trial, exclude_results, **wandb_init_kwargs) -> None:
        # The one place the W&B run's config is handed over (Ray is pinned to one version: see pyproject).
        settings, run_config = self.plan.trial(trial.config)
        wandb_init_kwargs["config"] = {
            **wandb_init_kwargs.get("config", {}),
            **run_params(run_config, settings.to_dict()),
        }
        super()._start_logging_actor(trial, exclude_results, **wandb_init_kwargs)

    def log_trial_end(self, trial, failed: bool = False) -> None:
        """End the trial's W&B run and wait until its logging actor has finished writing it.

        Tune's callback only waits at the experiment's end; a sweep's last trial
        was seen to lose its whole W&B run there (1 of 4 offline sweeps here).
        """
        import ray

        future = self._trial_logging_futures.get(trial)
        super().log_trial_end(trial, failed)
        if future is not None:
            ray.wait([future], timeout=self._upload_timeout)
            self._cleanup_logging_actors()
