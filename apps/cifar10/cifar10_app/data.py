"""CIFAR-10 (or a CIFAR-shaped synthetic set), split into federated clients.

Images stay uint8 NCHW numpy arrays in one `FederatedData` object. `load_data`
is `@fl_core.shared`: under fedsweep the driver builds it once and every worker
reads it from Ray's object store (shared memory); under Flower's own engine each
process builds it once. Clients are index arrays into the training set, built
with Flower Datasets' partitioners; `partitioner` hands fedsweep the same
partitioner (its `[tool.fedsweep] partitioner` hook) for the partitions'
label-distribution files.
"""

from __future__ import annotations

import functools
import math
import os
import pickle
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fl_core import shared

NUM_CLASSES = 10
CIFAR_FOLDER = "cifar-10-batches-py"
DEFAULT_DATA_DIR = "data"
# PathologicalPartitioner's class_assignment_mode: "first-deterministic" gives node i class i mod 10 first, then random
# others, as NIID-Bench's #C=k ("sort and partition") split does.
CLASS_ASSIGNMENTS = ("random", "first-deterministic", "deterministic")


class ClientIndices(Sequence):
    """Each client's indices into the training set, all in one array: client i's are `values[offsets[i]:offsets[i+1]]`.

    One array instead of one per client: Ray's object store writes and reads
    small arrays one by one, which for many clients took seconds on the driver
    and on every worker before its first round (bench/README.md, "A cohort's
    mean from the app, client indices in one array").
    """

    def __init__(self, per_client: list[np.ndarray]) -> None:
        lengths = np.fromiter((len(p) for p in per_client), np.int64, len(per_client))
        self.offsets = np.concatenate([[0], np.cumsum(lengths)])
        self.values = np.concatenate(per_client).astype(np.int64) if per_client else np.zeros(0, np.int64)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, cid: int) -> np.ndarray:
        if not -len(self) <= cid < len(self):
            raise IndexError(f"client {cid} of {len(self)}")
        cid %= len(self)
        return self.values[self.offsets[cid] : self.offsets[cid + 1]]

    def sizes(self) -> np.ndarray:
        """Number of indices of each client."""
        return np.diff(self.offsets)


@dataclass
class FederatedData:
    """Train/test arrays plus each client's train and validation indices."""

    train_images: np.ndarray  # uint8, (N, 3, 32, 32)
    train_labels: np.ndarray  # int64, (N,)
    test_images: np.ndarray
    test_labels: np.ndarray
    client_train: ClientIndices
    client_val: ClientIndices

    @property
    def num_clients(self) -> int:
        """Number of client partitions."""
        return len(self.client_train)

    def client_arrays(self, cid: int, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(images, labels) of one client's `train` or `val` split (a copy of that split only)."""
        idx = (self.client_train if split == "train" else self.client_val)[cid]
        return self.train_images[idx], self.train_labels[idx]


# ---------------------------------------------------------------------------
# Loading


def _read_batch(path: str) -> tuple[np.ndarray, np.ndarray]:
    """One pickled CIFAR batch file -> (uint8 NCHW images, int64 labels)."""
    with open(path, "rb") as f:
        batch = pickle.load(f, encoding="latin1")  # the official files are Python 2 pickles
    # Python 2 pickles may carry bytes keys, Python 3 re-packs str keys.
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    images = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    return images, np.asarray(batch["labels"], dtype=np.int64)


def load_cifar10(data_dir: str | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Read CIFAR-10 from `data_dir/cifar-10-batches-py`, downloading it with torchvision if absent.

    The batches are read directly, so a copy whose archive checksum differs from
    the official one (e.g. a re-encoded mirror) still loads.
    """
    root = data_dir or DEFAULT_DATA_DIR
    folder = os.path.join(root, CIFAR_FOLDER)
    if not os.path.isdir(folder):
        created = not os.path.exists(root)
        try:
            import torchvision

            os.makedirs(root, exist_ok=True)
            torchvision.datasets.CIFAR10(root=root, train=True, download=True)
        except Exception as exc:  # offline, proxy, disk: all end the same way for the user
            if created:
                shutil.rmtree(root, ignore_errors=True)  # leave nothing behind on failure
            raise ValueError(
                f"CIFAR-10 is not in {folder} and could not be downloaded ({type(exc).__name__}: {exc}); "
                f"put the python-version archive's {CIFAR_FOLDER}/ folder under --data-dir, or use --dataset synthetic"
            ) from None
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    missing = [n for n in names if not os.path.isfile(os.path.join(folder, n))]
    if missing:
        raise ValueError(
            f"{folder} is incomplete (missing {', '.join(missing)}): restore it or delete it to re-download"
        )
    try:
        parts = [_read_batch(os.path.join(folder, n)) for n in names]
    except Exception as exc:
        raise ValueError(f"cannot read CIFAR-10 batches in {folder}: {type(exc).__name__}: {exc}") from None
    train_x = np.concatenate([p[0] for p in parts[:5]])
    train_y = np.concatenate([p[1] for p in parts[:5]])
    return train_x, train_y, parts[5][0], parts[5][1]


SYNTHETIC_CHUNK = 1024  # images drawn at a time by make_synthetic (12 MB of float32)
NOISE_WIDTH = np.float32(40.0 * 12**0.5)  # uniform noise on this width has a standard deviation of 40


def make_synthetic(num_train: int, seed: int, labels_only: bool = False):
    """A learnable CIFAR-shaped set: each class is a smooth random template plus noise.

    The noise is uniform with a standard deviation of 40 (a fifth of the
    time of normal noise's draws, which took 7 of a 200,000-image set's 8 s).

    (train images, train labels, test images, test labels); the test set has
    num_train // 5 images (at least 10). Same (size, seed), same bytes. With
    `labels_only`, just the train labels, drawn without the images (which are
    drawn after them): what the partitioner needs, in microseconds.
    """
    rng = np.random.default_rng([seed, 7919])
    templates = rng.uniform(-1, 1, size=(NUM_CLASSES, 3, 4, 4)).astype(np.float32)
    templates = 127.5 + 90.0 * np.kron(templates, np.ones((1, 1, 8, 8), np.float32))  # 4x4 blocks -> 32x32
    if labels_only:
        return rng.integers(0, NUM_CLASSES, size=num_train).astype(np.int64)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.integers(0, NUM_CLASSES, size=n)
        images = np.empty((n, 3, 32, 32), np.uint8)
        # In chunks that stay in cache: the same draws in the same order as one call, twice as fast at 200,000 images.
        for start in range(0, n, SYNTHETIC_CHUNK):
            end = min(start + SYNTHETIC_CHUNK, n)
            pixels = rng.random(size=(end - start, 3, 32, 32), dtype=np.float32)
            pixels -= 0.5
            pixels *= NOISE_WIDTH
            pixels += templates[labels[start:end]]
            images[start:end] = np.clip(pixels, 0, 255, out=pixels)
        return images, labels.astype(np.int64)

    train_x, train_y = draw(num_train)
    test_x, test_y = draw(max(num_train // 5, 10))
    return train_x, train_y, test_x, test_y


# ---------------------------------------------------------------------------
# Partitioning


def _make_partitioner(
    partition: str,
    num_partitions: int,
    num_samples: int,
    alpha: float,
    self_balancing: bool,
    classes_per_client: int,
    class_assignment: str,
    seed: int,
):
    """The Flower Datasets partitioner for the scheme."""
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, PathologicalPartitioner

    if partition == "iid":
        return IidPartitioner(num_partitions=num_partitions)
    if partition == "dirichlet":
        return DirichletPartitioner(
            num_partitions=num_partitions,
            partition_by="label",
            alpha=alpha,
            # Flower's default of 10, lowered for large pools (50 samples a client
            # at alpha 0.5 almost never gives every client 10: the draw would fail).
            min_partition_size=min(10, max(1, num_samples // num_partitions // 10)),
            self_balancing=self_balancing,
            shuffle=True,
            seed=seed,
        )
    return PathologicalPartitioner(
        num_partitions=num_partitions,
        partition_by="label",
        num_classes_per_partition=classes_per_client,
        class_assignment_mode=class_assignment,
        shuffle=True,
        seed=seed,
    )


def build_partitioner(
    labels: np.ndarray,
    partition: str,
    num_partitions: int,
    *,
    alpha: float = 0.5,
    self_balancing: bool = False,
    classes_per_client: int = 2,
    class_assignment: str = "random",
    seed: int = 0,
):
    """The scheme's Flower Datasets partitioner with its dataset assigned: a table of `label` and `idx` (row index).

    The one place the split is defined: `partition_indices` reads the clients'
    indices from it, and fedsweep's `partitioner` hook hands it over for the
    label-distribution files.
    """
    import datasets

    datasets.disable_progress_bars()
    table = datasets.Dataset.from_dict({"label": labels, "idx": np.arange(len(labels))})
    if partition == "iid":
        # IidPartitioner takes contiguous shards: shuffle first, as FederatedDataset does.
        table = table.shuffle(seed=seed).flatten_indices()
    partitioner = _make_partitioner(
        partition, num_partitions, len(labels), alpha, self_balancing, classes_per_client, class_assignment, seed
    )
    partitioner.dataset = table
    try:
        with warnings.catch_warnings():
            # DirichletPartitioner warns on every redraw for min_partition_size; redraws are expected.
            warnings.simplefilter("ignore", UserWarning)
            partitioner.load_partition(0)  # the split is drawn at the first load: here, once, quietly
    except ValueError as exc:
        raise ValueError(
            f"cannot split {len(labels)} samples into {num_partitions} {partition} partitions ({exc}); "
            "use fewer clients, a larger alpha or more classes-per-client"
        ) from None
    return partitioner


def partition_indices(labels: np.ndarray, partition: str, num_partitions: int, **scheme) -> list[np.ndarray]:
    """Training-set indices of each of `num_partitions` clients (`scheme`: build_partitioner's keywords); deterministic
    from the seed."""
    from fl_core.partitions import partition_rows  # Flower Datasets: imported only where data is split

    partitioner = build_partitioner(labels, partition, num_partitions, **scheme)
    # The partitioner's rows, read once (not a dataset per partition: 1 ms each, minutes for 100,000 clients).
    rows = partition_rows(partitioner)
    idx = np.asarray(partitioner.dataset.with_format("numpy")[:]["idx"], dtype=np.int64)  # [:]: one batch read
    return [idx[r] for r in rows]


def split_validation(indices: list[np.ndarray], val_ratio: float, seed: int) -> tuple[ClientIndices, ClientIndices]:
    """Hold out `val_ratio` of each client's samples (at least one when possible) as its validation split."""
    if val_ratio == 0:  # what the loop below gives, without a generator per client
        return ClientIndices([np.sort(idx) for idx in indices]), ClientIndices([idx[:0] for idx in indices])
    train, val = [], []
    for cid, idx in enumerate(indices):
        order = np.random.default_rng([seed, cid, 1]).permutation(idx)
        n_val = int(round(len(order) * val_ratio))
        if val_ratio > 0 and len(order) >= 2:
            n_val = min(max(n_val, 1), len(order) - 1)
        train.append(np.sort(order[n_val:]))
        val.append(np.sort(order[:n_val]))
    return ClientIndices(train), ClientIndices(val)


def check_data_config(run_config, num_partitions: int) -> None:
    """Raise ValueError, with what to change, on the first bad value of the keys load_data reads."""

    def need(ok: bool, message: str) -> None:
        if not ok:
            raise ValueError(message)

    rc = run_config
    need(rc["dataset"] in ("cifar10", "synthetic"), f"dataset must be cifar10 or synthetic, got {rc['dataset']!r}")
    need(
        rc["partition"] in ("iid", "dirichlet", "pathological"),
        f"partition must be one of iid, dirichlet, pathological, got {rc['partition']!r}",
    )
    need(rc["alpha"] > 0 and math.isfinite(rc["alpha"]), f"alpha must be a positive number, got {rc['alpha']}")
    need(rc["classes-per-client"] >= 1, f"classes-per-client must be at least 1, got {rc['classes-per-client']}")
    need(
        rc["class-assignment"] in CLASS_ASSIGNMENTS,
        f"class-assignment must be one of {', '.join(CLASS_ASSIGNMENTS)}, got {rc['class-assignment']!r}",
    )
    need(0 <= rc["val-ratio"] < 1, f"val-ratio must be in [0, 1), got {rc['val-ratio']}")
    need(rc["synthetic-size"] >= 10, f"synthetic-size must be at least 10, got {rc['synthetic-size']}")
    need(
        rc["data-dir"] == "" or os.path.isdir(rc["data-dir"]),
        f"data-dir {rc['data-dir']} does not exist: create it or point it at the folder holding cifar-10-batches-py",
    )
    need(num_partitions >= 1, f"--pool-size must be at least 1, got {num_partitions}")


def _arrays(run_config) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images, train labels, test images, test labels) of the run config's data set, unsplit."""
    if run_config["dataset"] == "cifar10":
        return load_cifar10(run_config["data-dir"] or None)
    return make_synthetic(int(run_config["synthetic-size"]), int(run_config["seed"]))


def _scheme(run_config) -> dict:
    """The run config's partitioning keys as `build_partitioner` takes them.

    Each scheme's own keys are read only by that scheme, so that @shared records
    them only then (a sweep over alpha with IID splits shares one data set).
    """
    partition, scheme = run_config["partition"], {}
    if partition == "dirichlet":
        scheme = dict(alpha=float(run_config["alpha"]), self_balancing=bool(run_config["self-balancing"]))
    elif partition == "pathological":
        scheme = dict(
            classes_per_client=int(run_config["classes-per-client"]),
            class_assignment=str(run_config["class-assignment"]),
        )
    return dict(partition=partition, seed=int(run_config["seed"]), **scheme)


@shared
def load_data(run_config, num_partitions: int) -> FederatedData:
    """The run's data set split into `num_partitions` clients, from the run config's data keys."""
    train_x, train_y, test_x, test_y = _arrays(run_config)
    if num_partitions > len(train_y):
        raise ValueError(f"--pool-size {num_partitions} exceeds the {len(train_y)} training samples")
    scheme = _scheme(run_config)
    parts = partition_indices(train_y, num_partitions=num_partitions, **scheme)
    client_train, client_val = split_validation(parts, float(run_config["val-ratio"]), scheme["seed"])
    return FederatedData(train_x, train_y, test_x, test_y, client_train, client_val)


def test_set(run_config) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) of the run config's test set, for a central evaluation that has no pool size at hand.

    Read once per process and data set (the training set is read with it and dropped).
    """
    return _test_set(
        run_config["dataset"], run_config["data-dir"], int(run_config["synthetic-size"]), int(run_config["seed"])
    )


@functools.lru_cache(maxsize=2)
def _test_set(dataset: str, data_dir: str, synthetic_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """test_set's cache: keyed by what `_arrays` reads."""
    _, _, images, labels = _arrays(
        {"dataset": dataset, "data-dir": data_dir, "synthetic-size": synthetic_size, "seed": seed}
    )
    return images, labels


def partitioner(run_config, num_partitions: int):
    """fedsweep's `[tool.fedsweep] partitioner` hook: the partitioner `load_data` splits the training set with.

    Partition i holds client i's samples, its train and validation splits
    together, with their labels in column `label`. The labels are read again
    (CIFAR-10's images are dropped, the synthetic set's never drawn): the hook
    must not keep a second copy of the data set.
    """
    if run_config["dataset"] == "synthetic":
        train_labels = make_synthetic(int(run_config["synthetic-size"]), int(run_config["seed"]), labels_only=True)
    else:
        train_labels = _arrays(run_config)[1]
    return build_partitioner(train_labels, num_partitions=num_partitions, **_scheme(run_config))


def label_histograms(data: FederatedData) -> pd.DataFrame:
    """Clients x classes table of training-label counts."""
    train = data.client_train
    owner = np.repeat(np.arange(len(train)), train.sizes())
    counts = np.bincount(owner * NUM_CLASSES + data.train_labels[train.values], minlength=len(train) * NUM_CLASSES)
    counts = counts.reshape(len(train), NUM_CLASSES)
    return pd.DataFrame(counts, columns=[f"c{k}" for k in range(NUM_CLASSES)]).rename_axis("client")


def partition_summary(data: FederatedData, show: int = 5) -> str:
    """A few lines on client sizes and label skew, plus the first clients' histograms."""
    hist = label_histograms(data)
    sizes = hist.sum(axis=1)
    classes = (hist > 0).sum(axis=1)
    top_share = hist.max(axis=1) / sizes.clip(lower=1)
    val_sizes = data.client_val.sizes()
    lines = [
        f"{data.num_clients} clients; train samples per client min {sizes.min()} / mean "
        f"{sizes.mean():.1f} / max {sizes.max()}; "
        f"validation min {val_sizes.min()} / max {val_sizes.max()}",
        f"classes per client min {classes.min()} / mean {classes.mean():.2f} / max {classes.max()}; "
        f"largest-class share mean {top_share.mean():.2f}",
        hist.head(show).to_string(),
    ]
    return "\n".join(lines)
