"""The built-in app's model, tensor training loop and augmentation, and its ClientApp called with Messages."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cifar10_app.client_app import app as client_app
from cifar10_app.data import load_data
from cifar10_app.task import Net, client_seed, crop_flip, evaluate, initial_model, place_model, to_tensor, train
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict

from tests.conftest import tiny_run


def weights(model) -> list[np.ndarray]:
    """The model's weights as numpy arrays, in state_dict order."""
    return [v.detach().cpu().numpy().copy() for v in model.state_dict().values()]


@pytest.fixture(scope="module")
def run_config():
    """The built-in app's run config for a small synthetic run (4 nodes)."""
    return tiny_run(synthetic_size=800)[1]


@pytest.fixture(scope="module")
def data(run_config):
    """The data of that run."""
    return load_data(run_config, 4)


def test_seed_cnn_has_62006_parameters():
    assert sum(p.numel() for p in Net().parameters()) == 62006


def test_model_init_depends_on_seed_only():
    a, b, c = (weights(initial_model(s)) for s in (1, 1, 2))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])


def test_weights_round_trip_through_an_array_record_in_channels_last():
    model = place_model(initial_model(0), "cpu")
    record = ArrayRecord(place_model(initial_model(5), "cpu").state_dict())
    model.load_state_dict(record.to_torch_state_dict())
    assert all(np.array_equal(x, y) for x, y in zip(weights(model), weights(initial_model(5))))


def test_normalisation_range():
    x = to_tensor(np.array([[[[0, 255]]]], dtype=np.uint8))
    assert x.flatten().tolist() == [-1.0, 1.0]


def test_crop_flip_shifts_or_flips_per_sample():
    batch = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).reshape(2, 3, 32, 32)
    out = crop_flip(batch, torch.Generator().manual_seed(0))
    again = crop_flip(batch, torch.Generator().manual_seed(0))
    assert out.shape == batch.shape and torch.equal(out, again)
    # Each output image is a crop of the reflect-padded input, possibly mirrored.
    padded = torch.nn.functional.pad(batch, (4, 4, 4, 4), mode="reflect")
    for i in range(2):
        found = any(
            torch.equal(out[i], padded[i, :, r : r + 32, c : c + 32])
            or torch.equal(out[i], padded[i, :, r : r + 32, c : c + 32].flip(2))
            for r in range(9)
            for c in range(9)
        )
        assert found


def test_cpu_layout_is_channels_last_and_changes_only_rounding(data):
    x, y = to_tensor(data.train_images[:256]), torch.from_numpy(data.train_labels[:256])
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert crop_flip(x[:8], torch.Generator().manual_seed(0)).is_contiguous(memory_format=torch.channels_last)
    placed = place_model(initial_model(0), "cpu")
    assert placed.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    plain = initial_model(0)
    for model, inputs in ((placed, x), (plain, x.contiguous())):
        train(
            model,
            inputs,
            y,
            epochs=1,
            batch_size=32,
            lr=0.05,
            momentum=0.9,
            weight_decay=0.0,
            augment="crop-flip",
            generator=torch.Generator().manual_seed(3),
        )
    for a, b in zip(weights(placed), weights(plain)):
        assert a.flags.c_contiguous and a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-4)


def test_training_lowers_loss(data):
    model = initial_model(0)
    x, y = to_tensor(data.train_images[:600]), torch.from_numpy(data.train_labels[:600])
    before, _ = evaluate(model, x, y, 200)
    train(
        model,
        x,
        y,
        epochs=3,
        batch_size=32,
        lr=0.05,
        momentum=0.9,
        weight_decay=0.0,
        augment="crop-flip",
        generator=torch.Generator().manual_seed(0),
    )
    after, accuracy = evaluate(model, x, y, 200)
    assert after < before and accuracy > 0.3


def _call(run_config, kind: str, partition_id: int = 0, state: RecordDict | None = None, **config) -> Message:
    """The ClientApp's reply to a train or evaluate message carrying initial_model(1)'s weights."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    content = RecordDict(
        {
            "arrays": ArrayRecord(initial_model(1).state_dict()),
            "config": ConfigRecord({"server-round": 1, "lr": 0.05, "local-epochs": 1, **config}),
        }
    )
    message = Message(content, 1000 + partition_id, MessageType.TRAIN if kind == "train" else MessageType.EVALUATE)
    context = Context(
        run_id=1,
        node_id=1000 + partition_id,
        state=state or RecordDict(),
        run_config=run_config,
        node_config={"partition-id": partition_id, "num-partitions": 4},
    )
    return client_app(message, context)


def _trained(run_config, **config) -> list[np.ndarray]:
    reply = _call(run_config, "train", **config)
    return [a.numpy() for a in reply.content["arrays"].values()]


def test_train_is_reproducible_and_seeded_by_round(run_config, data):
    reply = _call(run_config, "train")
    metrics = reply.content["metrics"]
    assert metrics["num-examples"] == len(data.client_train[0]) and metrics["train_loss"] > 0
    a, b, c = _trained(run_config), _trained(run_config), _trained(run_config, **{"server-round": 2})
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])


def test_fedprox_term_pulls_towards_global_and_is_not_reported(run_config):
    start = weights(initial_model(1))
    dist = lambda p: sum(float(((x - y) ** 2).sum()) for x, y in zip(p, start))
    plain = _trained(run_config, lr=0.1)
    prox = _trained(run_config, lr=0.1, **{"proximal-mu": 10.0})
    assert dist(prox) < dist(plain)
    plain_loss = _call(run_config, "train", lr=0.1)
    tiny_mu = _call(run_config, "train", lr=0.1, **{"proximal-mu": 1e-12})
    # The proximal term shapes the update but is not part of the reported training loss.
    assert tiny_mu.content["metrics"]["train_loss"] == pytest.approx(
        plain_loss.content["metrics"]["train_loss"], rel=1e-6
    )


def test_evaluate_reports_accuracy(run_config, data):
    metrics = _call(run_config, "evaluate", partition_id=1).content["metrics"]
    assert metrics["num-examples"] == len(data.client_val[1]) and 0 <= metrics["accuracy"] <= 1 and metrics["loss"] > 0


def test_client_side_dp_clips_the_update(run_config):
    clipped = {**run_config, "dp": "client-fixed"}
    start = weights(initial_model(1))
    update = [x - y for x, y in zip(_trained(clipped, lr=0.1, **{"clipping_norm": 0.01}), start)]
    assert np.sqrt(sum(float((u**2).sum()) for u in update)) <= 0.01 + 1e-6


def test_client_seed_is_a_pure_function():
    assert client_seed(0, 3, 7) == client_seed(0, 3, 7) != client_seed(0, 3, 8) != client_seed(1, 3, 7)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback; this machine has CUDA")
@pytest.mark.parametrize("visible, line", [(None, ""), ("3", "computes on cpu (CUDA_VISIBLE_DEVICES='3')")])
def test_pick_device_falls_back_to_the_cpu_and_says_so_where_gpus_were_given(monkeypatch, capsys, visible, line):
    """A worker given a GPU (Ray set CUDA_VISIBLE_DEVICES) that torch cannot use says it computes on the CPU, once;
    a CPU-only process says nothing."""
    from cifar10_app import task

    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    task.pick_device.cache_clear()
    try:
        assert task.pick_device() == task.pick_device() == torch.device("cpu")
        out = capsys.readouterr().out
    finally:
        task.pick_device.cache_clear()
    assert (out.count(line) == 1 and out.count("cifar10_app:") == 1) if line else out == ""
