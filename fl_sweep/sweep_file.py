"""The `--config` file of a sweep: YAML or JSON with a `fixed:` and a `search:` section.

A search entry is a list (a grid), `{grid|choice: [..]}`, `{uniform|loguniform:
[lo, hi]}`, or a grid of named sets swept as one axis:
`partitioning: {grid: {iid: {partition: iid}, dir-0.5: {partition: dirichlet, alpha: 0.5}}}`.
"""

from __future__ import annotations

import json

from fl_core.apps import FlowerApp
from fl_core.settings import ConfigError
from fl_sweep.spec import coerce_value, normalise_key, search_entry, search_sets


def read_config_file(app: FlowerApp, path: str) -> tuple[dict, dict, dict | None]:
    """(fixed, search, table) from a YAML or JSON file with sections `fixed:`, `search:` and `table:`.

    The table (fl_sweep.table) is checked once the command line's search flags are merged in.
    """
    import yaml

    try:
        with open(path) as f:
            text = f.read()
        document = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read --config {path}: {exc}") from None
    document = document or {}
    if not isinstance(document, dict) or set(document) - {"fixed", "search", "table"}:
        raise ConfigError(f"--config {path} must be a mapping with sections 'fixed', 'search' and/or 'table'")
    fixed = {}
    for key, value in _section(document, "fixed", path).items():
        name = normalise_key(app, key, path)
        fixed[name] = coerce_value(app, name, value)
    search = {}
    for key, entry in _section(document, "search", path).items():
        if isinstance(entry, dict) and list(entry) == ["grid"] and isinstance(entry["grid"], dict):
            search[key.strip()] = search_sets(app, key, entry["grid"], f"{path}: search.{key}")
            continue
        name = normalise_key(app, key, path)
        if isinstance(entry, list):  # shorthand: a plain list is a grid
            entry = {"grid": entry}
        if not isinstance(entry, dict) or len(entry) != 1 or not isinstance(next(iter(entry.values())), list):
            raise ConfigError(
                f"{path}: search.{key} must look like {{grid: [..]}}, {{choice: [..]}}, "
                "{uniform: [lo, hi]}, {loguniform: [lo, hi]} or {grid: {name: {key: value}}}"
            )
        ((kind, values),) = entry.items()
        search[name] = search_entry(app, name, kind, values, f"{path}: search.{key}")
    return fixed, search, document.get("table")


def _section(document: dict, name: str, path: str) -> dict:
    """Section `name` of the file (empty if absent): a mapping with names as keys."""
    section = document.get(name) or {}
    example = "{key: value}" if name == "fixed" else "{key: {grid: [..]}}"
    if not isinstance(section, dict):
        raise ConfigError(f"--config {path}: {name} must be a mapping like {example}, got {section!r}")
    for key in section:
        if not isinstance(key, str):
            raise ConfigError(
                f"--config {path}: {name} key {key!r} is not a name; write the setting or run-config "
                "key (quote it if YAML reads it as a number)"
            )
    return section
