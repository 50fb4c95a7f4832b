"""fl_core.partitions: a Flower Datasets partitioner's split and label counts, read without a dataset per partition."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from datasets import ClassLabel, Dataset, Features, Value
from flwr_datasets import partitioner as fp
from flwr_datasets.metrics import compute_counts

from fl_core.partitions import label_counts, partition_rows

NAMES = [f"class-{k}" for k in range(6)]


def table(size: int = 600) -> Dataset:
    """Rows numbered in `row`, a ClassLabel `label` and a `user` id for the natural-id partitioner."""
    rng = np.random.default_rng(0)
    features = Features({"row": Value("int64"), "label": ClassLabel(names=NAMES), "user": Value("string")})
    return Dataset.from_dict(
        {
            "row": np.arange(size),
            "label": rng.integers(0, 6, size),
            "user": [f"u{k}" for k in rng.integers(0, 9, size)],
        },
        features=features,
    )


PARTITIONERS = {
    "iid": lambda: fp.IidPartitioner(num_partitions=7),  # 600 rows: shards of 86 and 85, uneven on purpose
    "dirichlet": lambda: fp.DirichletPartitioner(
        num_partitions=9, partition_by="label", alpha=0.4, seed=3, min_partition_size=5
    ),
    "pathological": lambda: fp.PathologicalPartitioner(
        num_partitions=8, partition_by="label", num_classes_per_partition=2, seed=1
    ),
    "shard": lambda: fp.ShardPartitioner(num_partitions=6, partition_by="label", num_shards_per_partition=2, seed=2),
    "linear": lambda: fp.LinearPartitioner(num_partitions=5),
    "natural-id": lambda: fp.NaturalIdPartitioner(partition_by="user"),
}


def assigned(name: str, dataset: Dataset | None = None):
    """The named partitioner with its dataset assigned."""
    partitioner = PARTITIONERS[name]()
    partitioner.dataset = table() if dataset is None else dataset
    return partitioner


@pytest.mark.parametrize("name", list(PARTITIONERS))
def test_rows_are_those_load_partition_selects(name):
    partitioner = assigned(name)
    rows = partition_rows(partitioner)
    assert rows is not None and len(rows) == partitioner.num_partitions
    # Row numbers of the partitioner's dataset as the split left it (ShardPartitioner sorts it by label).
    view = np.asarray(partitioner.dataset.with_format("numpy")[:]["row"])
    for i, mine in enumerate(rows):
        np.testing.assert_array_equal(view[mine], partitioner.load_partition(i)["row"])


def test_rows_of_a_shuffled_view_index_that_view():
    """IID after a shuffle (how the built-in app splits): rows number the view, not the underlying table."""
    partitioner = assigned("iid", table().shuffle(seed=5))
    view = np.asarray(partitioner.dataset.with_format("numpy")[:]["row"])
    for i, mine in enumerate(partition_rows(partitioner)):
        np.testing.assert_array_equal(view[mine], partitioner.load_partition(i)["row"])


@pytest.mark.parametrize("verbose", [False, True])
@pytest.mark.parametrize("name", list(PARTITIONERS))
def test_label_counts_are_compute_counts_table(name, verbose):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # partitioners' own warnings (e.g. Dirichlet redraws)
        expected = compute_counts(assigned(name), "label", verbose_names=verbose)
        mine = label_counts(assigned(name), "label", verbose_names=verbose)
    pd.testing.assert_frame_equal(mine, expected)
    assert (list(mine.columns) == NAMES) if verbose else (list(mine.columns) == list(range(6)))


def test_a_partitioner_that_loads_its_own_way_is_read_through_load_partition():
    class EveryOther(fp.IidPartitioner):
        """Overrides load_partition: its rows are not the IID shards any more."""

        def load_partition(self, partition_id):
            return self.dataset.select(range(partition_id, len(self.dataset), self.num_partitions))

    partitioner = EveryOther(num_partitions=4)
    partitioner.dataset = table()
    assert partition_rows(partitioner) is None
    pd.testing.assert_frame_equal(label_counts(partitioner, "label"), compute_counts(partitioner, "label"))
