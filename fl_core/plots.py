"""A run's pictures: its model's metrics per round, and its partitions' label distribution.

`MetricsPlotter` (a callback) writes `metrics.png` beside metrics.csv when the
run ends: accuracy-like metrics in one panel, loss-like in another, anything
else in a third, whatever the app reports (central_*, fed_*, train_*).

`write_partition_files` writes `partitions.csv` (clients x labels, index
partition-id) and `partitions.png` for an app that declares the
`[tool.fedsweep] partitioner` hook: the counts and the plot are Flower
Datasets' (`plot_label_distributions`, whose table is `compute_counts`').

Figures are matplotlib `Figure` objects, not pyplot's: no global figure list,
no backend to switch, so a thread may draw them while the run goes on.
"""

from __future__ import annotations

import numbers
import os

import pandas as pd

from fl_core.callbacks import Callback, RunEnd
from fl_core.checkpoint import write_atomically
from fl_core.metrics import model_metrics, scored_round

METRICS_PLOT = "metrics.png"
PARTITIONS_STEM = "partitions"
MAX_PLOTTED_PARTITIONS = 100  # more bars are unreadable; the CSV still has every partition
DPI = 120
PANELS = (("accuracy", "acc"), ("loss", "loss"))  # (panel, what a metric's name contains); the rest: "other"


def _save(figure, path: str) -> None:
    """Write `figure` as a PNG, atomically (a run killed meanwhile leaves the previous file whole)."""
    write_atomically(path, lambda f: figure.savefig(f, format="png", dpi=DPI))


def metric_panels(history: list[dict]) -> dict[str, list[str]]:
    """The model's numeric metrics in `history`, grouped by panel: accuracy-like, loss-like, other (non-empty only)."""
    keys = list(dict.fromkeys(k for row in history for k in model_metrics(row)))
    # MetricRecords may hold lists: only numbers make a line.
    keys = [k for k in keys if all(isinstance(row.get(k, 0), numbers.Real) for row in history)]
    panels: dict[str, list[str]] = {}
    for key in keys:
        panel = next((name for name, part in PANELS if part in key.lower()), "other")
        panels.setdefault(panel, []).append(key)
    return {name: panels[name] for name in [p for p, _ in PANELS] + ["other"] if name in panels}


def metrics_figure(history: list[dict], title: str = ""):
    """The model's metrics per round, one panel per group of `metric_panels`; None when the history has none."""
    from matplotlib.figure import Figure  # matplotlib only when a figure is drawn (not for bad input)
    from matplotlib.ticker import MaxNLocator

    panels = metric_panels(history)
    if not panels:
        return None
    table = pd.DataFrame(history)
    figure = Figure(figsize=(5.0 * len(panels), 4.0), layout="constrained")
    for ax, (panel, keys) in zip(figure.subplots(1, len(panels), squeeze=False)[0], panels.items()):
        for key in keys:
            # e.g. fed_* only in rounds with a federated evaluation; central_* carried between central evaluations
            known = table[key].notna() & (scored_round(table, key) == table["round"])
            ax.plot(table.loc[known, "round"], table.loc[known, key], marker="o", markersize=3, label=key)
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # rounds are whole numbers
        ax.set_ylabel(panel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    figure.suptitle(f"{title + ': ' if title else ''}model metrics per round ({len(history)} rounds)")
    return figure


class MetricsPlotter(Callback):
    """Writes `metrics.png` into `directory` at the end of the run, from the whole history (resumed runs included).

    Only at the end: a plot takes about 0.25 s, too much to add to every round of a fast run.
    """

    def __init__(self, directory: str, title: str = "") -> None:
        self.directory = directory
        self.title = title  # e.g. the app's name

    def on_run_end(self, event: RunEnd) -> None:
        """Draw the run's history (nothing when it has no model metrics)."""
        figure = metrics_figure(event.history, self.title)
        if figure is not None:
            os.makedirs(self.directory, exist_ok=True)
            _save(figure, os.path.join(self.directory, METRICS_PLOT))


def label_distribution(partitioner, label_column: str, title: str):
    """(counts, figure): clients x labels counts of a partitioner with its dataset, and their stacked-bar plot.

    Both from Flower Datasets in one pass over the partitions: the table
    `plot_label_distributions` returns is `compute_counts`' (absolute counts).
    Large pools are plotted for the first MAX_PLOTTED_PARTITIONS clients only and
    then counted in full from the partitioner's rows (`fl_core.partitions`: the
    same table without a dataset per partition).
    """
    # Flower Datasets imports Hugging Face datasets: only for an app with a partitioner hook.
    from datasets import ClassLabel
    from flwr_datasets.visualization import plot_label_distributions
    from matplotlib.figure import Figure

    from fl_core.partitions import label_counts

    total = partitioner.num_partitions
    shown = min(total, MAX_PLOTTED_PARTITIONS)
    # Names (e.g. "airplane") only where the column has them: otherwise Flower Datasets warns and uses the values.
    verbose = isinstance(partitioner.dataset.features[label_column], ClassLabel)
    # Distinct colours per label where a qualitative map has enough (Flower Datasets' default is a gradient).
    num_labels = len(partitioner.dataset.unique(label_column))
    cmap = "tab10" if num_labels <= 10 else "tab20" if num_labels <= 20 else None
    figure = Figure(figsize=(min(4.0 + 0.12 * shown, 16.0), 4.5), layout="constrained")
    axis = figure.subplots()
    if shown < total:
        title += f", the first {shown} shown"
    _, _, counts = plot_label_distributions(
        partitioner,
        label_column,
        size_unit="absolute",
        max_num_partitions=shown,
        partition_id_axis="x",
        axis=axis,
        title=title,
        cmap=cmap,
        legend=True,
        legend_title=label_column,
        verbose_labels=verbose,
        legend_kwargs={"loc": "outside right center", "bbox_to_anchor": None},
    )
    if shown > 20:  # Flower Datasets labels every other bar: still a blur at 100, so every 10th
        step = 10 if shown > 50 else 5
        axis.set_xticks(range(0, shown, step), [str(i) for i in range(0, shown, step)])
    if shown < total:
        counts = label_counts(partitioner, label_column, verbose_names=verbose)
    return counts.rename_axis("partition-id"), figure


def write_partition_files(
    app, run_config: dict, num_partitions: int, directory: str, stem: str = PARTITIONS_STEM
) -> list[str] | None:
    """Write `<stem>.csv` and `<stem>.png`, the label distribution of the partitions the app's clients get.

    The partitions come from the app's `[tool.fedsweep] partitioner` hook,
    called with (run_config, num_partitions); the CSV has one row per
    partition-id and one column per label. Returns the written paths, or None
    when the app declares no hook. ConfigError, with the hook's name, when the
    hook cannot be imported, raises, or returns anything but a partitioner with
    its dataset, `num_partitions` partitions and the label column.
    """
    if app.partitioner is None:
        return None
    partitioner = app.partitions(run_config, num_partitions)
    title = f"{app.name}: labels of {num_partitions} clients ({type(partitioner).__name__})"
    counts, figure = label_distribution(partitioner, app.partition_by, title)
    os.makedirs(directory, exist_ok=True)
    paths = [os.path.join(directory, f"{stem}.csv"), os.path.join(directory, f"{stem}.png")]
    write_atomically(paths[0], lambda f: f.write(counts.to_csv().encode()))
    _save(figure, paths[1])
    return paths
