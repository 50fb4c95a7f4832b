"""A sweep's MLflow logging: Ray Tune's MLflow callback, one MLflow run per trial, with every parameter.

Imported only for `tune_search --mlflow` (it imports Tune's MLflow integration,
which needs mlflow). The experiment is opened, and the store checked, before Ray
starts (fl_core.tracking.open_experiment).
"""

from __future__ import annotations

from ray.air.integrations.mlflow import MLflowLoggerCallback

from fl_core.tracking import run_params, store
from fl_sweep.resources import ResourcePlan


class SweepMlflowLogger(MLflowLoggerCallback):
    """Tune's MLflowLoggerCallback, whose runs also carry each trial's whole run config and engine settings.

    Tune logs a trial's sampled values (its config) as parameters; a trial is
    also every fixed setting, logged here as `run_config.KEY` and `engine.NAME`
    (fl_core.tracking.run_params, as a run alone logs them).
    """

    def __init__(self, mlflow: str, experiment_name: str, plan: ResourcePlan) -> None:
        super().__init__(tracking_uri=store(mlflow)[0], experiment_name=experiment_name,
                         tags={"fedsweep.sweep": experiment_name})
        self.plan = plan

    def log_trial_start(self, trial) -> None:
        """Start (or go on with) the trial's MLflow run and log all its parameters."""
        super().log_trial_start(trial)
        settings, run_config = self.plan.trial(trial.config)
        self.mlflow_util.log_params(run_id=self._trial_runs[trial],
                                    params_to_log=run_params(run_config, settings.to_dict()))
