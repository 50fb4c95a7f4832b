"""Experiment tracking: MLflow (`--mlflow`) and Weights & Biases (`--wandb`), checked before Ray starts.

The callbacks here log a run alone; sweeps log through Ray Tune's own MLflow
and W&B callbacks (fl_sweep.tracking).

MLflow. `--mlflow` takes an MLflow tracking URI (`http://host:5000`,
`sqlite:///path.db`, `databricks`, ...) or a folder. A folder becomes a SQLite
store in it (`FOLDER/mlflow.db`, artifacts in `FOLDER/artifacts`): MLflow 3
refuses its old file store, and SQLite is what it recommends for a local one
(`mlflow ui --backend-store-uri sqlite:///FOLDER/mlflow.db` shows it). For
sweeps this module only opens the experiment, so that a store that cannot be
reached is one line before Ray starts.

W&B. `--wandb PROJECT` logs online when an API key is set (WANDB_API_KEY or
`wandb login`) and W&B's server answers, else offline into the run's folder
(`wandb sync` uploads it later), with one line saying why; WANDB_MODE, when
set, decides.
"""

from __future__ import annotations

import importlib.util
import json
import netrc
import os
import shutil
import socket
import time
from contextlib import contextmanager
from urllib.parse import urlparse

from fl_core.callbacks import Callback, RoundEnd, RunEnd, finite_numbers, last_round, round_values
from fl_core.metrics import client_evaluation_metrics
from fl_core.settings import ConfigError


def add_tracking_flags(parser, what: str, named_after: str, where: str) -> None:
    """--mlflow and --wandb on `parser`: `what` is logged, its MLflow experiment `named_after`, offline W&B `where`."""
    parser.add_argument(
        "--mlflow",
        metavar="URI",
        help=f"log {what} to MLflow, in an experiment named after "
        f"{named_after}: a tracking URI (http://host:5000, sqlite:///file.db, ...) or a folder (a "
        "SQLite store in it). Needs pip install 'fedsweep[mlflow]'",
    )
    parser.add_argument(
        "--wandb",
        metavar="PROJECT",
        help=f"log {what} to this Weights & Biases project: online "
        f"with an API key and a reachable server, else offline into {where} (wandb sync uploads it "
        "later). Needs pip install 'fedsweep[wandb]'",
    )


RUN_FILE = "mlflow_run.json"  # in a run's folder: the MLflow run a resumed run goes on logging to
ARTIFACTS = ("summary.json", "metrics.csv", "metrics.png", "partitions.csv", "partitions.png")
CHECK_TIMEOUT_S = "10"  # an unreachable server is reported after this, not after MLflow's minutes of retries


def previous_run(path: str, key: str, value: str) -> str | None:
    """The run id a run folder's `path` file (remember_run) holds, if it was saved for the same `key` `value`."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        saved = json.load(f)
    return saved["run_id"] if saved.get(key) == value else None


def remember_run(path: str, key: str, value: str, run_id: str) -> None:
    """Save the tracked run's id in the run folder, for a resumed run to go on with it."""
    with open(path, "w") as f:
        json.dump({key: value, "run_id": run_id}, f)


def run_files(directory: str) -> list[str]:
    """The run folder's files a tracker uploads with the run (those that exist)."""
    return [p for p in (os.path.join(directory, name) for name in ARTIFACTS) if os.path.exists(p)]


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
        raise ConfigError(
            f"--mlflow {value}: the MLflow tracking store {uri} cannot be used ({first}): start the "
            "server, or give a reachable URI or a folder"
        ) from None


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
        saved = os.path.join(directory, RUN_FILE)
        self.run_id = previous_run(saved, "tracking_uri", client.tracking_uri)
        if self.run_id is not None:
            self.client.update_run(self.run_id, status="RUNNING")
            return
        run = client.create_run(experiment_id, run_name=os.path.basename(os.path.abspath(directory)))
        self.run_id = run.info.run_id
        self._log(params=params)
        os.makedirs(directory, exist_ok=True)
        remember_run(saved, "tracking_uri", client.tracking_uri, self.run_id)

    def _log(self, metrics: dict | None = None, step: int = 0, params: dict | None = None) -> None:
        from mlflow.entities import Metric, Param  # mlflow and wandb are optional: imported only when asked for

        now = int(time.time() * 1000)
        self.client.log_batch(
            self.run_id,
            metrics=[Metric(k, v, now, step) for k, v in finite_numbers(metrics or {}).items()],
            params=[Param(k, str(v)) for k, v in (params or {}).items()],
        )

    def on_round_end(self, event: RoundEnd) -> None:
        """Log the round's numbers at step = round."""
        self._log(round_values(event.metrics), event.round)

    def on_run_end(self, event: RunEnd) -> None:
        """Log the all-node evaluation and the run folder's files. (Runs after the writers of those files.)"""
        self._log(client_evaluation_metrics(event.client_evaluation), last_round(event))
        for path in run_files(self.directory):
            self.client.log_artifact(self.run_id, path)
        self.end("FINISHED")

    def end(self, status: str) -> None:
        """Mark the MLflow run ended (FINISHED, FAILED or KILLED)."""
        self.client.set_terminated(self.run_id, status=status)


def run_params(run_config: dict, settings: dict) -> dict:
    """A run's MLflow parameters: `run_config.KEY` and `engine.NAME`."""
    return {**{f"run_config.{k}": v for k, v in run_config.items()}, **{f"engine.{k}": v for k, v in settings.items()}}


WANDB_RUN_FILE = "wandb_run.json"  # in a run's folder: the W&B run a resumed run goes on logging to


def wandb_mode(project: str) -> tuple[str, str | None]:
    """("online" or "offline" (or WANDB_MODE's value), a line saying why it is offline, else None).

    ConfigError when wandb is not installed or the project name is empty.
    """
    if importlib.util.find_spec("wandb") is None:
        raise ConfigError("--wandb needs the wandb package: pip install 'fedsweep[wandb]'")
    if not project.strip():
        raise ConfigError("--wandb needs a W&B project name, got an empty one")
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"], None
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    if not os.environ.get("WANDB_API_KEY") and not _netrc_login(host):
        return "offline", "W&B: no API key (WANDB_API_KEY or `wandb login`), logging offline"
    try:
        socket.create_connection((host, 443), timeout=3).close()
    except OSError:
        return "offline", f"W&B: {host} cannot be reached, logging offline"
    return "online", None


def _netrc_login(host: str) -> bool:
    """Whether `wandb login` left a key for `host` in the netrc file."""
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


class WandbLogger(Callback):
    """Logs a run alone to W&B: its parameters as the run's config, every round's numbers, its files.

    The same numbers as MlflowLogger, the round as W&B's step; the run folder's
    files go with the run. A resumed run goes on with the W&B run of its folder
    (`wandb_run.json`).
    """

    def __init__(self, project: str, mode: str, directory: str, params: dict) -> None:
        import wandb

        os.makedirs(directory, exist_ok=True)
        self.directory = directory
        saved = os.path.join(directory, WANDB_RUN_FILE)
        run_id = previous_run(saved, "project", project)
        self.run = wandb.init(
            project=project,
            dir=directory,
            name=os.path.basename(os.path.abspath(directory)),
            id=run_id,
            resume="allow" if run_id else None,
            config=params,
            mode=mode,
            settings=wandb.Settings(silent=True),
        )
        remember_run(saved, "project", project, self.run.id)

    def on_round_end(self, event: RoundEnd) -> None:
        """Log the round's numbers at step = round."""
        self.run.log(round_values(event.metrics), step=event.round)

    def on_run_end(self, event: RunEnd) -> None:
        """Log the all-node evaluation into the summary and the run folder's files; finish the W&B run."""
        self.run.summary.update(finite_numbers(client_evaluation_metrics(event.client_evaluation)))
        for path in run_files(self.directory):  # copies in the run's files folder go up with the run
            shutil.copy(path, self.run.dir)
        self.end("FINISHED")

    def end(self, status: str) -> None:
        """Finish the W&B run (exit code 1 unless FINISHED)."""
        self.run.finish(exit_code=0 if status == "FINISHED" else 1)
