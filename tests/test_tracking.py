"""--mlflow on both commands, against real stores: a local folder (SQLite) and an `mlflow server` started here.

The server listens on 127.0.0.1 on a free port, keeps its store and artifacts in
the test's temp folder, and is stopped (its whole process group) after the module.
An unreachable server is in tests/test_bad_input.py (one line, exit 2, before Ray).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request

import pandas as pd
import pytest
from mlflow import MlflowClient

from fl_core import cli, load_checkpoint
from tests.test_ray_cluster import free_ports
from tests.test_tune_search import TINY, Run

SERVER_START_S = 90


def run_of(client: MlflowClient, experiment: str) -> list:
    """The MLflow runs of `experiment`, oldest first."""
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no MLflow experiment {experiment}"
    return sorted(client.search_runs([found.experiment_id]), key=lambda r: r.info.start_time)


def steps(client: MlflowClient, run_id: str, metric: str) -> list[tuple[int, float]]:
    """(step, value) of a metric's history, in step order."""
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, metric))


def test_a_run_logs_to_a_local_store_and_its_resume_goes_on_in_the_same_mlflow_run(ray_local, tmp_path, capsys):
    out, store = tmp_path / "run", tmp_path / "mlruns"
    base = ["--dataset", "synthetic", "--synthetic-size", "400", "--pool-size", "4", "--fraction-train", "0.5",
            "--min-evaluate-nodes", "1", "--local-epochs", "1", "--checkpoint-dir", str(out), "--mlflow", str(store)]
    assert cli.main(base + ["--num-server-rounds", "2"]) == 0
    assert cli.main(["--resume", str(out), "--num-server-rounds", "3", "--mlflow", str(store)]) == 0
    capsys.readouterr()
    client = MlflowClient(f"sqlite:///{store}/mlflow.db")
    (run,) = run_of(client, "fedsweep-cifar10")  # the app's name; the resumption logged to the same run
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    table = pd.read_csv(out / "metrics.csv")
    assert steps(client, run.info.run_id, "central_accuracy") == list(zip(table["round"], table["central_accuracy"]))
    assert [s for s, _ in steps(client, run.info.run_id, "train_seconds")] == [1, 2, 3]
    assert run.data.params["run_config.num-server-rounds"] == "2" and run.data.params["engine.pool_size"] == "4"
    assert "clients_accuracy_mean" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"summary.json", "metrics.csv", "metrics.png", "partitions.csv"} <= artifacts
    assert str(client.get_experiment_by_name("fedsweep-cifar10").artifact_location).startswith(str(store))
    assert load_checkpoint(str(out)).round == 3


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """`mlflow server` on 127.0.0.1 (its own session), its store and artifacts in a temp folder; its URI."""
    root = tmp_path_factory.mktemp("mlflow-server")
    (port,) = free_ports(1)
    log = open(root / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--workers", "1", "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
                             "--artifacts-destination", str(root / "artifacts")],
                            cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + SERVER_START_S
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None and time.time() < deadline, (root / "server.log").read_text()[-3000:]
            time.sleep(0.5)
        yield uri
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the server and its workers: started here, in their own session
        proc.wait()
        log.close()


def test_a_sweep_logs_one_mlflow_run_per_trial_to_a_server(mlflow_server, tmp_path):
    code, output, leftovers = Run(TINY + ["--grid", "local-epochs=1,2", "--storage-path", str(tmp_path / "results"),
                                          "--name", "tracked", "--mlflow", mlflow_server]).to_end()
    assert code == 0, output[-3000:]
    assert leftovers == []
    client = MlflowClient(mlflow_server)
    runs = run_of(client, "tracked")  # the sweep's name
    trials = pd.read_csv(tmp_path / "results" / "tracked" / "trials.csv")
    assert len(runs) == len(trials) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    for run in runs:
        assert run.data.tags["fedsweep.sweep"] == "tracked"
        assert run.data.params["local-epochs"] == run.data.params["run_config.local-epochs"]  # swept and whole config
        assert run.data.params["engine.pool_size"] == "4"
        assert [s for s, _ in steps(client, run.info.run_id, "central_accuracy")] == [1, 2]
    assert sorted(float(r.data.metrics["central_accuracy"]) for r in runs) == \
        sorted(trials["final_central_accuracy"].tolist())
