"""The `--config` file of a sweep: YAML or JSON with a `fixed:` and a `search:` section."""

from __future__ import annotations

import json

from fl_core.apps import FlowerApp
from fl_core.settings import ConfigError
from fl_sweep.spec import coerce_value, normalise_key, search_entry


def read_config_file(app: FlowerApp, path: str) -> tuple[dict, dict]:
    """(fixed, search) from a YAML or JSON file with sections `fixed:` and `search:`."""
    import yaml

    try:
        with open(path) as f:
            text = f.read()
        document = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read --config {path}: {exc}") from None
    document = document or {}
    if not isinstance(document, dict) or set(document) - {"fixed", "search"}:
        raise ConfigError(f"--config {path} must be a mapping with sections 'fixed' and/or 'search'")
    fixed = {}
    for key, value in _section(document, "fixed", path).items():
        name = normalise_key(app, key, path)
        fixed[name] = coerce_value(app, name, value)
    search = {}
    for key, entry in _section(document, "search", path).items():
        name = normalise_key(app, key, path)
        if isinstance(entry, list):  # shorthand: a plain list is a grid
            entry = {"grid": entry}
        if not isinstance(entry, dict) or len(entry) != 1 or not isinstance(next(iter(entry.values())), list):
            raise ConfigError(f"{path}: search.{key} must look like {{grid: [..]}}, {{choice: [..]}}, "
                              "{uniform: [lo, hi]} or {loguniform: [lo, hi]}")
        (kind, values), = entry.items()
        search[name] = search_entry(app, name, kind, values, f"{path}: search.{key}")
    return fixed, search


def _section(document: dict, name: str, path: str) -> dict:
    """Section `name` of the file (empty if absent): a mapping with names as keys."""
    section = document.get(name) or {}
    example = "{key: value}" if name == "fixed" else "{key: {grid: [..]}}"
    if not isinstance(section, dict):
        raise ConfigError(f"--config {path}: {name} must be a mapping like {example}, got {section!r}")
    for key in section:
        if not isinstance(key, str):
            raise ConfigError(f"--config {path}: {name} key {key!r} is not a name; write the setting or run-config "
                              "key (quote it if YAML reads it as a number)")
    return section
