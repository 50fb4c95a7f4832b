"""The apps in examples/: Flower's PyTorch template on fedsweep and on Flower's engine; SCAFFOLD's client state.

Also a strategy with a round loop of its own (tests/apps/own_loop), which fedsweep cannot take over.
"""

from __future__ import annotations

import copy
import csv
import os
import shutil
import signal
import subprocess
import sys
import tempfile

import numpy as np
import pytest
import torch

import fl_core
from fl_core.callbacks import CheckpointWriter
from tests.conftest import model_metrics, same_arrays

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(REPO, "examples", "quickstart-pytorch")
SCAFFOLD = os.path.join(REPO, "examples", "scaffold")
OWN_LOOP = os.path.join(REPO, "tests", "apps", "own_loop")
# Small enough for 2 cores; lr 0.1 and 2 epochs of plain SGD let SCAFFOLD learn the synthetic set in 4 rounds.
SCAFFOLD_CONFIG = {"dataset": "synthetic", "synthetic-size": 800, "partition": "dirichlet", "alpha": 0.3,
                   "fraction-train": 0.5, "fraction-evaluate": 0.5, "local-epochs": 2, "lr": 0.1, "batch-size": 32}


def run(app_dir: str, overrides: dict, *, callbacks=(), resume=None, **settings) -> fl_core.RunEnd:
    """Run the app in `app_dir` in this process's Ray with run-config `overrides` and engine `settings` (4 nodes)."""
    app = fl_core.load_app_folder(app_dir)
    engine = fl_core.RunSettings(**{"pool_size": 4, **settings})
    run_config = fl_core.fuse_run_config(app, overrides)  # run_app sets its seed key to the engine's seed
    return fl_core.run_app(app, run_config, engine, callbacks=list(callbacks), resume=resume)


def states_equal(a: dict, b: dict) -> bool:
    """Whether two {node id: Context.state} maps hold the same records with bitwise-equal arrays."""
    if sorted(a) != sorted(b):
        return False
    for node in a:
        if sorted(a[node].keys()) != sorted(b[node].keys()):
            return False
        for key in a[node].keys():
            if not same_arrays(a[node][key], b[node][key]):
                return False
    return True


def controls_equal(a: dict, b: dict) -> bool:
    """Whether two server control variates (dicts of arrays) are bitwise equal."""
    return sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------
# quickstart-pytorch: Flower's template, unchanged but for its data; fedsweep runs its strategy.start


QUICKSTART_CONFIG = {"dataset": "synthetic", "synthetic-size": 400, "num-server-rounds": 2}


def test_quickstart_gets_central_metrics_and_a_checkpoint_every_round(ray_local, tmp_path):
    saved = tmp_path / "final_model.pt"
    end = run(QUICKSTART, {**QUICKSTART_CONFIG, "final-model": str(saved)})
    assert [row["round"] for row in end.history] == [1, 2]
    for row in end.history:
        assert row["train_clients"] == 4 and row["fed_clients"] == 2  # FedAvg trains all, evaluates half
        assert np.isfinite(row["train_loss"]) and row["train_samples"] > 0
        assert 0 <= row["fed_eval_acc"] <= 1 and np.isfinite(row["fed_eval_loss"])
        assert 0 <= row["central_accuracy"] <= 1 and row["central_round"] == row["round"]  # its evaluate_fn
    assert end.state is not None and end.state.round == 2 and end.state.strategy == "FedAvg"
    from pytorchexample.task import Net  # importable: loading the app put its folder on sys.path

    final = torch.load(saved)
    Net().load_state_dict(final)  # the template's final save, to the run config's file, after the last round
    assert all(np.array_equal(final[k].numpy(), end.state.arrays[k].numpy()) for k in final)


def fl_core_command(*args: str) -> list[str]:
    """`python -m fl_core` of the quickstart app on 4 nodes of the synthetic set, 4 rounds of 2 local epochs."""
    return [sys.executable, "-m", "fl_core", "--app", QUICKSTART, "--dataset", "synthetic", "--synthetic-size", "2000",
            "--pool-size", "4", "--local-epochs", "2", "--num-server-rounds", "4", *args]


def test_quickstart_killed_in_round_2_resumes_bit_identically(tmp_path):
    from tests.test_tune_search import reap

    ray_tmp = tempfile.mkdtemp(prefix="fswq", dir="/tmp")  # short: Ray's socket paths have a length limit
    tag = os.urandom(8).hex()
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "RAY_AUTH_MODE": "disabled",
           "RAY_TMPDIR": ray_tmp, "FEDSWEEP_TEST_RUN_TAG": tag, "PYTHONUNBUFFERED": "1"}
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    try:
        proc = subprocess.Popen(fl_core_command("--checkpoint-dir", str(killed)), cwd=tmp_path, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if line.startswith("round   1/4"):  # round 1 is checkpointed: kill the whole run during round 2
                os.killpg(proc.pid, signal.SIGKILL)
                break
        proc.wait(timeout=60)
        assert proc.returncode == -signal.SIGKILL, "".join(seen)[-3000:]
        reap(tag, proc.pid)
        assert fl_core.load_checkpoint(str(killed)).round in (1, 2)
        for command in (fl_core_command("--resume", str(killed)), fl_core_command("--checkpoint-dir", str(whole))):
            done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    resumed, uninterrupted = fl_core.load_checkpoint(str(killed)), fl_core.load_checkpoint(str(whole))
    assert resumed.round == uninterrupted.round == 4
    assert same_arrays(resumed.arrays, uninterrupted.arrays)
    assert model_metrics(resumed.history) == model_metrics(uninterrupted.history)
    assert all("central_accuracy" in row for row in resumed.history)


def run_own_loop(tmp_path, loop: str) -> tuple[str, list[dict]]:
    """`python -m fl_core` of tests/apps/own_loop on 4 nodes (a process of its own: this one has other apps'
    @shared loaders registered); its output and metrics.csv rows."""
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "RAY_AUTH_MODE": "disabled"}
    out = tmp_path / loop
    done = subprocess.run([sys.executable, "-m", "fl_core", "--app", OWN_LOOP, "--pool-size", "4", "--loop", loop,
                           "--checkpoint-dir", str(out)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    with open(out / "metrics.csv") as f:
        return done.stdout, list(csv.DictReader(f))


def test_a_strategy_with_its_own_loop_runs_and_says_why_it_has_no_checkpoints(tmp_path):
    output, rows = run_own_loop(tmp_path, "own")
    assert [row["round"] for row in rows] == ["1", "2"] and not (tmp_path / "own" / "fl_checkpoint.npz").exists()
    assert "fed_mean" in rows[0] and "central_mean" not in rows[0]  # what the replies show, nothing central
    notes = [line for line in output.splitlines() if line.startswith("note: ")]
    assert len(notes) == 1 and "strategy OwnLoopFedAvg overrides Strategy.start" in notes[0], output


def test_a_strategy_whose_start_calls_super_gets_fedsweeps_loop(tmp_path):
    output, rows = run_own_loop(tmp_path, "super")
    assert [float(row["central_mean"]) for row in rows] == [2.5, 5.0]  # nodes add 1..4: FedAvg adds 2.5 a round
    assert fl_core.load_checkpoint(str(tmp_path / "super")).round == 2 and "note: " not in output


def test_quickstart_runs_under_flowers_engine(tmp_path):
    # A subprocess: Flower's engine starts and shuts down Ray itself, which would end this session's Ray.
    ray_tmp = tempfile.mkdtemp(prefix="fswf-", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="disabled", RAY_TMPDIR=ray_tmp)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "fl_core", "--app", QUICKSTART, "--engine", "flower", "--dataset", "synthetic",
             "--synthetic-size", "400", "--pool-size", "4", "--num-server-rounds", "2"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
        )
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-3000:]
    assert "[ROUND 1/2]" in log and "[ROUND 2/2]" in log, log[-3000:]
    assert log.count("aggregate_train: Received 4 results and 0 failures") == 2, log[-3000:]
    assert "'eval_acc'" in log  # the clients' evaluation was aggregated
    assert os.listdir(tmp_path) == []  # final-model "" saves nothing, and the synthetic set needs no files


# ---------------------------------------------------------------------------
# SCAFFOLD: client state in Context.state, strategy state, checkpoints (integration level 2)


class Snapshots(fl_core.Callback):
    """Keeps a copy of every round's ServerState (a later round must not change an earlier snapshot)."""

    def __init__(self) -> None:
        self.states: dict[int, fl_core.ServerState] = {}

    def on_round_end(self, event: fl_core.RoundEnd) -> None:
        """Copy the round's state."""
        self.states[event.round] = copy.deepcopy(event.state)


@pytest.fixture(scope="module")
def scaffold_runs(ray_local, tmp_path_factory):
    """Three SCAFFOLD runs: 2 rounds on 1 worker (checkpointed), its resumption to 4 rounds on 2 workers, and 4
    uninterrupted rounds on 2 workers with a snapshot of every round."""
    checkpoint_dir = str(tmp_path_factory.mktemp("scaffold-checkpoint"))
    first = run(SCAFFOLD, {**SCAFFOLD_CONFIG, "num-server-rounds": 2}, callbacks=[CheckpointWriter(checkpoint_dir)],
                max_parallel_clients=1)
    saved = fl_core.load_checkpoint(checkpoint_dir)
    resumed = run(SCAFFOLD, {**SCAFFOLD_CONFIG, "num-server-rounds": 4}, resume=saved)
    snapshots = Snapshots()
    whole = run(SCAFFOLD, {**SCAFFOLD_CONFIG, "num-server-rounds": 4}, callbacks=[snapshots])
    return {"first": first, "saved": saved, "resumed": resumed, "whole": whole, "snapshots": snapshots.states}


def test_scaffold_client_state_does_not_depend_on_the_workers(scaffold_runs):
    one, two = scaffold_runs["first"].state, scaffold_runs["snapshots"][2]  # 1 worker vs 2, after round 2
    assert one.settings["max_parallel_clients"] == 1 and two.settings["max_parallel_clients"] is None  # 2 on 2 CPUs
    assert same_arrays(one.arrays, two.arrays)
    assert states_equal(one.node_states, two.node_states)
    assert controls_equal(one.strategy_state["control"], two.strategy_state["control"])
    assert model_metrics(one.history) == model_metrics(two.history)


def test_scaffold_resumes_bit_identically_from_a_checkpoint(scaffold_runs):
    saved, resumed, whole = scaffold_runs["saved"], scaffold_runs["resumed"], scaffold_runs["whole"]
    assert saved.round == 2 and saved.strategy == "Scaffold" and saved.node_states  # the checkpoint has the state
    assert [row["round"] for row in resumed.history] == [1, 2, 3, 4]
    assert model_metrics(resumed.history) == model_metrics(whole.history)
    assert same_arrays(resumed.state.arrays, whole.state.arrays)
    assert states_equal(resumed.state.node_states, whole.state.node_states)
    assert controls_equal(resumed.state.strategy_state["control"], whole.state.strategy_state["control"])
    assert resumed.client_evaluation == whole.client_evaluation


def test_scaffold_node_states_hold_each_nodes_control_variate(scaffold_runs):
    state = scaffold_runs["whole"].state
    nodes = sorted(state.node_states)
    assert len(nodes) >= 2  # 2 of 4 nodes train each round
    controls = [{k: a.numpy() for k, a in state.node_states[n]["scaffold-c"].items()} for n in nodes]
    assert all(any(np.abs(v).sum() > 0 for v in c.values()) for c in controls)
    for i in range(len(controls)):
        for j in range(i + 1, len(controls)):
            assert not controls_equal(controls[i], controls[j]), f"nodes {nodes[i]} and {nodes[j]} share a state"
    # SCAFFOLD's invariant, from c = c_i = 0 and c += |S|/N mean(delta c_i): c is the mean of all N nodes' c_i.
    server = state.strategy_state["control"]
    for key, value in server.items():
        mean = sum(c[key] for c in controls) / 4  # nodes that never trained hold c_i = 0
        np.testing.assert_allclose(value, mean, rtol=1e-4, atol=1e-6)


def test_scaffold_learns_the_synthetic_set(scaffold_runs):
    history = scaffold_runs["whole"].history
    assert history[-1]["central_accuracy"] > 0.5  # 10 classes: chance is 0.1
    assert history[-1]["central_loss"] < history[0]["central_loss"]


def test_scaffold_run_config_checks():
    app = fl_core.load_app_folder(SCAFFOLD)
    good = fl_core.fuse_run_config(app, {})
    app.check(good, 10)
    for overrides, pool, message in [({"lr": 0.0}, 10, "lr must be a positive number"),
                                     ({"min-train-nodes": 5}, 4, "--pool-size 4 is smaller than min-train-nodes 5"),
                                     ({"partition": "shards"}, 10, "partition must be one of iid, dirichlet, pathological")]:
        with pytest.raises(fl_core.ConfigError, match=message):
            app.check(fl_core.fuse_run_config(app, overrides), pool)
