"""A Flower Datasets partitioner's split read in one pass, not one Hugging Face dataset per partition.

`Partitioner.load_partition(i)` builds a dataset object for partition i (about
1 ms each): fine for a hundred clients, minutes for a hundred thousand. The
partitioners below keep the split as row numbers of their dataset, so the
split, and the label counts of every partition, can be read from those rows
directly. The split itself is still Flower Datasets' own: these functions only
read it, and anything they do not know is read through `load_partition`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from flwr_datasets import partitioner as fp
from flwr_datasets.metrics import compute_counts

# Partitioners whose load_partition(i) is `self.dataset.select(self._partition_id_to_indices[i])`
# (flwr-datasets 0.6). A subclass that overrides load_partition is read the slow way.
_SELECTING = tuple(
    getattr(fp, name)
    for name in (
        "DirichletPartitioner",
        "PathologicalPartitioner",
        "ShardPartitioner",
        "InnerDirichletPartitioner",
        "IdToSizeFncPartitioner",
        "SizePartitioner",
        "NaturalIdPartitioner",
        "GroupedNaturalIdPartitioner",
        "DistributionPartitioner",
        "ContinuousPartitioner",
    )
    if hasattr(fp, name)
)


def partition_rows(partitioner) -> list[np.ndarray] | None:
    """Row numbers in `partitioner.dataset` of each partition, as `load_partition(i)` selects them; None if unknown.

    The numbers index the dataset as the split leaves it: read `partitioner.dataset`
    after this call (ShardPartitioner, for one, sorts its dataset when it splits).
    """
    kind = type(partitioner)
    if kind.load_partition is fp.IidPartitioner.load_partition:
        # IidPartitioner: dataset.shard(n, i, contiguous=True), i.e. the first len % n shards one row longer.
        size, n = len(partitioner.dataset), partitioner.num_partitions
        div, mod = divmod(size, n)
        starts = [div * i + min(i, mod) for i in range(n + 1)]
        return [np.arange(starts[i], starts[i + 1]) for i in range(n)]
    for known in _SELECTING:
        if kind.load_partition is known.load_partition:
            # Through the public path first: it prepares the split as any load would (ShardPartitioner sorts
            # its dataset first, NaturalIdPartitioner maps ids first), and the split is drawn once.
            partitioner.load_partition(0)
            mapping = partitioner._partition_id_to_indices
            return [np.asarray(mapping[i], dtype=np.int64) for i in range(partitioner.num_partitions)]
    return None


def label_counts(partitioner, column: str, verbose_names: bool = False) -> pd.DataFrame:
    """Flower Datasets' `compute_counts(partitioner, column, verbose_names)` table, from the rows in one pass.

    The same frame (index, columns and their order, names with `verbose_names`);
    `compute_counts` itself where the partitioner's rows are unknown.
    """
    rows = partition_rows(partitioner)
    if rows is None:
        return compute_counts(partitioner, column, verbose_names=verbose_names)
    # compute_counts of the first partition only: its columns (the labels, in its order, named its way).
    first = compute_counts(partitioner, column, verbose_names=False, max_num_partitions=1)
    values = partitioner.dataset.with_format("numpy")[:][column]  # [:]: one batch read, not a lazy column
    codes = pd.Index(first.columns).get_indexer(np.asarray(values))
    lengths = np.array([len(r) for r in rows])
    owner = np.repeat(np.arange(len(rows)), lengths)
    width = len(first.columns)
    flat = np.bincount(owner * width + codes[np.concatenate(rows)], minlength=len(rows) * width)
    frame = pd.DataFrame(flat.reshape(len(rows), width), columns=first.columns)
    frame.index.name = first.index.name
    if verbose_names:
        named = compute_counts(partitioner, column, verbose_names=True, max_num_partitions=1)
        frame.columns = named.columns
    return frame
