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
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fl_core import cohort, run_app
from fl_core.checkpoint import check_resume
from fl_core.cohorts import cohort_function, handle, split
from fl_core.failures import Raised
from fl_core.pool import ClientAppWorker
from tests.conftest import checkpoint_state, model_metrics, same_arrays, tiny_run


@pytest.fixture(autouse=True)
def message_identity():
    """Messages are built outside a Flower process: Flower needs its task identity set first."""
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, SUPERLINK_NODE_ID, 1


def test_split_makes_near_equal_runs_of_at_most_size_by_order_alone():
    assert split(10, 8) == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    assert [len(c) for c in split(50, 8)] == [8, 7, 7, 7, 7, 7, 7]
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


def test_a_worker_reports_a_cohort_that_raised_as_one_failure():
    def broken(messages, contexts):
        raise RuntimeError("cohort broke")

    worker = types.SimpleNamespace(client_app=_app_with_cohort(broken))
    calls = _calls(3)
    out = list(ClientAppWorker.handle(worker, [calls[:2], calls[2:]]))
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


# -- runs -------------------------------------------------------------------------------------------


def cohort_run(**settings):
    """8 nodes, 6 train and 4 validate a round, 3 rounds, with the given engine settings."""
    app, run_config, engine = tiny_run(
        {"pool_size": 8, **settings}, fraction_train=0.75, fraction_evaluate=0.5, num_server_rounds=3
    )
    return run_app(app, run_config, engine)


@pytest.fixture(scope="module")
def reference(ray_local):
    """Cohorts of 2 or 1 (4 a round's 6 training nodes), each its own Ray call, 2 workers."""
    return cohort_run(cohort_size=4, max_parallel_clients=2, nodes_per_call=1)


@pytest.mark.parametrize(
    "settings",
    [{"max_parallel_clients": 1}, {"max_parallel_clients": 2}, {"max_parallel_clients": 3, "nodes_per_call": 1}],
    ids=["1-worker", "2-workers", "3-workers"],
)
def test_a_runs_numbers_are_the_same_for_any_workers_with_cohorts(settings, reference):
    end = cohort_run(cohort_size=4, **settings)
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
