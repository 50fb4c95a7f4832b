"""A phase's messages go to the workers in groups, one Ray call per group: the results are those of one call per
message, for any number of workers and any group size."""

from __future__ import annotations

import types

import pytest
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict

from fl_core import run_app
from fl_core.failures import Raised
from fl_core.grid import NODE_ID_OFFSET, RayGrid
from fl_core.pool import ClientAppWorker, plan_groups
from tests.conftest import model_metrics, same_arrays, tiny_run


def test_without_sizes_groups_are_contiguous_runs_of_near_equal_length():
    assert plan_groups(range(5), None, 2) == [[0, 1, 2], [3, 4]]
    assert plan_groups(range(20), None, 8) == [
        [0, 1, 2],
        [3, 4, 5],
        [6, 7, 8],
        [9, 10, 11],
        [12, 13],
        [14, 15],
        [16, 17],
        [18, 19],
    ]
    assert plan_groups(range(2), None, 8) == [[0], [1]]
    assert plan_groups(range(0), None, 2) == []
    assert plan_groups(range(4), [None] * 4, 2) == [[0, 1], [2, 3]]  # nothing known yet: as without sizes


def test_most_per_call_makes_more_groups_than_workers():
    assert plan_groups(range(6), None, 2, most=2) == [[0, 1], [2, 3], [4, 5]]
    assert plan_groups(range(6), None, 2, most=1) == [[i] for i in range(6)]  # one call per message, as before
    assert plan_groups(range(6), None, 2, most=4) == [[0, 1, 2], [3, 4, 5]]
    assert plan_groups([7, 8, 9], None, 2) == [[7, 8], [9]]


def test_known_sizes_balance_the_groups_largest_first():
    # Longest processing time first: 40, 30, 20 (to the lighter), 10, 10; the heavier group is sent first, and
    # a group keeps message order.
    groups = plan_groups(range(5), [10, 40, 20, 30, 10], 2)
    assert groups == [[0, 1, 4], [2, 3]]  # 10+40+10 = 60 and 20+30 = 50
    # An unknown size counts as the known mean; groups never exceed `most`.
    assert sorted(map(len, plan_groups(range(6), [100, None, 1, 1, 1, 1], 2, most=3))) == [3, 3]
    assert plan_groups(range(5), [10, 40, 20, 30, 10], 2) == groups  # deterministic


@pytest.fixture
def message_identity():
    """Messages are built outside a Flower process: Flower needs its task identity set first."""
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, SUPERLINK_NODE_ID, 1


class SizesPool:
    """A pool that answers in this process and records the expected sizes the grid gave each phase."""

    retries = 0

    def __init__(self, sizes: dict[int, int]):
        self.sizes = sizes  # node id -> the num-examples its reply reports
        self.seen = []

    def wait_ready(self):
        return ["cpu"]

    def run(self, items, report=None, *, common=(), sizes=None, spans=None):
        self.seen.append(sizes)
        return [
            [
                (
                    Message(
                        RecordDict({"metrics": MetricRecord({"num-examples": self.sizes[m.metadata.dst_node_id]})}),
                        reply_to=m,
                    ),
                    context.state,
                )
                for m, context, _ in cohort
            ]
            for cohort in items
        ]


def test_the_grid_gives_the_pool_each_nodes_last_size_per_message_type(message_identity):
    pool = SizesPool({NODE_ID_OFFSET + p: n for p, n in enumerate([10, 40, 20, 30])})
    grid = RayGrid(pool, num_nodes=4, run_config={}, seed=0, run_id=1)

    def send(nodes, message_type="train"):
        grid.send_and_receive([Message(RecordDict(), NODE_ID_OFFSET + p, message_type) for p in nodes])

    send([0, 1])
    send([3, 2, 1, 0])
    send([0, 1], "evaluate")  # sizes are per message type: evaluation is on another split
    assert pool.seen == [[None, None], [None, None, 40.0, 10.0], [None, None]]


def test_each_call_of_a_group_gets_its_own_copy_of_the_shared_content(message_identity):
    """A strategy sends every node one RecordDict; a ClientApp that changes it must not change the next node's."""
    seen = []

    def client_app(message, context):
        config = message.content["config"]
        seen.append(config["lr"])
        config["lr"] = 99.0  # an app that writes into what it received
        context.state["calls"] = MetricRecord({"n": 1})
        if context.node_id == NODE_ID_OFFSET + 1:
            raise ValueError("node 1 fails")
        return Message(RecordDict({"metrics": MetricRecord({"num-examples": 1})}), reply_to=message)

    content = RecordDict({"config": ConfigRecord({"lr": 0.1})})
    items = []
    for p in range(3):
        message = Message(content, NODE_ID_OFFSET + p, "train")
        message.metadata.__dict__["_message_id"] = f"m{p}"
        items.append(
            (
                message,
                Context(run_id=1, node_id=NODE_ID_OFFSET + p, node_config={}, state=RecordDict(), run_config={}),
                p,
            )
        )
    worker = types.SimpleNamespace(client_app=client_app)
    out = list(ClientAppWorker.handle(worker, None, [[item] for item in items]))  # cohorts of one: one call each
    assert seen == [0.1, 0.1, 0.1]
    assert content["config"]["lr"] == 0.1
    assert isinstance(out[1], Raised) and "ValueError: node 1 fails" in out[1].detail
    assert [state["calls"]["n"] for [(_, state)] in (out[0], out[2])] == [1, 1]  # the rest of the group still ran


@pytest.fixture(scope="module")
def one_call_per_message(ray_local):
    """The reference: 2 workers, every message its own call (the engine before groups)."""
    return grouped_run(max_parallel_clients=2, nodes_per_call=1)


def grouped_run(**settings):
    """8 nodes, 6 train and 4 validate a round, 3 rounds, with the given engine settings."""
    app, run_config, engine = tiny_run(
        {"pool_size": 8, **settings}, fraction_train=0.75, fraction_evaluate=0.5, num_server_rounds=3
    )
    return run_app(app, run_config, engine)


@pytest.mark.parametrize(
    "settings",
    [
        {"max_parallel_clients": 2},  # one group per worker
        {"max_parallel_clients": 1},  # the whole phase in one call
        {"max_parallel_clients": 2, "nodes_per_call": 2},  # more groups than workers
    ],
    ids=["2-workers", "1-worker", "groups-of-2"],
)
def test_results_are_the_same_for_any_workers_and_group_size(settings, one_call_per_message):
    end = grouped_run(**settings)
    assert model_metrics(end.history) == model_metrics(one_call_per_message.history)
    assert same_arrays(end.state.arrays, one_call_per_message.state.arrays)
    assert end.client_evaluation == one_call_per_message.client_evaluation
