"""--mlflow and --wandb on both commands, against real stores.

MLflow: a local folder (SQLite) and an `mlflow server` started here, on
127.0.0.1 on a free port, its store and artifacts in the test's temp folder,
stopped (its whole process group) after the module. An unreachable server is in
tests/test_bad_input.py (one line, exit 2, before Ray).

W&B: offline, as on a machine without an API key (HOME, W&B's folders and the
netrc file point into the test's temp folder), read back from the offline runs'
`.wandb` files.
"""

from __future__ import annotations

import glob
import json
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
from tests.support.cluster import free_ports
from tests.support.sweeps import TINY, Run

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
    base = [
        "--dataset",
        "synthetic",
        "--synthetic-size",
        "400",
        "--pool-size",
        "4",
        "--fraction-train",
        "0.5",
        "--min-evaluate-nodes",
        "1",
        "--local-epochs",
        "1",
        "--checkpoint-dir",
        str(out),
        "--mlflow",
        str(store),
    ]
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
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{root}/mlflow.db",
            "--artifacts-destination",
            str(root / "artifacts"),
        ],
        cwd=root,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
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


# ---------------------------------------------------------------------------
# W&B, offline


def wandb_records(path: str) -> list:
    """The records of a W&B `.wandb` file: W&B's 7-byte header, then LevelDB's log format (32 KiB blocks of
    records, each a 7-byte header (CRC, length, type: full, first, middle, last) and its data)."""
    from wandb.proto import wandb_internal_pb2

    with open(path, "rb") as f:
        data = f.read()
    assert data[:4] == b":W&B", path
    at, block, chunks, pending = 7, 32768, [], b""
    while at + 7 <= len(data):
        if block - at % block < 7:  # a block's tail too short for a header is padding
            at += block - at % block
            continue
        length, kind = int.from_bytes(data[at + 4 : at + 6], "little"), data[at + 6]
        chunk, at = data[at + 7 : at + 7 + length], at + 7 + length
        if kind == 1:
            chunks.append(chunk)
        elif kind in (2, 3):
            pending = chunk if kind == 2 else pending + chunk
        elif kind == 4:
            chunks.append(pending + chunk)
    return [wandb_internal_pb2.Record.FromString(c) for c in chunks]


def offline_runs(folder) -> list[dict]:
    """Each offline W&B run under `folder`/wandb: its name, group, config and per-step history, oldest first."""
    runs = []
    for path in sorted(glob.glob(os.path.join(str(folder), "wandb", "offline-run-*", "*.wandb"))):
        run = {"files": sorted(os.listdir(os.path.join(os.path.dirname(path), "files"))), "history": {}}
        for record in wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                run.update(
                    name=record.run.display_name,
                    group=record.run.run_group,
                    project=record.run.project,
                    config={
                        i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.run.config.update
                    },
                )
            elif kind == "history":
                row = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
                run["history"][record.history.step.num] = row
        runs.append(run)
    return runs


def offline_env(tmp_path) -> dict:
    """This process's environment as on a machine where W&B was never logged in, its files in `tmp_path`."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_") and k not in ("NETRC", "RAY_ADDRESS")}
    return {**env, "HOME": str(home), "RAY_AUTH_MODE": "disabled"}


def test_a_run_without_a_wandb_api_key_logs_offline_into_its_folder(tmp_path):
    out = tmp_path / "run"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "fl_core",
            "--dataset",
            "synthetic",
            "--synthetic-size",
            "400",
            "--pool-size",
            "4",
            "--num-server-rounds",
            "2",
            "--checkpoint-dir",
            str(out),
            "--wandb",
            "fedsweep-test",
        ],
        cwd=tmp_path,
        env=offline_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert f"note: W&B: no API key (WANDB_API_KEY or `wandb login`), logging offline into {out}/wandb" in done.stdout
    (run,) = offline_runs(out)
    assert run["project"] == "fedsweep-test" and run["name"] == "run"
    assert run["config"]["run_config.num-server-rounds"] == 2 and run["config"]["engine.pool_size"] == 4
    table = pd.read_csv(out / "metrics.csv")
    assert sorted(run["history"]) == [1, 2]
    assert [run["history"][r]["central_accuracy"] for r in (1, 2)] == table["central_accuracy"].tolist()
    assert {"summary.json", "metrics.csv", "metrics.png"} <= set(run["files"])


def test_a_sweep_logs_each_trial_to_mlflow_and_to_wandb_offline(mlflow_server, tmp_path):
    """One sweep with both trackers (a sweep costs half a minute): an MLflow run per trial on a server, and,
    without a W&B API key, a W&B run per trial written offline."""
    run = Run(
        TINY
        + [
            "--grid",
            "local-epochs=1,2",
            "--storage-path",
            str(tmp_path / "results"),
            "--name",
            "tracked",
            "--mlflow",
            mlflow_server,
            "--wandb",
            "fedsweep-test",
        ]
    )
    run.env = {**offline_env(tmp_path), "FEDSWEEP_TEST_RUN_TAG": run.tag}
    code, output, leftovers = run.to_end()
    assert code == 0, output[-3000:]
    assert leftovers == []
    trials = pd.read_csv(tmp_path / "results" / "tracked" / "trials.csv")
    final = sorted(trials["final_central_accuracy"].tolist())

    client = MlflowClient(mlflow_server)
    runs = run_of(client, "tracked")  # the sweep's name
    assert len(runs) == len(trials) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    for found in runs:
        assert found.data.tags["fedsweep.sweep"] == "tracked"
        assert found.data.params["local-epochs"] == found.data.params["run_config.local-epochs"]  # swept and whole
        assert found.data.params["engine.pool_size"] == "4"
        assert [s for s, _ in steps(client, found.info.run_id, "central_accuracy")] == [1, 2]
    assert sorted(float(r.data.metrics["central_accuracy"]) for r in runs) == final

    assert "logging offline into" in output
    offline = offline_runs(tmp_path / "results" / "tracked")
    assert len(offline) == len(trials) == 2
    for found in offline:
        assert found["project"] == "fedsweep-test" and found["group"] == "tracked"
        assert found["config"]["local-epochs"] == found["config"]["run_config.local-epochs"]  # swept and whole
        assert sorted(found["history"]) == [1, 2] and "central_accuracy" in found["history"][2]
    assert sorted(r["history"][2]["central_accuracy"] for r in offline) == final
