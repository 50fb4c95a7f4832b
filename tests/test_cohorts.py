"""Cohorts: a phase's messages split by order, an app's cohort function, and the built-in app's cohort training.

The built-in app trains a cohort as one grouped network (cifar10_app.cohort):
each client's update must be `task.train`'s up to rounding, and a run's numbers
must not depend on the workers, since cohorts are fixed by message order.
"""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
from cifar10_app.client_app import app as client_app
from cifar10_app.client_app import train_cohort_fn
from cifar10_app.cohort import cohort_logits, train_cohort
from cifar10_app.scaffold import client_controls, correction
from cifar10_app.task import Net, initial_model, place_model, train
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping, FedAdam, FedAvg, Krum

from fl_core import cohort, run_app
from fl_core.checkpoint import check_resume
from fl_core.cohorts import cohort_function, combine, folding, handle, split
from fl_core.failures import Raised
from fl_core.grid import RayGrid
from fl_core.metrics import reply_counts
from fl_core.pool import ClientAppWorker
from fl_core.strategies import mean_weighting_key
from tests.conftest import checkpoint_state, model_metrics, same_arrays, tiny_run


@pytest.fixture(autouse=True)
def message_identity():
    """Messages are built outside a Flower process: Flower needs its task identity set first."""
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, SUPERLINK_NODE_ID, 1


def test_split_makes_near_equal_runs_of_at_most_size_by_order_alone():
    assert split(10, 8) == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    assert [len(c) for c in split(50, 8)] == [7, 7, 6, 6, 6, 6, 6, 6]  # 8 cohorts (a power of two), not 7
    assert [len(c) for c in split(20, 8)] == [5, 5, 5, 5]
    assert len(split(1000, 8)) == 128 and max(len(c) for c in split(1000, 8)) == 8
    assert split(3, 1) == [[0], [1], [2]]
    assert split(2, 8) == [[0, 1]]
    assert split(0, 8) == []
    assert sum(split(1000, 8), []) == list(range(1000))


# -- fl_core.cohorts.handle: what a worker does with one cohort ------------------------------------


def _calls(n: int, message_type: str = MessageType.TRAIN) -> list[tuple]:
    """(message, Context, seed) of n nodes."""
    return [
        (
            Message(RecordDict({"config": ConfigRecord({"x": float(i)})}), 1000 + i, message_type),
            Context(run_id=1, node_id=1000 + i, node_config={}, state=RecordDict(), run_config={}),
            i,
        )
        for i in range(n)
    ]


def _reply(message: Message, value: float) -> Message:
    return Message(RecordDict({"metrics": MetricRecord({"v": value})}), reply_to=message)


def _app_with_cohort(answer):
    """A ClientApp replying x per message, and a cohort function `answer(messages, contexts)`."""
    app = ClientApp()

    @app.train()
    def train_one(message, context):
        context.state["alone"] = MetricRecord({"n": 1})
        return _reply(message, message.content["config"]["x"])

    cohort(app, "train")(answer)
    return app


def test_a_cohort_goes_to_the_cohort_function_and_one_node_to_the_clientapp():
    seen = []

    def together(messages, contexts):
        seen.append((len(messages), np.random.randint(1 << 30)))
        for context in contexts:
            context.state["together"] = MetricRecord({"n": 1})
        return [_reply(m, 10 * m.content["config"]["x"]) for m in messages]

    app = _app_with_cohort(together)
    assert cohort_function(app, "train") is together and cohort_function(app, "evaluate") is None
    out = handle(app, _calls(3))
    assert [reply.content["metrics"]["v"] for reply, _ in out] == [0.0, 10.0, 20.0]
    assert all("together" in state for _, state in out)
    np.random.seed(0)  # the cohort function runs with the first call's seed, whatever ran before
    expected = np.random.randint(1 << 30)
    assert seen == [(3, expected)]
    [(reply, state)] = handle(app, _calls(1))
    assert reply.content["metrics"]["v"] == 0.0 and "alone" in state and len(seen) == 1


def test_a_cohort_function_may_decline_and_a_wrong_count_is_an_error():
    declining = _app_with_cohort(lambda messages, contexts: None)
    out = handle(declining, _calls(2))
    assert [reply.content["metrics"]["v"] for reply, _ in out] == [0.0, 1.0] and all("alone" in s for _, s in out)
    short = _app_with_cohort(lambda messages, contexts: [_reply(messages[0], 0.0)])
    with pytest.raises(ValueError, match="returned 1 replies for 2 messages"):
        handle(short, _calls(2))


def test_a_cohort_function_sees_the_shared_content_once_and_the_clientapp_its_own_copy():
    """A strategy sends every node one RecordDict: the cohort function gets it as one object (to convert once);
    when it declines, each ClientApp call gets its own copy, so an app that writes into it changes no other node."""
    content = RecordDict({"config": ConfigRecord({"x": 1.0})})
    calls = [(Message(content, 1000 + i, MessageType.TRAIN), c, s) for i, (_, c, s) in enumerate(_calls(3))]
    shared = []

    def declining(messages, contexts):
        shared.append(len({id(m.content) for m in messages}))
        return None

    app = ClientApp()
    cohort(app, "train")(declining)

    @app.train()
    def train_writes(message, context):
        config = message.content["config"]
        config["x"] = config["x"] + 1  # an app that changes what it received
        context.state["alone"] = MetricRecord({"n": 1})
        return _reply(message, config["x"])

    out = handle(app, calls)
    assert shared == [1]
    assert [reply.content["metrics"]["v"] for reply, _ in out] == [2.0, 2.0, 2.0]
    assert content["config"]["x"] == 1.0 and all("alone" in state for _, state in out)


def test_a_cohort_function_may_return_the_fold_itself_while_folding():
    """While folding() names the weighting key, one Message stands for the cohort's replies, the others None."""
    seen = []

    def mean_of_x(messages, contexts):
        seen.append(folding())
        for context in contexts:
            context.state["together"] = MetricRecord({"n": 1})
        if folding() is None:
            return [_reply(m, m.content["config"]["x"]) for m in messages]
        xs = [m.content["config"]["x"] for m in messages]
        metrics = MetricRecord({"v": sum(xs) / len(xs), "num-examples": len(xs)})
        return Message(RecordDict({"metrics": metrics}), reply_to=messages[0])

    app = _app_with_cohort(mean_of_x)
    out = handle(app, _calls(3), "num-examples")
    assert out[0][0].content["metrics"]["v"] == 1.0 and [reply for reply, _ in out[1:]] == [None, None]
    assert all("together" in state for _, state in out)
    assert len(handle(app, _calls(3))) == 3 and seen == ["num-examples", None] and folding() is None
    unasked = _app_with_cohort(lambda messages, contexts: _reply(messages[0], 0.0))
    with pytest.raises(ValueError, match="returned one Message while fl_core.cohorts.folding\\(\\) was None"):
        handle(unasked, _calls(2))
    with pytest.raises(ValueError, match="without one MetricRecord holding a positive 'num-examples'"):
        handle(unasked, _calls(2), "num-examples")


def test_a_worker_reports_a_cohort_that_raised_as_one_failure():
    def broken(messages, contexts):
        raise RuntimeError("cohort broke")

    worker = types.SimpleNamespace(client_app=_app_with_cohort(broken))
    calls = _calls(3)
    out = list(ClientAppWorker.handle(worker, None, [calls[:2], calls[2:]]))
    assert isinstance(out[0], Raised) and "RuntimeError: cohort broke" in out[0].detail
    assert [reply.content["metrics"]["v"] for reply, _ in out[1]] == [2.0]


# -- the built-in app's cohort training -------------------------------------------------------------


def _state(seed: int = 1) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in initial_model(seed).state_dict().items()}


def _data(sizes: list[int], seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(n, 3, 32, 32, generator=g).contiguous(memory_format=torch.channels_last),
            torch.randint(0, 10, (n,), generator=g),
        )
        for n in sizes
    ]


def _one_by_one(state, data, seeds, corrections=None, **options):
    """task.train for each client from `state`: (parameters, loss) of each."""
    out = []
    for k, ((x, y), seed) in enumerate(zip(data, seeds)):
        model = place_model(Net(), "cpu")
        model.load_state_dict(state)
        loss = train(
            model,
            x,
            y,
            generator=torch.Generator().manual_seed(seed),
            correction=None if corrections is None else corrections[k],
            **options,
        )
        out.append(({n: p.detach().clone() for n, p in model.state_dict().items()}, loss))
    return out


def test_cohort_logits_are_the_nets():
    nets = [initial_model(s) for s in (1, 2, 3)]
    x = torch.randn(4, 3, 3, 32, 32)
    params = {n: torch.stack([net.state_dict()[n] for net in nets]) for n in nets[0].state_dict()}
    logits = cohort_logits(params, x.flatten(1, 2))
    for k, net in enumerate(nets):
        torch.testing.assert_close(logits[k], net(x[:, k]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "sizes, options",
    [
        ([20] * 4, dict(epochs=1, batch_size=5, lr=0.1, momentum=0.0, weight_decay=0.0, augment="none")),
        # Unequal data (padded batches, clients leaving the cohort, one without data), momentum, weight decay,
        # augmentation drawn from each client's generator, and FedProx.
        (
            [23, 5, 0, 12, 1],
            dict(epochs=2, batch_size=4, lr=0.05, momentum=0.9, weight_decay=5e-4, augment="crop-flip"),
        ),
        (
            [9, 9],
            dict(epochs=1, batch_size=4, lr=0.05, momentum=0.5, weight_decay=0.0, augment="none", proximal_mu=1.0),
        ),
    ],
    ids=["iid", "unequal-momentum-augment", "fedprox"],
)
def test_a_cohort_trains_each_client_as_task_train_does(sizes, options):
    state, data, seeds = _state(), _data(sizes), list(range(7, 7 + len(sizes)))
    expected = _one_by_one(state, data, seeds, **options)
    finals, losses = train_cohort(
        [state] * len(sizes), data, [torch.Generator().manual_seed(s) for s in seeds], **options
    )
    for (params, loss), final, got in zip(expected, finals, losses):
        assert got == pytest.approx(loss, rel=1e-5, abs=1e-7)
        for name in params:
            torch.testing.assert_close(final[name], params[name], rtol=1e-4, atol=1e-5)
    if 0 in sizes:  # a client without data: no step, the weights it was sent
        empty = sizes.index(0)
        assert losses[empty] == 0.0 and all(torch.equal(finals[empty][n], state[n]) for n in state)


def test_a_cohort_applies_each_clients_scaffold_correction():
    state, data, seeds = _state(), _data([10, 10]), [1, 2]
    rng = np.random.default_rng(0)
    corrections = [{n: torch.from_numpy(rng.normal(0, 0.1, p.shape).astype(np.float32)) for n, p in state.items()}] * 2
    corrections = [corrections[0], {n: -c for n, c in corrections[0].items()}]
    options = dict(epochs=1, batch_size=5, lr=0.05, momentum=0.0, weight_decay=0.0, augment="none")
    expected = _one_by_one(state, data, seeds, corrections=corrections, **options)
    finals, _ = train_cohort(
        [state] * 2, data, [torch.Generator().manual_seed(s) for s in seeds], corrections=corrections, **options
    )
    for (params, _), final in zip(expected, finals):
        for name in params:
            torch.testing.assert_close(final[name], params[name], rtol=1e-4, atol=1e-5)


def _messages(
    run_config: dict, partitions: list[int], dtype=np.float32, **config
) -> tuple[list[Message], list[Context]]:
    """Train messages carrying initial_model(1)'s weights (as `dtype`: FedAdam's are float64) to these nodes."""
    weights = {k: torch.from_numpy(v.numpy().astype(dtype)) for k, v in initial_model(1).state_dict().items()}
    content = RecordDict(
        {
            "arrays": ArrayRecord(weights),
            "config": ConfigRecord({"server-round": 1, "lr": 0.05, "local-epochs": 1, **config}),
        }
    )
    messages = [Message(content, 1000 + p, MessageType.TRAIN) for p in partitions]
    contexts = [
        Context(
            run_id=1,
            node_id=1000 + p,
            state=RecordDict(),
            run_config=run_config,
            node_config={"partition-id": p, "num-partitions": 4},
        )
        for p in partitions
    ]
    return messages, contexts


@pytest.mark.parametrize("strategy, dtype", [("fedavg", np.float32), ("scaffold", np.float32), ("fedadam", np.float64)])
def test_the_apps_cohort_replies_are_its_clientapps_up_to_rounding(strategy, dtype):
    run_config = {**tiny_run(synthetic_size=800)[1], "strategy": strategy}
    messages, contexts = _messages(run_config, [0, 1, 3], dtype)
    together = train_cohort_fn(messages, contexts)
    for message, context, reply in zip(messages, contexts, together):
        alone_context = Context(
            run_id=1,
            node_id=context.node_id,
            state=RecordDict(),
            run_config=run_config,
            node_config=context.node_config,
        )
        alone = client_app(message, alone_context)
        assert reply.content["metrics"]["num-examples"] == alone.content["metrics"]["num-examples"]
        assert reply.content["metrics"]["train_loss"] == pytest.approx(alone.content["metrics"]["train_loss"], rel=1e-5)
        assert sorted(reply.content) == sorted(alone.content)
        for key in reply.content.array_records:
            for name, array in reply.content[key].items():
                np.testing.assert_allclose(array.numpy(), alone.content[key][name].numpy(), rtol=1e-4, atol=1e-5)
        assert sorted(context.state) == sorted(alone_context.state)  # SCAFFOLD's c_i kept in the node's state


@pytest.mark.parametrize("partition, size", [("dirichlet", 800), ("iid", 12)], ids=["unequal", "3-image"])
def test_the_apps_folded_reply_is_the_fold_of_its_replies_bit_for_bit(partition, size):
    """While fedsweep folds, the built-in app returns the cohort's mean itself: what combine makes of its replies."""
    run_config = {**tiny_run(synthetic_size=size)[1], "partition": partition, "alpha": 0.3}
    messages, contexts = _messages(run_config, [0, 1, 2])
    calls = [(m, c, 7) for m, c in zip(messages, contexts)]
    replies = [reply for reply, _ in handle(client_app, calls)]
    expected = combine(messages[0], replies, "num-examples")
    [(folded, _), *rest] = handle(client_app, calls, "num-examples")
    assert [reply for reply, _ in rest] == [None, None]
    assert dict(folded.content["metrics"]) == dict(expected.content["metrics"])
    for name, array in expected.content["arrays"].items():
        np.testing.assert_array_equal(folded.content["arrays"][name].numpy(), array.numpy())


def test_the_apps_cohort_declines_client_side_dp_and_mixed_settings():
    run_config = tiny_run(synthetic_size=800)[1]
    assert train_cohort_fn(*_messages({**run_config, "dp": "client-fixed"}, [0, 1], clipping_norm=0.01)) is None
    messages, contexts = _messages(run_config, [0, 1])
    other, _ = _messages(run_config, [1], lr=0.5)
    assert train_cohort_fn([messages[0], other[0]], contexts) is None


def test_client_controls_and_correction_are_what_the_cohort_path_uses():
    """The cohort path builds SCAFFOLD's correction from the received state as train_fn does from the model."""
    run_config = {**tiny_run(synthetic_size=800)[1], "strategy": "scaffold"}
    messages, contexts = _messages(run_config, [0])
    x = {k: v.numpy() for k, v in messages[0].content["arrays"].to_torch_state_dict().items()}
    c, c_i = client_controls(messages[0], contexts[0], x)
    assert set(correction(c, c_i, torch.device("cpu"))) == set(dict(Net().named_parameters()))


# -- a cohort's replies folded into one (fl_core.cohorts.combine) -----------------------------------


def _train_replies(messages: list[Message], weights: list) -> list[Message]:
    """Replies to the messages as the built-in app's, with arrays, a metric list and these num-examples."""
    rng = np.random.default_rng(0)
    return [
        Message(
            RecordDict(
                {
                    "arrays": ArrayRecord(
                        {
                            "w": Array(rng.standard_normal((4, 3)).astype(np.float32)),
                            "steps": Array(np.array([k + 1], np.int64)),
                        }
                    ),
                    "metrics": MetricRecord({"train_loss": 2.0 - k, "per_class": [1.0 * k, 2.0], "num-examples": n}),
                }
            ),
            reply_to=message,
        )
        for k, (n, message) in enumerate(zip(weights, messages))
    ]


def _fedavg(replies: list[Message]) -> tuple[dict, MetricRecord]:
    """Flower's FedAvg aggregate of the replies: ({name: array}, metrics)."""
    arrays, metrics = FedAvg().aggregate_train(1, replies)
    return {name: array.numpy() for name, array in arrays.items()}, metrics


def test_a_cohorts_combined_reply_aggregates_as_its_replies_do():
    messages = [m for m, _, _ in _calls(4)]
    replies = _train_replies(messages, [5, 1, 30, 4])
    separate_arrays, separate_metrics = _fedavg(replies)
    first = combine(messages[0], replies[:3], "num-examples")  # folded in part: with the last reply alone
    assert first.content["metrics"]["num-examples"] == 36 and first.metadata.src_node_id == 1000
    arrays, metrics = _fedavg([first, replies[3]])
    for name, array in separate_arrays.items():
        assert arrays[name].dtype == array.dtype  # float32 stays float32; FedAvg's sums make int64 float64
        np.testing.assert_allclose(arrays[name], array, rtol=1e-6)
    assert metrics["train_loss"] == pytest.approx(separate_metrics["train_loss"])
    assert metrics["per_class"] == pytest.approx(separate_metrics["per_class"])


@pytest.mark.parametrize(
    "change",
    ["error", "config record", "metric keys", "array shape", "no weight", "zero weights"],
)
def test_replies_fedavg_would_not_average_alike_are_not_combined(change):
    messages = [m for m, _, _ in _calls(2)]
    replies = _train_replies(messages, [5, 1])
    content = replies[1].content
    if change == "error":
        replies[1] = Message(Error(code=0, reason="failed"), reply_to=messages[1])
    elif change == "config record":
        content["config"] = ConfigRecord({"x": 1})
    elif change == "metric keys":
        content["metrics"]["extra"] = 1.0
    elif change == "array shape":
        content["arrays"]["w"] = Array(np.zeros((3, 4), np.float32))
    elif change == "no weight":
        del content["metrics"]["num-examples"]
    else:
        for reply in replies:
            reply.content["metrics"]["num-examples"] = 0
    assert combine(messages[0], replies, "num-examples") is None


def test_only_a_weighted_mean_strategy_gets_combined_replies():
    assert mean_weighting_key(FedAvg(), "train") == "num-examples"
    assert mean_weighting_key(FedAdam(weighted_by_key="n"), "evaluate") == "n"
    custom = FedAvg(train_metrics_aggr_fn=lambda records, key: MetricRecord())  # may look at every reply
    assert mean_weighting_key(custom, "train") is None and mean_weighting_key(custom, "evaluate") == "num-examples"
    assert mean_weighting_key(type("MyFedAvg", (FedAvg,), {})(), "train") is None  # a subclass may, too
    assert mean_weighting_key(Krum(), "train") is None
    dp = DifferentialPrivacyClientSideFixedClipping(
        FedAvg(), noise_multiplier=1.0, clipping_norm=1.0, num_sampled_clients=2
    )
    assert mean_weighting_key(dp, "train") is None


class InProcessPool:
    """A pool that runs each cohort here, as a worker would (fl_core.cohorts.handle)."""

    retries = 0

    def __init__(self, client_app):
        self.client_app = client_app

    def wait_ready(self):
        return ["cpu"]

    def run(self, items, report=None, *, common=(), sizes=None, spans=None):
        return [handle(self.client_app, cohort, *common) for cohort in items]


def test_the_grid_folds_a_cohorts_replies_only_while_combining(message_identity):
    messages = [m for m, _, _ in _calls(4)]
    replies = {m.metadata.dst_node_id: r for m, r in zip(messages, _train_replies(messages, [5, 1, 30, 4]))}

    def together(messages, contexts):
        for context in contexts:
            context.state["trained"] = MetricRecord({"n": 1})
        return [Message(replies[m.metadata.dst_node_id].content, reply_to=m) for m in messages]

    app = _app_with_cohort(together)
    grid = RayGrid(InProcessPool(app), num_nodes=4, run_config={}, seed=0, run_id=1, client_app=app, cohort_size=2)

    def send():
        return grid.send_and_receive([Message(RecordDict(), 1000 + p, MessageType.TRAIN) for p in range(4)])

    each = send()
    assert len(each) == 4 and [grid.nodes_in(r) for r in each] == [1, 1, 1, 1]
    with grid.combining("num-examples"):
        folded = send()
    assert [r.metadata.src_node_id for r in folded] == [1000, 1002]  # replies from nodes 0 and 2, for their cohorts
    assert [grid.nodes_in(r) for r in folded] == [2, 2] and reply_counts(folded, "num-examples", grid.nodes_in) == (
        4,
        40,
    )
    assert all("trained" in grid.node_states()[1000 + p] for p in range(4))
    arrays, _ = _fedavg(folded)
    np.testing.assert_allclose(arrays["w"], _fedavg(each)[0]["w"], rtol=1e-6)
    assert grid.weighting_key is None and len(send()) == 4


def test_the_grid_keeps_only_the_states_that_hold_something(message_identity):
    """A node's Context is made for each call from its kept state: nodes that keep none cost nothing."""
    app = ClientApp()

    @app.train()
    def remember(message, context):
        had = "seen" in context.state
        if message.content["config"]["x"] > 0:
            context.state["seen"] = MetricRecord({"x": message.content["config"]["x"]})
        elif had:
            del context.state["seen"]
        return _reply(message, float(had))

    restored = {1003: RecordDict({"seen": MetricRecord({"x": 9.0})})}
    grid = RayGrid(InProcessPool(app), num_nodes=4, run_config={}, seed=0, run_id=1, node_states=restored)
    sent = [
        Message(RecordDict({"config": ConfigRecord({"x": x})}), node, MessageType.TRAIN)
        for node, x in [(1000, 1.0), (1001, 0.0), (1003, 0.0)]
    ]
    replies = grid.send_and_receive(sent)
    assert [r.content["metrics"]["v"] for r in replies] == [0.0, 0.0, 1.0]  # node 1003 got its restored state
    assert list(grid.node_states()) == [1000]  # 1003's state is empty now; 1001 and 1002 never held any
    assert grid.context(1002).node_config == {"partition-id": 2, "num-partitions": 4}
    with pytest.raises(ValueError, match="node 1004, which does not exist"):
        grid.push_messages([Message(RecordDict(), 1004, MessageType.TRAIN)])


# -- runs -------------------------------------------------------------------------------------------


def cohort_run(**settings):
    """8 nodes, 6 train and 4 validate a round, 3 rounds, with the given engine settings."""
    app, run_config, engine = tiny_run(
        {"pool_size": 8, **settings}, fraction_train=0.75, fraction_evaluate=0.5, num_server_rounds=3
    )
    return run_app(app, run_config, engine)


@pytest.fixture(scope="module")
def reference(ray_local):
    """Cohorts of up to 4 (a round's 6 training nodes make two of 3), each its own Ray call, 2 workers; FedAvg, so
    each cohort's replies reach the server folded into one."""
    return cohort_run(cohort_size=4, max_parallel_clients=2, nodes_per_call=1)


@pytest.mark.parametrize(
    "settings",
    [{"max_parallel_clients": 1}, {"max_parallel_clients": 2}, {"max_parallel_clients": 3, "nodes_per_call": 1}],
    ids=["1-worker", "2-workers", "3-workers"],
)
def test_a_runs_numbers_are_the_same_for_any_workers_with_cohorts(settings, reference):
    end = cohort_run(cohort_size=4, **settings)
    assert [row["train_clients"] for row in end.history] == [6, 6, 6]  # nodes, not the folded replies
    assert model_metrics(end.history) == model_metrics(reference.history)
    assert same_arrays(end.state.arrays, reference.state.arrays)


def test_cohorts_change_only_the_last_digits(reference):
    alone = cohort_run(cohort_size=1)
    assert [row.keys() for row in model_metrics(reference.history)] == [
        row.keys() for row in model_metrics(alone.history)
    ]
    assert not same_arrays(reference.state.arrays, alone.state.arrays)
    for name, array in reference.state.arrays.items():
        np.testing.assert_allclose(array.numpy(), alone.state.arrays[name].numpy(), rtol=1e-3, atol=1e-4)


def test_resuming_with_another_cohort_size_says_the_numbers_change():
    app, run_config, settings = tiny_run(settings={"cohort_size": 3}, num_server_rounds=10)
    notes = check_resume(checkpoint_state(), app, run_config, settings)
    assert len(notes) == 1 and "cohort_size" in notes[0] and "not bit-identical" in notes[0]
