"""Model, tensor training loop, augmentation and the Flower client."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fl_core.client import CifarClient, client_seed
from fl_core.data import load_federated_data
from fl_core.models import build_model
from fl_core.task import crop_flip, evaluate, get_parameters, place_model, set_parameters, to_tensor, train
from tests.conftest import tiny_config


def fit_config(**kw):
    cfg = dict(server_round=1, seed=0, local_epochs=1, batch_size=16, lr=0.05, momentum=0.9,
               weight_decay=0.0, augment="none", resumed_from=0)
    cfg.update(kw)
    return cfg


@pytest.fixture(scope="module")
def data():
    return load_federated_data(tiny_config(synthetic_size=800))


def test_seed_cnn_has_62006_parameters():
    model = build_model("cnn", 0)
    assert sum(p.numel() for p in model.parameters()) == 62006


def test_model_init_depends_on_seed_only():
    a, b, c = (get_parameters(build_model("cnn", s)) for s in (1, 1, 2))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])


def test_parameters_round_trip():
    model = build_model("cnn", 0)
    params = get_parameters(build_model("cnn", 5))
    set_parameters(model, params)
    assert all(np.array_equal(x, y) for x, y in zip(get_parameters(model), params))


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
            torch.equal(out[i], padded[i, :, r : r + 32, c : c + 32]) or torch.equal(out[i], padded[i, :, r : r + 32, c : c + 32].flip(2))
            for r in range(9)
            for c in range(9)
        )
        assert found


def test_cpu_layout_is_channels_last_and_changes_only_rounding(data):
    x, y = to_tensor(data.train_images[:256]), torch.from_numpy(data.train_labels[:256])
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert crop_flip(x[:8], torch.Generator().manual_seed(0)).is_contiguous(memory_format=torch.channels_last)
    placed = place_model(build_model("cnn", 0), "cpu")
    assert placed.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    plain = build_model("cnn", 0)
    for model, inputs in ((placed, x), (plain, x.contiguous())):
        train(model, inputs, y, epochs=1, batch_size=32, lr=0.05, momentum=0.9, weight_decay=0.0, augment="crop-flip",
              generator=torch.Generator().manual_seed(3))
    for a, b in zip(get_parameters(placed), get_parameters(plain)):
        assert a.flags.c_contiguous and a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-4)


def test_training_lowers_loss(data):
    model = build_model("cnn", 0)
    x, y = to_tensor(data.train_images[:600]), torch.from_numpy(data.train_labels[:600])
    before, _ = evaluate(model, x, y, 200)
    train(model, x, y, epochs=3, batch_size=32, lr=0.05, momentum=0.9, weight_decay=0.0, augment="crop-flip",
          generator=torch.Generator().manual_seed(0))
    after, accuracy = evaluate(model, x, y, 200)
    assert after < before and accuracy > 0.3


def _fit(data, **kw):
    client = CifarClient(0, data, build_model("cnn", 0), torch.device("cpu"))
    return client.fit(get_parameters(build_model("cnn", 1)), fit_config(**kw))


def test_client_fit_is_reproducible_and_seeded_by_round(data):
    a, n, metrics = _fit(data)
    b, _, _ = _fit(data)
    c, _, _ = _fit(data, server_round=2)
    assert n == len(data.client_train[0]) and metrics["train_loss"] > 0
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])


def test_fedprox_term_pulls_towards_global(data):
    start = get_parameters(build_model("cnn", 1))
    dist = lambda p: sum(float(((x - y) ** 2).sum()) for x, y in zip(p, start))
    plain, _, _ = _fit(data, lr=0.1)
    prox, _, _ = _fit(data, lr=0.1, proximal_mu=10.0)
    assert dist(prox) < dist(plain)


def test_client_evaluate_reports_accuracy(data):
    client = CifarClient(1, data, build_model("cnn", 0), torch.device("cpu"))
    loss, n, metrics = client.evaluate(get_parameters(build_model("cnn", 0)), {"batch_size": 50})
    assert n == len(data.client_val[1]) and 0 <= metrics["accuracy"] <= 1 and loss > 0


def test_client_seed_is_a_pure_function():
    assert client_seed(0, 3, 7) == client_seed(0, 3, 7) != client_seed(0, 3, 8) != client_seed(1, 3, 7)
