"""SCAFFOLD in the built-in app (`strategy = "scaffold"`): client state in Context.state, the server's control
variate in the strategy, both through worker changes, checkpoints and resume (integration level 2)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from cifar10_app.scaffold import STATE_KEY

import fl_core
from fl_core.callbacks import CheckpointWriter
from tests.conftest import model_metrics, same_arrays

# Small enough for 2 cores; lr 0.1 and 2 epochs of plain SGD let SCAFFOLD learn the synthetic set in 4 rounds.
CONFIG = {
    "dataset": "synthetic",
    "synthetic-size": 800,
    "partition": "dirichlet",
    "alpha": 0.3,
    "fraction-train": 0.5,
    "fraction-evaluate": 0.5,
    "local-epochs": 2,
    "lr": 0.1,
    "momentum": 0.0,
    "batch-size": 32,
    "strategy": "scaffold",
}
POOL = 4


def run(overrides: dict, *, callbacks=(), resume=None, **settings) -> fl_core.RunEnd:
    """Run the built-in app in this process's Ray with run-config CONFIG + `overrides` and engine `settings`."""
    app = fl_core.load_app_folder(None)
    engine = fl_core.RunSettings(**{"pool_size": POOL, **settings})
    return fl_core.run_app(
        app, fl_core.fuse_run_config(app, {**CONFIG, **overrides}), engine, callbacks=list(callbacks), resume=resume
    )


def states_equal(a: dict, b: dict) -> bool:
    """Whether two {node id: Context.state} maps hold the same records with bitwise-equal arrays."""
    if sorted(a) != sorted(b):
        return False
    for node in a:
        if sorted(a[node].keys()) != sorted(b[node].keys()):
            return False
        if not all(same_arrays(a[node][key], b[node][key]) for key in a[node].keys()):
            return False
    return True


def controls_equal(a: dict, b: dict) -> bool:
    """Whether two control variates (dicts of arrays) are bitwise equal."""
    return sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)


class Snapshots(fl_core.Callback):
    """Keeps a copy of every round's ServerState (a later round must not change an earlier snapshot)."""

    def __init__(self) -> None:
        self.states: dict[int, fl_core.ServerState] = {}

    def on_round_end(self, event: fl_core.RoundEnd) -> None:
        """Copy the round's state."""
        self.states[event.round] = copy.deepcopy(event.state)


@pytest.fixture(scope="module")
def scaffold_runs(ray_local, tmp_path_factory):
    """2 rounds on 1 worker (checkpointed), its resumption to 4 rounds on 2 workers, 4 uninterrupted rounds on 2
    workers with a snapshot of every round, and 1 round of FedAvg with the same settings."""
    checkpoint_dir = str(tmp_path_factory.mktemp("scaffold-checkpoint"))
    first = run({"num-server-rounds": 2}, callbacks=[CheckpointWriter(checkpoint_dir)], max_parallel_clients=1)
    saved = fl_core.load_checkpoint(checkpoint_dir)
    resumed = run({"num-server-rounds": 4}, resume=saved)
    snapshots = Snapshots()
    whole = run({"num-server-rounds": 4}, callbacks=[snapshots])
    fedavg = run({"num-server-rounds": 1, "strategy": "fedavg"})
    return {
        "first": first,
        "saved": saved,
        "resumed": resumed,
        "whole": whole,
        "snapshots": snapshots.states,
        "fedavg": fedavg,
    }


def test_round_1_is_fedavgs_round_1(scaffold_runs):
    # c = c_i = 0 before any node trained: no correction, the same update as FedAvg, whose aggregate sums the same
    # mean in another order (its cohorts' replies reach it folded, fl_core.cohorts.combine): equal to float32's
    # last bits, where a correction would move every weight.
    snapshot, fedavg = scaffold_runs["snapshots"][1], scaffold_runs["fedavg"].state
    assert list(snapshot.arrays.keys()) == list(fedavg.arrays.keys())
    for name, array in snapshot.arrays.items():
        np.testing.assert_allclose(array.numpy(), fedavg.arrays[name].numpy(), rtol=1e-6, atol=1e-7)
    [scaffold_row], [fedavg_row] = model_metrics(snapshot.history), model_metrics(fedavg.history)
    assert scaffold_row.keys() == fedavg_row.keys()
    assert scaffold_row == pytest.approx(fedavg_row, rel=1e-5)


def test_client_state_does_not_depend_on_the_workers(scaffold_runs):
    one, two = scaffold_runs["first"].state, scaffold_runs["snapshots"][2]  # 1 worker vs 2, after round 2
    assert one.settings["max_parallel_clients"] == 1 and two.settings["max_parallel_clients"] is None  # 2 on 2 CPUs
    assert same_arrays(one.arrays, two.arrays)
    assert states_equal(one.node_states, two.node_states)
    assert controls_equal(one.strategy_state["control"], two.strategy_state["control"])
    assert model_metrics(one.history) == model_metrics(two.history)


def test_resumes_bit_identically_from_a_checkpoint(scaffold_runs):
    saved, resumed, whole = scaffold_runs["saved"], scaffold_runs["resumed"], scaffold_runs["whole"]
    assert saved.round == 2 and saved.strategy == "Scaffold" and saved.node_states  # the checkpoint has the state
    assert [row["round"] for row in resumed.history] == [1, 2, 3, 4]
    assert model_metrics(resumed.history) == model_metrics(whole.history)
    assert same_arrays(resumed.state.arrays, whole.state.arrays)
    assert states_equal(resumed.state.node_states, whole.state.node_states)
    assert controls_equal(resumed.state.strategy_state["control"], whole.state.strategy_state["control"])
    assert resumed.client_evaluation == whole.client_evaluation


def test_node_states_hold_each_nodes_control_variate(scaffold_runs):
    state = scaffold_runs["whole"].state
    nodes = sorted(state.node_states)
    assert len(nodes) >= 2  # 2 of 4 nodes train each round
    controls = [{k: a.numpy() for k, a in state.node_states[n][STATE_KEY].items()} for n in nodes]
    # Every parameter's c_i moved (a global model read as a view of the trained weights once gave 0 for all but
    # the conv weights).
    assert all(np.abs(v).sum() > 0 for c in controls for v in c.values())
    for i in range(len(controls)):
        for j in range(i + 1, len(controls)):
            assert not controls_equal(controls[i], controls[j]), f"nodes {nodes[i]} and {nodes[j]} share a state"
    # SCAFFOLD's invariant, from c = c_i = 0 and c += |S|/N mean(delta c_i): c is the mean of all N nodes' c_i.
    server = state.strategy_state["control"]
    assert state.strategy_state["num_nodes"] == POOL
    for key, value in server.items():
        mean = sum(c[key] for c in controls) / POOL  # nodes that never trained hold c_i = 0
        np.testing.assert_allclose(value, mean, rtol=1e-4, atol=1e-6)


def test_learns_the_synthetic_set(scaffold_runs):
    history = scaffold_runs["whole"].history
    assert history[-1]["central_accuracy"] > 0.5  # 10 classes: chance is 0.1
    assert history[-1]["central_loss"] < history[0]["central_loss"]


def test_scaffold_refuses_a_dp_wrapper():
    app = fl_core.load_app_folder(None)
    with pytest.raises(fl_core.ConfigError, match="strategy scaffold does not take a DP wrapper"):
        app.check(fl_core.fuse_run_config(app, {**CONFIG, "dp": "server-fixed"}), 10)
    app.check(fl_core.fuse_run_config(app, CONFIG), 10)
