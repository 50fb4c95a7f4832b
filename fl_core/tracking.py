"""MLflow tracking (`--mlflow`): where a run is logged, checked before Ray starts, and the callback of a run alone.

`--mlflow` takes an MLflow tracking URI (`http://host:5000`, `sqlite:///path.db`,
`databricks`, ...) or a folder. A folder becomes a SQLite store in it
(`FOLDER/mlflow.db`, artifacts in `FOLDER/artifacts`): MLflow 3 refuses its old
file store, and SQLite is what it recommends for a local one
(`mlflow ui --backend-store-uri sqlite:///FOLDER/mlflow.db` shows it). Sweeps log
through Ray Tune's own MLflow callback (fl_sweep); this module only opens the
experiment for them, so that a store that cannot be reached is one line before
Ray starts.
"""

from __future__ import annotations

import json
import math
import os
import time
from contextlib import contextmanager

from fl_core.callbacks import Callback, RoundEnd, RunEnd
from fl_core.metrics import CENTRAL_ROUND, client_evaluation_metrics, model_metrics, scored_round
from fl_core.settings import ConfigError

RUN_FILE = "mlflow_run.json"  # in a run's folder: the MLflow run a resumed run goes on logging to
ARTIFACTS = ("summary.json", "metrics.csv", "metrics.png", "partitions.csv", "partitions.png")
CHECK_TIMEOUT_S = "10"  # an unreachable server is reported after this, not after MLflow's minutes of retries


def store(value: str) -> tuple[str, str | None]:
    """(tracking URI, artifact location for new experiments, None for the store's default) of a --mlflow value."""
    if "://" in value or value.startswith("databricks"):
        return value, None
    folder = os.path.abspath(value)
    return f"sqlite:///{os.path.join(folder, 'mlflow.db')}", os.path.join(folder, "artifacts")


@contextmanager
def _quick_requests():
    """Within the block, MLflow's HTTP requests fail fast (one try, a short timeout) unless the user set them."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", CHECK_TIMEOUT_S)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def open_experiment(value: str, name: str):
    """(MlflowClient, experiment id) of experiment `name` in the --mlflow store, created if new.

    ConfigError in one line when mlflow is not installed or the store cannot be used.
    """
    try:
        from mlflow import MlflowClient
    except ImportError:
        raise ConfigError("--mlflow needs the mlflow package: pip install 'fedsweep[mlflow]'") from None
    uri, artifacts = store(value)
    try:
        if artifacts is not None:
            os.makedirs(os.path.dirname(artifacts), exist_ok=True)
        with _quick_requests():
            client = MlflowClient(uri)
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                return client, client.create_experiment(name, artifact_location=artifacts)
            return client, experiment.experiment_id
    except Exception as exc:  # MLflow raises many kinds: connection, permission, a store it cannot read
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ConfigError(f"--mlflow {value}: the MLflow tracking store {uri} cannot be used ({first}): start the "
                          "server, or give a reachable URI or a folder") from None


def numbers(values: dict) -> dict:
    """The finite numbers of `values` (bools and anything else left out)."""
    return {k: float(v) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


class MlflowLogger(Callback):
    """Logs a run alone to MLflow: its parameters, every round's numbers (the round as the step), its files.

    Parameters are the run config (as `run_config.KEY`) and the engine's
    settings (`engine.NAME`). Per round: what metrics.csv holds (a central
    metric only at the rounds that measured it); at the end the all-node
    evaluation's `clients_*` and the run folder's summary, metrics and plots as
    artifacts. A resumed run goes on logging to the MLflow run of its folder.
    """

    def __init__(self, client, experiment_id: str, directory: str, params: dict) -> None:
        self.client, self.directory = client, directory
        self._last_round = 0
        saved = os.path.join(directory, RUN_FILE)
        previous = None
        if os.path.exists(saved):
            with open(saved) as f:
                previous = json.load(f)
        if previous and previous.get("tracking_uri") == client.tracking_uri:
            self.run_id = previous["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
            return
        run = client.create_run(experiment_id, run_name=os.path.basename(os.path.abspath(directory)))
        self.run_id = run.info.run_id
        self._log(params=params)
        os.makedirs(directory, exist_ok=True)
        with open(saved, "w") as f:
            json.dump({"tracking_uri": client.tracking_uri, "run_id": self.run_id}, f)

    def _log(self, metrics: dict | None = None, step: int = 0, params: dict | None = None) -> None:
        from mlflow.entities import Metric, Param

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in numbers(metrics or {}).items()],
                              params=[Param(k, str(v)) for k, v in (params or {}).items()])

    def on_round_end(self, event: RoundEnd) -> None:
        """Log the round's numbers at step = round."""
        m, model = event.metrics, model_metrics(event.metrics)
        self._last_round = event.round
        self._log({k: v for k, v in m.items() if k not in ("round", CENTRAL_ROUND)
                   and (k not in model or scored_round(m, k) == m["round"])}, event.round)

    def on_run_end(self, event: RunEnd) -> None:
        """Log the all-node evaluation and the run folder's files. (Runs after the writers of those files.)"""
        self._log(client_evaluation_metrics(event.client_evaluation), self._last_round or len(event.history))
        for name in ARTIFACTS:
            path = os.path.join(self.directory, name)
            if os.path.exists(path):
                self.client.log_artifact(self.run_id, path)
        self.end("FINISHED")

    def end(self, status: str) -> None:
        """Mark the MLflow run ended (FINISHED, FAILED or KILLED)."""
        self.client.set_terminated(self.run_id, status=status)


def run_params(run_config: dict, settings: dict) -> dict:
    """A run's MLflow parameters: `run_config.KEY` and `engine.NAME`."""
    return {**{f"run_config.{k}": v for k, v in run_config.items()}, **{f"engine.{k}": v for k, v in settings.items()}}
