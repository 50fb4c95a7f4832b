"""The built-in app's data: loading and partitioning."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
from cifar10_app.data import (
    ClientIndices,
    label_histograms,
    load_cifar10,
    make_synthetic,
    partition_summary,
    partitioner,
    split_validation,
)
from cifar10_app.data import load_data as shared_load_data

from fl_core import fuse_run_config, load_app_folder


def _config(pool_size=20, **kw):
    """(run config, pool size) of the built-in app on synthetic data; keys with `_` for `-`."""
    base = dict(dataset="synthetic", synthetic_size=2000)
    base.update(kw)
    return fuse_run_config(load_app_folder(None), {k.replace("_", "-"): v for k, v in base.items()}), pool_size


def load_federated_data(config):
    """The data the app's @shared load_data builds for (run config, pool size), computed afresh."""
    run_config, pool_size = config
    return shared_load_data.compute(run_config, pool_size).value


@pytest.mark.parametrize("partition", ["iid", "dirichlet", "pathological"])
def test_partitions_are_disjoint_deterministic_and_seeded(partition):
    cfg = _config(partition=partition, alpha=0.3, classes_per_client=2)
    a, b = load_federated_data(cfg), load_federated_data(cfg)
    other = load_federated_data(_config(partition=partition, alpha=0.3, classes_per_client=2, seed=1))
    assert a.num_clients == 20
    every = np.concatenate([*a.client_train, *a.client_val])
    assert len(every) == len(np.unique(every)), "a sample belongs to two clients"
    for x, y in zip([*a.client_train, *a.client_val], [*b.client_train, *b.client_val]):
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, y) for x, y in zip(a.client_train, other.client_train))


@pytest.mark.parametrize("partition", ["iid", "dirichlet", "pathological"])
def test_partitioner_hook_gives_each_clients_samples(partition):
    """The [tool.fedsweep] partitioner hook splits as load_data does: partition i is client i's train + val samples."""
    cfg = _config(partition=partition, alpha=0.3)
    data = load_federated_data(cfg)
    hooked = partitioner(*cfg)
    assert hooked.num_partitions == data.num_clients == 20
    for cid in range(data.num_clients):
        samples = np.sort(np.concatenate([data.client_train[cid], data.client_val[cid]]))
        part = hooked.load_partition(cid)
        np.testing.assert_array_equal(np.sort(part["idx"]), samples)
        assert part["label"] == data.train_labels[part["idx"]].tolist()


def test_iid_uses_every_sample_with_balanced_labels():
    data = load_federated_data(_config(partition="iid"))
    assert sum(len(t) + len(v) for t, v in zip(data.client_train, data.client_val)) == 2000
    hist = label_histograms(data)
    assert (hist > 0).sum(axis=1).min() >= 8  # 100 samples each: nearly every class present


def test_pathological_limits_classes_per_client():
    data = load_federated_data(_config(partition="pathological", classes_per_client=2, val_ratio=0.0))
    assert ((label_histograms(data) > 0).sum(axis=1) <= 2).all()


def test_niid_bench_label_quantity_gives_client_i_label_i_first():
    # NIID-Bench's #C=k split: client i holds label i mod 10 and k-1 others, each label's samples shared out evenly.
    data = load_federated_data(
        _config(
            pool_size=10,
            partition="pathological",
            classes_per_client=3,
            class_assignment="first-deterministic",
            val_ratio=0.0,
        )
    )
    hist = label_histograms(data)
    assert ((hist > 0).sum(axis=1) == 3).all()
    assert all(hist.iloc[i, i] > 0 for i in range(10))


def test_self_balancing_dirichlet_caps_the_largest_clients():
    # NIID-Bench's Dirichlet draw: a client that holds its average share (here 200) draws no more labels.
    sizes = lambda balancing: label_histograms(
        load_federated_data(
            _config(pool_size=10, partition="dirichlet", alpha=0.5, self_balancing=balancing, val_ratio=0.0)
        )
    ).sum(axis=1)
    balanced, free = sizes(True), sizes(False)
    assert balanced.sum() == free.sum() == 2000
    assert balanced.max() < free.max()


def test_dirichlet_small_alpha_is_skewed():
    skewed = label_histograms(load_federated_data(_config(partition="dirichlet", alpha=0.1)))
    flat = label_histograms(load_federated_data(_config(partition="dirichlet", alpha=100.0)))
    share = lambda h: (h.max(axis=1) / h.sum(axis=1)).mean()
    assert share(skewed) > share(flat) + 0.2


def test_large_dirichlet_pool_still_partitions():
    data = load_federated_data(_config(synthetic_size=20000, pool_size=1000, partition="dirichlet", alpha=0.5))
    assert data.num_clients == 1000 and min(len(t) for t in data.client_train) >= 1


def test_client_indices_hold_each_clients_array_in_one():
    parts = [np.array([5, 1]), np.array([], np.int64), np.array([7, 3, 2])]
    indices = ClientIndices(parts)
    assert len(indices) == 3 and indices.sizes().tolist() == [2, 0, 3] and indices.values.dtype == np.int64
    assert [x.tolist() for x in indices] == [[5, 1], [], [7, 3, 2]] and indices[-1].tolist() == [7, 3, 2]
    with pytest.raises(IndexError):
        indices[3]
    copy = pickle.loads(pickle.dumps(indices))
    assert [x.tolist() for x in copy] == [x.tolist() for x in indices] and len(ClientIndices([])) == 0
    train, val = split_validation(parts, 0.0, seed=0)  # no validation: each client's indices sorted
    assert [x.tolist() for x in train] == [[1, 5], [], [2, 3, 7]] and val.sizes().tolist() == [0, 0, 0]


def test_validation_split_ratio():
    data = load_federated_data(_config(val_ratio=0.2))
    for t, v in zip(data.client_train, data.client_val):
        assert len(v) == round(0.2 * (len(t) + len(v)))
    none = load_federated_data(_config(val_ratio=0.0))
    assert all(len(v) == 0 for v in none.client_val)


def test_summary_mentions_clients():
    text = partition_summary(load_federated_data(_config()))
    assert "20 clients" in text and "classes per client" in text


def test_synthetic_is_deterministic_and_cifar_shaped():
    a, b = make_synthetic(100, 3), make_synthetic(100, 3)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert a[0].shape == (100, 3, 32, 32) and a[0].dtype == np.uint8 and a[2].shape == (20, 3, 32, 32)
    # The partitioner hook's labels, drawn without the images, are the training labels.
    np.testing.assert_array_equal(make_synthetic(100, 3, labels_only=True), a[1])


def _write_fake_cifar(root, n=20):
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(rng.integers(0, 10, n))}
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump(batch, f)
    return folder


def test_reads_pickled_batches_in_plane_order(tmp_path):
    folder = _write_fake_cifar(tmp_path)
    train_x, train_y, test_x, test_y = load_cifar10(str(tmp_path))
    assert train_x.shape == (100, 3, 32, 32) and test_x.shape == (20, 3, 32, 32)
    with open(os.path.join(folder, "data_batch_1"), "rb") as f:
        first = pickle.load(f, encoding="bytes")
    # Row 0: 1024 red values, then green, then blue.
    np.testing.assert_array_equal(train_x[0, 1].ravel(), first[b"data"][0, 1024:2048])
    assert train_y[0] == first[b"labels"][0]


def test_incomplete_cifar_folder_is_reported(tmp_path):
    folder = _write_fake_cifar(tmp_path)
    os.remove(os.path.join(folder, "test_batch"))
    with pytest.raises(ValueError, match="missing test_batch"):
        load_cifar10(str(tmp_path))


def test_offline_without_data_says_how_to_supply_it(tmp_path, monkeypatch):
    import torchvision

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(ValueError, match="could not be downloaded.*--dataset synthetic"):
        load_cifar10(str(tmp_path))
    with pytest.raises(ValueError, match="could not be downloaded"):
        load_cifar10(str(tmp_path / "fresh"))
    assert not (tmp_path / "fresh").exists(), "a failed download left its folder behind"


def test_data_keys_are_the_ones_read():
    """load_data reads alpha only for Dirichlet splits: a sweep over alpha with IID splits shares one data set."""
    iid = shared_load_data.compute(*_config(partition="iid"))
    dirichlet = shared_load_data.compute(*_config(partition="dirichlet"))
    assert "alpha" not in iid.inputs and "alpha" in dirichlet.inputs
    assert {"dataset", "synthetic-size", "partition", "val-ratio", "seed"} <= set(iid.inputs)
    assert "lr" not in iid.inputs and "data-dir" not in iid.inputs  # synthetic data: the folder does not matter
    other_lr, _ = _config(partition="iid", lr=0.5)
    assert iid.matches(other_lr, 20) and not iid.matches(other_lr, 21)


def test_real_cifar10_loads(cifar_dir):
    data = load_federated_data(_config(pool_size=100, dataset="cifar10", data_dir=cifar_dir))
    assert data.train_images.shape == (50000, 3, 32, 32) and data.test_images.shape == (10000, 3, 32, 32)
    assert np.bincount(data.test_labels).tolist() == [1000] * 10
