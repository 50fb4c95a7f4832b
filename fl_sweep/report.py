"""Readable results of a sweep: trials.csv, rounds.csv, best.json, plots, and the results table if the sweep asks
for one (table.csv, table.md)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile

from fl_core.metrics import CLIENTS_PREFIX, COUNT_KEYS, MACHINE_KEYS, PROVENANCE_KEYS, is_model_metric, scored_round
from fl_core.settings import ConfigError
from fl_sweep.partitions import FOLDER, INDEX
from fl_sweep.spec import SweepSpec
from fl_sweep.storage import exists, filesystem, is_uri, read_marker
from fl_sweep.table import markdown, results_table
from fl_sweep.validate import same_runs

# Per-round columns besides the model's metrics: counts, the round's timings and throughput, Tune's wall clock, and
# the round the central metrics scored (central_round).
ROUND_COLUMNS = ("round", *COUNT_KEYS, *MACHINE_KEYS, "time_total_s", *PROVENANCE_KEYS)
HEATMAP_KEYS = ("fraction-train", "local-epochs")  # Flower's template names

# ---------------------------------------------------------------------------
# Reports


def _results(experiment: str):
    """(Tune's ResultGrid of the sweep, {trial_id: status}) read from the experiment folder."""
    from ray.tune import ExperimentAnalysis, ResultGrid

    try:
        analysis = ExperimentAnalysis(experiment)
    except (ValueError, FileNotFoundError) as exc:
        raise ConfigError(f"no Tune experiment state in {experiment} yet ({str(exc).splitlines()[0]})") from None
    return ResultGrid(analysis), {trial.trial_id: trial.status for trial in analysis.trials}


def _trial_id(result) -> str | None:
    """The id of the trial behind a Result (from its folder name, as trial_dirname makes it)."""
    name = os.path.basename(result.path.rstrip("/"))
    return name[len("trial_") :] if name.startswith("trial_") else None


def rounds_table(grid, swept: list[str]):
    """Every trial's per-round metrics, one row per (trial, round).

    A round reported twice (re-run after a restore from an older checkpoint)
    keeps its latest report.
    """
    import pandas as pd

    parts = []
    for result in grid:
        df = result.metrics_dataframe
        if df is None or df.empty or "round" not in df:
            continue
        metrics = [c for c in df if is_model_metric(c)]
        part = df[[c for c in ("round", *metrics, *ROUND_COLUMNS[1:]) if c in df]].copy()
        part.insert(0, "trial_id", _trial_id(result))
        for i, key in enumerate(swept, start=1):
            part.insert(i, key, result.config.get(key))
        parts.append(part)
    if not parts:
        return pd.DataFrame(columns=["trial_id", *swept, *ROUND_COLUMNS])
    table = pd.concat(parts, ignore_index=True)
    table["round"] = table["round"].astype(int)
    table = table.drop_duplicates(["trial_id", "round"], keep="last")
    return table.sort_values(["trial_id", "round"]).reset_index(drop=True)


def _checkpoint_location(result, experiment: str) -> str | None:
    """Path (or URI, for remote storage) of a trial's latest kept checkpoint, if any."""
    if result.checkpoint is None:
        return None
    path = result.checkpoint.path
    if is_uri(experiment) and "://" not in path:
        return experiment.split("://", 1)[0] + "://" + path.lstrip("/")
    return path


def _metric_summary(mine, metric: str, mode: str) -> dict:
    """Final and best value of `metric` over one trial's rounds, and the round of the best."""
    values = mine[metric].dropna() if metric in mine else []
    if len(values) == 0:
        return {f"final_{metric}": None, f"best_{metric}": None, f"best_{metric}_round": None}
    best = values.idxmax() if mode == "max" else values.idxmin()
    return {
        f"final_{metric}": mine[metric].iloc[-1],
        f"best_{metric}": values[best],
        f"best_{metric}_round": int(scored_round(mine, metric)[best]),
    }


def trials_table(grid, statuses: dict, rounds, spec: SweepSpec, experiment: str):
    """One row per trial: swept values, final and best metric, rounds, wall time, status, checkpoint.

    The last report of each trial (Tune's ResultGrid.get_dataframe) gives the
    final all-node evaluation (clients_*) and the wall time; the rounds give the rest.
    """
    import pandas as pd

    last = grid.get_dataframe() if len(grid) else pd.DataFrame()
    # Trials that failed before their first report leave rows without Tune's columns.
    last = last.set_index("trial_id") if "trial_id" in last else pd.DataFrame()
    checkpoints = {_trial_id(r): _checkpoint_location(r, experiment) for r in grid}
    configs = {_trial_id(r): r.config for r in grid}
    rows = []
    for trial_id in sorted(statuses):
        mine = rounds[rounds["trial_id"] == trial_id]
        config = configs.get(trial_id, {})
        row = {"trial_id": trial_id, "status": statuses[trial_id], **{k: config.get(k) for k in spec.search}}
        row["rounds"] = len(mine)
        row.update(_metric_summary(mine, spec.metric, spec.mode))
        if "central_accuracy" in mine:  # whatever the metric, when the app has a central evaluation
            row.update(_metric_summary(mine, "central_accuracy", "max"))
        final = last.loc[trial_id] if trial_id in last.index else {}
        row["wall_time_s"] = final.get("time_total_s") if len(mine) else None
        row["round_seconds_mean"] = mine["seconds"].mean() if len(mine) else None
        row.update({k: v for k, v in dict(final).items() if k.startswith(CLIENTS_PREFIX) and pd.notna(v)})
        row["checkpoint"] = checkpoints.get(trial_id)
        rows.append(row)
    return pd.DataFrame(rows)


def best_trial(grid, table, spec: SweepSpec) -> dict | None:
    """The row of the trial with the best last reported metric (Tune's ResultGrid.get_best_result, scope "last")."""
    try:
        best = grid.get_best_result(spec.metric, spec.mode, scope="last")
    except (RuntimeError, KeyError):  # no trial has reported the metric yet
        return None
    rows = table[table["trial_id"] == _trial_id(best)]
    return None if rows.empty else rows.iloc[0].to_dict()


def _short(value) -> str:
    """A swept value for a legend: floats to 4 significant digits."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _json_default(value):
    """numpy scalars as Python numbers; anything else as text."""
    return value.item() if hasattr(value, "item") else str(value)


def plot_metric(rounds, metric: str, swept: list[str], path: str) -> None:
    """The sweep's metric against round, one line per trial."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(8, 5))
    for trial_id, part in rounds.groupby("trial_id", sort=True):
        if metric not in part:
            continue
        label = ", ".join(f"{k}={_short(part[k].iloc[0])}" for k in swept) or trial_id
        measured = part[scored_round(part, metric) == part["round"]]  # not the rounds that carry a value
        ax.plot(measured["round"], measured[metric], marker="o", markersize=3, label=label)
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # rounds are whole numbers
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per round, every trial")
    ax.grid(alpha=0.3)
    if 0 < rounds["trial_id"].nunique() <= 12:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_heatmap(table, spec: SweepSpec, path: str) -> str | None:
    """Final metric over fraction-train x local-epochs (mean over other keys); returns a note when skipped."""
    import matplotlib.pyplot as plt
    import numpy as np

    x_key, y_key = HEATMAP_KEYS
    if not set(HEATMAP_KEYS) <= set(spec.search):
        return f"heatmap skipped: {x_key} and {y_key} are not both swept"
    column = f"final_{spec.metric}"
    data = table.dropna(subset=[column])
    if data.empty:
        return "heatmap skipped: no trial has reported yet"
    grid = data.pivot_table(index=y_key, columns=x_key, values=column, aggfunc="mean")
    fig, ax = plt.subplots(figsize=(1.6 * len(grid.columns) + 2.5, 1.2 * len(grid.index) + 2))
    image = ax.imshow(grid.values, cmap="viridis", aspect="auto", origin="lower")
    ax.set_xticks(range(len(grid.columns)), [f"{c:.4g}" for c in grid.columns])
    ax.set_yticks(range(len(grid.index)), [f"{i:g}" for i in grid.index])
    for (row, col), value in np.ndenumerate(grid.values):
        ax.text(col, row, "-" if np.isnan(value) else f"{value:.3f}", ha="center", va="center", color="w")
    others = [k for k in spec.search if k not in HEATMAP_KEYS]
    ax.set_title(
        f"Final {spec.metric}" + (f" (mean over {', '.join(others)})" if others or spec.num_samples > 1 else ""),
        fontsize=9,
    )
    ax.set_xlabel(f"{x_key} (client fraction)")
    ax.set_ylabel(y_key)
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


def _publish(local_dir: str, experiment: str) -> None:
    """Copy the report files into a remote experiment folder (local folders are written in place)."""
    import pyarrow.fs

    fs, inner = filesystem(experiment)
    pyarrow.fs.copy_files(local_dir, inner, destination_filesystem=fs)


def print_best(table, spec: SweepSpec, top: int) -> None:
    """A short table of the best trials."""
    column = f"final_{spec.metric}"
    shown = ["trial_id", *spec.search, column, f"best_{spec.metric}", "rounds", "wall_time_s", "status"]
    ordered = table.sort_values(column, ascending=spec.mode == "min", na_position="last").head(top)
    print(f"\nbest {min(top, len(table))} of {len(table)} trials by final {spec.metric} ({spec.mode}):")
    print(ordered[list(dict.fromkeys(shown))].to_string(index=False, float_format=lambda v: f"{v:.4g}"))


def write_report(experiment: str, top: int = 5) -> dict:
    """Write trials.csv, rounds.csv, best.json and the plots into the experiment folder; print the best trials."""
    import matplotlib

    matplotlib.use("Agg")
    spec = SweepSpec.from_dict(read_marker(experiment)["spec"])
    grid, statuses = _results(experiment)
    swept = list(spec.search)
    rounds = rounds_table(grid, swept)
    table = trials_table(grid, statuses, rounds, spec, experiment)
    best = best_trial(grid, table, spec)
    out = experiment if not is_uri(experiment) else tempfile.mkdtemp(prefix="fedsweep-report-")
    table.to_csv(os.path.join(out, "trials.csv"), index=False)
    rounds.to_csv(os.path.join(out, "rounds.csv"), index=False)
    with open(os.path.join(out, "best.json"), "w") as f:
        json.dump(_best_document(best, spec, experiment), f, indent=1, default=_json_default)
    written = ["trials.csv", "rounds.csv", "best.json"]
    if spec.table is not None:
        results = results_table(table, spec)
        results.to_csv(os.path.join(out, "table.csv"), index=False)
        laid_out = markdown(results, spec)
        with open(os.path.join(out, "table.md"), "w") as f:
            f.write(laid_out + "\n")
        written += ["table.csv", "table.md"]
    plots = [f"{spec.metric}_vs_round.png", f"heatmap_{spec.metric}.png"]
    plot_metric(rounds, spec.metric, swept, os.path.join(out, plots[0]))
    note = plot_heatmap(table, spec, os.path.join(out, plots[1]))
    if out != experiment:
        _publish(out, experiment)
        shutil.rmtree(out, ignore_errors=True)
    print_best(table, spec, top)
    if spec.table is not None:
        print("\n" + laid_out)
    for same in same_runs(spec):
        print(f"note: {same} (their rows above should agree)")
    errored = table.loc[table["status"] == "ERROR", "trial_id"].tolist()
    if note:
        print(note)
    if errored:
        print(
            f"{len(errored)} trial(s) failed ({', '.join(errored)}): their errors are in their trial folders; "
            "`--resume` retries them from their last round"
        )
    print(f"report written to {experiment}: {', '.join(written)}, {plots[0]}" + ("" if note else f", {plots[1]}"))
    index = f"{experiment.rstrip('/')}/{FOLDER}/{INDEX}"
    if exists(index):
        print(f"label distribution of each distinct data set: {FOLDER}/data_<n>.csv|png, listed in {FOLDER}/{INDEX}")
    return {"trials": len(table), "errored": errored, "best": best}


def _best_document(best: dict | None, spec: SweepSpec, experiment: str) -> dict:
    """best.json: the best trial's swept values, full config, score and checkpoint."""
    if best is None:
        return {"metric": spec.metric, "mode": spec.mode, "trial_id": None, "note": "no trial has reported yet"}
    swept = {k: best[k] for k in spec.search}  # a trial's Tune config holds its swept values only
    checkpoint = best.get("checkpoint")
    return {
        "metric": spec.metric,
        "mode": spec.mode,
        "trial_id": best["trial_id"],
        "value": best[f"final_{spec.metric}"],
        "rounds": best["rounds"],
        "status": best["status"],
        "swept": swept,
        "config": {**spec.settings, **spec.run_config, **swept},
        "checkpoint": checkpoint,
        "checkpoint_file": None if checkpoint is None else checkpoint.rstrip("/") + "/fl_checkpoint.npz",
        "app": spec.app_dir,
        "experiment": experiment,
    }
