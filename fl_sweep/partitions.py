"""The label distribution of every distinct data set of a sweep: `partitions/data_<n>.csv|png` and `data_sets.csv`.

A data set is what the app's `@shared` functions return for a trial; trials
that get the same values (same pool size, same values of the run-config keys
the functions read) share one. For each, fl_core draws the partitions its
clients get (the app's `[tool.fedsweep] partitioner` hook; none without one).
The driver draws them once the trials are done.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from fl_core.logs import LOGGER, one_line
from fl_sweep.spec import SweepSpec, trials

FOLDER = "partitions"
INDEX = "data_sets.csv"


def data_sets(spec: SweepSpec, shared_values: list) -> list[tuple[dict, int, dict]]:
    """(run config, num_partitions, what tells it apart) of the first trial of each distinct data set.

    Empty when the app shares no data through the driver (no @shared function,
    or one that reads a key swept over a range): which swept keys change such
    an app's data cannot be known.
    """
    if not shared_values:
        return []
    found = {}
    swept = spec.swept_keys()
    for _, settings, run_config in trials(spec):
        used = tuple(i for i, v in enumerate(shared_values) if v.matches(run_config, settings.pool_size))
        if used and used not in found:
            inputs = {k: v for i in used for k, v in shared_values[i].inputs.items() if k in swept}
            if "pool_size" in swept:
                inputs["pool_size"] = settings.pool_size
            found[used] = (run_config, settings.pool_size, inputs)
    return list(found.values())


def write_partitions(spec: SweepSpec, shared_values: list, experiment: str) -> str | None:
    """Write every data set's partition files under `experiment/partitions`; returns a line to print, if any."""
    import pandas as pd
    import pyarrow.fs

    from fl_core.plots import write_partition_files
    from fl_sweep.storage import filesystem, is_uri

    app = spec.app()
    if app.partitioner is None:
        return None
    sets = data_sets(spec, shared_values)
    if not sets:
        return "no partition plots: the app shares no data set through the driver (see README, Sweeps)"
    out = os.path.join(experiment, FOLDER) if not is_uri(experiment) else tempfile.mkdtemp(prefix="fedsweep-parts-")
    try:
        rows = []
        for n, (run_config, num_partitions, inputs) in enumerate(sets, start=1):
            write_partition_files(app, run_config, num_partitions, out, stem=f"data_{n}")
            rows.append({"data_set": n, "num_partitions": num_partitions, **inputs})
        pd.DataFrame(rows).to_csv(os.path.join(out, INDEX), index=False)
        if is_uri(experiment):
            fs, inner = filesystem(experiment)
            pyarrow.fs.copy_files(out, inner.rstrip("/") + "/" + FOLDER, destination_filesystem=fs)
    finally:
        if is_uri(experiment):
            shutil.rmtree(out, ignore_errors=True)
    return None


def draw_partitions(spec: SweepSpec, shared_values: list, experiment: str) -> str | None:
    """write_partitions once per sweep (a resumed sweep draws what its first run did not); a line to print, if any.

    Pictures are never worth a sweep: a broken hook or storage gives a logged warning instead.
    """
    from fl_sweep.storage import exists

    if exists(f"{experiment.rstrip('/')}/{FOLDER}/{INDEX}"):
        return None
    try:
        return write_partitions(spec, shared_values, experiment)
    except Exception as exc:
        LOGGER.warning(f"no partition plots ({one_line(exc)})")
        return None
