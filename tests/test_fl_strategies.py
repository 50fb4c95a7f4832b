"""Flower's Message-API strategies by name from a run config, and their state through a checkpoint."""

from __future__ import annotations

import random

import numpy as np
import pytest
from cifar10_app.strategy import build_strategy
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from fl_core import ConfigError, load_checkpoint, save_checkpoint
from fl_core.seeding import seed_globals
from fl_core.strategies import DP_WRAPPERS, STRATEGIES, from_run_config, restore_strategy_state, strategy_state
from tests.conftest import checkpoint_state, same_arrays

NODES = list(range(1000, 1008))


@pytest.fixture(autouse=True)
def server_identity():
    """Strategies build Messages, which need the process's Flower task identity (the engine sets it)."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1


class ListGrid(Grid):
    """Just enough of a Grid for configure_train: a fixed list of nodes."""

    def get_node_ids(self):
        return list(NODES)

    set_run = run = create_message = push_messages = pull_messages = send_and_receive = None


def run_config(strategy: str, dp: str = "off", **tables) -> dict:
    """The built-in app's run config (8 nodes, all train each round) with `strategy`, `dp` and table values."""
    from tests.conftest import tiny_run

    return tiny_run(strategy=strategy, dp=dp, fraction_train=1.0, min_train_nodes=2, **tables)[1]


def replies_for(messages: list[Message], server_round: int, norm_bit: bool = False) -> list[Message]:
    """Client replies: arrays near the sent ones, num-examples, train_loss (and norm_bit for adaptive client DP)."""
    out = []
    for i, message in enumerate(messages):
        rng = np.random.default_rng([server_round, i])
        sent = message.content["arrays"]
        arrays = ArrayRecord(
            {k: Array(np.asarray(a.numpy() + rng.normal(0, 0.1, a.shape), dtype=np.float32)) for k, a in sent.items()}
        )
        metrics = {"num-examples": 10 + i, "train_loss": float(1 + i)}
        if norm_bit:
            metrics["norm_bit"] = int(i % 2 == 0)
        out.append(Message(RecordDict({"arrays": arrays, "metrics": MetricRecord(metrics)}), reply_to=message))
    return out


def play_round(strategy, arrays: ArrayRecord, server_round: int, norm_bit: bool) -> ArrayRecord:
    """One train round with fake replies, the global generators seeded as fedsweep's loop seeds them."""
    seed_globals(server_round)
    messages = list(strategy.configure_train(server_round, arrays, _config(), ListGrid()))
    for i, message in enumerate(messages):
        message.metadata.__dict__["_message_id"] = f"m{server_round}-{i}"
    seed_globals(100 + server_round)
    new, metrics = strategy.aggregate_train(server_round, replies_for(messages, server_round, norm_bit))
    assert new is not None and metrics is not None
    return new


def _config():
    from flwr.app import ConfigRecord

    return ConfigRecord({"lr": 0.1, "local-epochs": 1})


INITIAL = ArrayRecord({"w": Array(np.zeros((3, 4), np.float32)), "b": Array(np.zeros(5, np.float32))})
CASES = [(name, "off") for name in STRATEGIES] + [("fedavg", dp) for dp in DP_WRAPPERS if dp != "off"]


@pytest.mark.parametrize("name, dp", CASES)
def test_every_strategy_builds_by_name_and_resumes_exactly_from_a_checkpoint(name, dp, tmp_path):
    """Rounds 1-2, checkpoint, a fresh strategy restored from it: round 3 gives bitwise the original's round 3."""
    rc = run_config(name, dp)
    norm_bit = dp == "client-adaptive"
    original = build_strategy(rc, len(NODES))
    assert type(original).__name__ == (DP_WRAPPERS[dp][0] if dp != "off" else STRATEGIES[name]).__name__
    arrays = INITIAL
    for server_round in (1, 2):
        arrays = play_round(original, arrays, server_round, norm_bit)
    saved = checkpoint_state()
    saved.arrays, saved.strategy_state = arrays, strategy_state(original)
    restored_state = load_checkpoint(save_checkpoint(saved, str(tmp_path))).strategy_state
    fresh = build_strategy(rc, len(NODES))
    restore_strategy_state(fresh, restored_state)
    third_original = play_round(original, arrays, 3, norm_bit)
    third_restored = play_round(fresh, arrays, 3, norm_bit)
    assert same_arrays(third_original, third_restored)


@pytest.mark.parametrize("name", ["fedadam", "fedyogi", "fedadagrad", "fedavgm"])
def test_a_fresh_stateful_strategy_would_not_continue_the_run(name):
    """The state matters: without restoring it, round 3 differs (so the test above tests something)."""
    rc = run_config(name)
    original, fresh = build_strategy(rc, len(NODES)), build_strategy(rc, len(NODES))
    arrays = INITIAL
    for server_round in (1, 2):
        arrays = play_round(original, arrays, server_round, False)
    assert not same_arrays(play_round(original, arrays, 3, False), play_round(fresh, arrays, 3, False))


def test_table_values_reach_flower():
    assert build_strategy(run_config("fedadam", **{"fedadam.eta": 0.5, "fedadam.beta_1": 0.8}), 8).eta == 0.5
    assert build_strategy(run_config("fedyogi"), 8).eta == 0.01  # the table's default: Flower's FedYogi default
    avgm = build_strategy(run_config("fedavgm", **{"fedavgm.server_momentum": 0.7}), 8)
    assert (avgm.server_momentum, avgm.server_learning_rate) == (0.7, 1.0)
    assert build_strategy(run_config("fedprox", **{"fedprox.proximal_mu": 0.3}), 8).proximal_mu == 0.3
    assert build_strategy(run_config("multikrum", **{"multikrum.num_nodes_to_select": 3}), 8).num_nodes_to_select == 3
    dp = build_strategy(run_config("fedavg", "server-adaptive", **{"dp-adaptive.initial_clipping_norm": 2.0}), 8)
    assert dp.clipping_norm == 2.0 and dp.num_sampled_clients == 8
    assert build_strategy(run_config("qfedavg"), 8).client_learning_rate == 0.05  # the run's lr


def test_unknown_names_and_parameters_are_config_errors():
    with pytest.raises(ConfigError, match="strategy must be one of"):
        from_run_config({"strategy": "fedmagic"}, num_sampled_clients=2)
    with pytest.raises(ConfigError, match="FedAdam has no parameter"):
        from_run_config({"strategy": "fedadam", "fedadam.momentum": 0.1}, num_sampled_clients=2)
    with pytest.raises(ConfigError, match="refused its parameters"):
        from_run_config(
            {
                "strategy": "fedavg",
                "dp": "server-fixed",
                "dp-fixed.noise-multiplier": -1.0,
                "dp-fixed.clipping-norm": 1.0,
            },
            num_sampled_clients=2,
        )


def test_state_holds_data_only():
    strategy = build_strategy(run_config("fedadam"), 8)
    state = strategy_state(strategy)
    assert "train_metrics_aggr_fn" not in state and state["eta"] == 0.1
    random.seed(0)  # sampling draws from Python's random
    play_round(strategy, INITIAL, 1, False)
    state = strategy_state(strategy)
    assert set(state["m_t"]) == {"w", "b"} and set(state["v_t"]) == {"w", "b"}
