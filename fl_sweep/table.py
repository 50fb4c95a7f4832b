"""A sweep's results as a paper shows them: one swept axis as rows, another as columns, each cell the best value of
the metric over a trial's rounds, mean ± std over the other swept axes (the seeds), beside published numbers.

The `table:` section of a `--config` file asks for it:

    table:
      rows: partitioning        # swept axes (keys or grids of sets)
      columns: strategy
      scale: 100                # cells in percent of an accuracy
      published:                # optional: "mean ± std" (or "mean +- std", or a number) by row, then column;
        iid: {fedavg: 71.32 ± 0.33}    # values this sweep does not sweep are left out

`tune_search.py report` then writes table.csv and table.md beside trials.csv
and prints the Markdown.
"""

from __future__ import annotations

import math
import re

from fl_core.settings import ConfigError

TABLE_KEYS = ("rows", "columns", "scale", "published")
_PUBLISHED = re.compile(r"^\s*([-+]?[\d.]+(?:e[-+]?\d+)?)\s*(?:(?:±|\+-|\+/-)\s*([\d.]+(?:e[-+]?\d+)?))?\s*$")


def parse_published(text) -> tuple[float, float | None]:
    """(mean, std or None) from "71.32 ± 0.33", "71.32 +- 0.33" or 71.32; ValueError otherwise."""
    match = _PUBLISHED.match(str(text))
    if match is None:
        raise ValueError(f"{text!r} is not 'mean ± std' or a number")
    mean, std = match.groups()
    return float(mean), None if std is None else float(std)


def check_table(table: dict, search: dict, where: str) -> dict:
    """The `table:` section checked against the sweep's axes; ConfigError naming what to fix."""
    if not isinstance(table, dict) or set(table) - set(TABLE_KEYS) or not {"rows", "columns"} <= set(table):
        raise ConfigError(
            f"{where}: table must be a mapping with rows and columns (swept axes), and optionally "
            f"scale and published; got {table!r}"
        )
    rows, columns = table["rows"], table["columns"]
    for role, axis in (("rows", rows), ("columns", columns)):
        if axis not in search or search[axis]["kind"] not in ("grid", "choice"):
            raise ConfigError(
                f"{where}: table {role} {axis!r} is not a grid or choice axis of this sweep "
                f"(swept: {', '.join(search) or 'nothing'})"
            )
    if rows == columns:
        raise ConfigError(f"{where}: table rows and columns are both {rows!r}: pick two swept axes")
    scale = table.get("scale", 1)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
        raise ConfigError(f"{where}: table scale must be a positive number, got {scale!r}")
    published = table.get("published") or {}
    if not isinstance(published, dict) or not all(isinstance(cells, dict) for cells in published.values()):
        raise ConfigError(
            f"{where}: table published must map {rows} values to {{{columns} value: 'mean ± std'}}, got {published!r}"
        )
    checked = {}
    for row, cells in published.items():
        for column, text in cells.items():
            try:
                checked.setdefault(str(row), {})[str(column)] = parse_published(text)
            except ValueError as exc:
                raise ConfigError(f"{where}: table published {row}.{column}: {exc}") from None
    return {"rows": rows, "columns": columns, "scale": scale, "published": checked}


def results_table(trials, spec):
    """One row per (row value, column value) in sweep order: the best metric over rounds of each finished trial,
    scaled, its mean, std (ddof 1) and count over the other axes, the published mean and std, and the values."""
    import pandas as pd

    table = spec.table
    rows, columns, scale = table["rows"], table["columns"], table["scale"]
    best = f"best_{spec.metric}"
    done = trials[(trials["status"] == "TERMINATED") & trials[best].notna()] if best in trials else trials.iloc[0:0]
    out = []
    for row in spec.search[rows]["values"]:
        for column in spec.search[columns]["values"]:
            mine = done[(done[rows].astype(str) == str(row)) & (done[columns].astype(str) == str(column))]
            values = [float(v) * scale for v in mine[best]]
            published = table["published"].get(str(row), {}).get(str(column), (None, None))
            out.append(
                {
                    rows: row,
                    columns: column,
                    "mean": sum(values) / len(values) if values else None,
                    "std": pd.Series(values).std() if len(values) > 1 else None,
                    "n": len(values),
                    "published_mean": published[0],
                    "published_std": published[1],
                    "values": " ".join(f"{v:.2f}" for v in values),
                }
            )
    return pd.DataFrame(out)


def _cell(mean, std, n: int | None = None) -> str:
    """'63.10 ± 0.52', '63.10' (one value), '-' (none); with the count when given."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    text = f"{mean:.2f}" if std is None or (isinstance(std, float) and math.isnan(std)) else f"{mean:.2f} ± {std:.2f}"
    return text if n is None else f"{text} (n={n})"


def markdown(results, spec) -> str:
    """The table as a paper lays it out: rows by columns, each column measured then published (if any)."""
    rows, columns = spec.table["rows"], spec.table["columns"]
    has_published = results["published_mean"].notna().any()
    header = [rows]
    for column in spec.search[columns]["values"]:
        header += [str(column)] + ([f"{column} (published)"] if has_published else [])
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(["---"] + ["---:"] * (len(header) - 1)) + " |"]
    for row in spec.search[rows]["values"]:
        cells = [str(row)]
        for column in spec.search[columns]["values"]:
            found = results[(results[rows].astype(str) == str(row)) & (results[columns].astype(str) == str(column))]
            r = found.iloc[0]
            cells.append(_cell(r["mean"], r["std"], int(r["n"])))
            if has_published:
                cells.append(_cell(r["published_mean"], r["published_std"]))
        lines.append("| " + " | ".join(cells) + " |")
    others = [k for k in spec.search if k not in (rows, columns)]
    over = f"mean ± std over {', '.join(others)}" if others else "one trial each"
    scale = "" if spec.table["scale"] == 1 else f" x {spec.table['scale']:g}"
    lines.append(f"\nbest {spec.metric}{scale} over each trial's rounds, {over} (n: finished trials)")
    return "\n".join(lines)
