"""A sweep's definition: the app, its search space and fixed values, checked value by value.

Keys are either the engine's settings (`pool_size`, `seed`, resources: the
RunSettings fields) or run-config keys of the app (`fraction-train`,
`local-epochs`, `fedadam.eta`...; `_` is accepted for `-`). A `--config`
file may also sweep named sets of such keys as one axis (a grid entry
`{"kind": "grid", "values": [names], "sets": {name: {key: value}}}`; the
trial's config holds the name). The command line (fl_sweep.cli) and the
`--config` file (fl_sweep.sweep_file) build a SweepSpec from these parts;
fl_sweep.validate checks it as a whole.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

from fl_core.apps import FlowerApp, coerce, config_key, load_app_folder
from fl_core.cli import renamed
from fl_core.settings import SETTING_NAMES, ConfigError, RunSettings, setting_type
from fl_sweep.resources import ResourcePlan

# Swept when no search flag is given, for the keys the app has (Flower's template names).
DEFAULT_GRID = {"fraction-train": [0.05, 0.1, 0.2], "local-epochs": [1, 2, 5]}
SEARCH_KINDS = ("grid", "choice", "uniform", "loguniform")
# Validating every combination of a huge grid would take long; above this, each key is checked alone.
MAX_COMBINATIONS_CHECKED = 4096


# ---------------------------------------------------------------------------
# The sweep's settings


@dataclass
class SweepSpec:
    """Everything that defines a sweep; stored in the marker file so `--resume` rebuilds the same one."""

    app_dir: str  # the app folder (absolute)
    settings: dict  # every RunSettings field (swept ones hold their default and are overridden)
    run_config: dict  # the app's whole run config with the fixed overrides applied
    search: dict  # key -> {"kind": one of SEARCH_KINDS, "values": [...]}
    metric: str = "central_accuracy"
    mode: str = "max"
    search_alg: str = "grid"
    scheduler: str = "fifo"
    num_samples: int = 1
    max_concurrent_trials: int | None = None
    asha_grace_rounds: int = 1
    search_seed: int | None = None
    cluster_cpus: float = 1.0  # what the default --max-parallel-clients is derived from
    cluster_gpus: float = 0.0
    keep_checkpoints: int = 2
    checkpoint_every: int = 1  # rounds between a trial's checkpoints (its last round always has one)
    max_failures: int = 2
    table: dict | None = None  # the results table the report lays out (fl_sweep.table.check_table's form)

    def to_dict(self) -> dict:
        """JSON-ready copy."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "SweepSpec":
        """Inverse of to_dict."""
        return cls(**values)

    def app(self) -> FlowerApp:
        """The swept app."""
        return load_app_folder(self.app_dir)

    def plan(self) -> ResourcePlan:
        """What its trials' settings, run configs and bundles are derived from."""
        sets = {axis: entry["sets"] for axis, entry in self.search.items() if "sets" in entry}
        return ResourcePlan(dict(self.settings), dict(self.run_config), self.cluster_cpus, self.cluster_gpus, sets)

    def swept_keys(self) -> set[str]:
        """The settings and run-config keys the trials vary: swept ones and those in a swept set."""
        keys = {k for k, e in self.search.items() if "sets" not in e}
        return keys.union(*(values for e in self.search.values() for values in e.get("sets", {}).values()))


# ---------------------------------------------------------------------------
# Values from the command line and files


def normalise_key(app: FlowerApp, key: str, where: str) -> str:
    """An engine setting's name or the app's run-config key for `key`; ConfigError (with the rename) if neither."""
    name = key.strip()
    if name.replace("-", "_") in SETTING_NAMES:
        return name.replace("-", "_")
    if name not in app.defaults and name.replace("_", "-") not in app.defaults and renamed(name, prefix=""):
        raise ConfigError(f"{where}: {renamed(name, prefix='')}")
    return config_key(app, name, where)


def coerce_value(app: FlowerApp, key: str, value):
    """`value` (a command-line string or a YAML/JSON scalar) as the type of `key`."""
    if key in SETTING_NAMES:
        base, optional = setting_type(key)
        if optional and (value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", ""))):
            return None
        return coerce(key, value, base(), what="setting")
    return coerce(key, value, app.defaults[key])


def parse_assignment(app: FlowerApp, text: str, flag: str) -> tuple[str, str]:
    """Split `key=value` from `flag`."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"{flag} expects KEY=VALUE, got {text!r}")
    return normalise_key(app, key, flag), value


def search_entry(app: FlowerApp, key: str, kind: str, values: list, where: str) -> dict:
    """Checked `{"kind", "values"}` entry for sweeping `key`."""
    if kind not in SEARCH_KINDS:
        raise ConfigError(f"{where}: unknown search kind {kind!r} for {key}; use one of {', '.join(SEARCH_KINDS)}")
    values = [coerce_value(app, key, v) for v in values]
    if kind in ("grid", "choice"):
        if not values:
            raise ConfigError(f"{where}: the {kind} for {key} is empty; give at least one value")
        return {"kind": kind, "values": values}
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise ConfigError(f"{where}: {key} is not numeric; sweep it with --grid or --choice")
    if len(values) != 2:
        raise ConfigError(f"{where}: {kind} for {key} needs exactly two bounds LO,HI, got {values}")
    lo, hi = values
    if not lo < hi:
        raise ConfigError(f"{where}: {kind} for {key} needs LO < HI, got {lo}, {hi}")
    if kind == "loguniform" and lo <= 0:
        raise ConfigError(f"{where}: loguniform for {key} needs positive bounds, got {lo}")
    return {"kind": kind, "values": values}


def search_sets(app: FlowerApp, axis: str, sets, where: str) -> dict:
    """Checked grid entry of named sets of keys swept together as one axis named `axis` (not itself a key)."""
    name = axis.strip()
    if name.replace("-", "_") in SETTING_NAMES or name in app.defaults or name.replace("_", "-") in app.defaults:
        raise ConfigError(
            f"{where}: {name} is a setting or run-config key; name the axis of a grid of sets "
            "something else (e.g. 'partitioning')"
        )
    if not isinstance(sets, dict) or not sets:
        raise ConfigError(f"{where}: a grid of sets must map names to {{key: value}} mappings, got {sets!r}")
    checked = {}
    for label, values in sets.items():
        if not isinstance(values, dict) or not values:
            raise ConfigError(f"{where}: set {label!r} must be a non-empty {{key: value}} mapping, got {values!r}")
        checked[str(label)] = {}
        for key, value in values.items():
            key = normalise_key(app, key, f"{where} set {label}")
            checked[str(label)][key] = coerce_value(app, key, value)
    return {"kind": "grid", "values": list(checked), "sets": checked}


def merge_settings(
    app: FlowerApp, file_fixed: dict, file_search: dict, cli_fixed: dict, cli_search: dict
) -> tuple[dict, dict]:
    """(fixed, search): command line over file; the default grid (keys the app has) when nothing is swept.

    A key both fixed and swept explicitly, or swept by two axes, is an error;
    the default grid just leaves out the keys the user fixed.
    """
    fixed = {**file_fixed, **cli_fixed}
    search = {**file_search, **cli_search}
    if search:
        per_axis = Counter(k for e in search.values() if "sets" in e for k in set().union(*e["sets"].values()))
        both = sorted(set(fixed) & (set(search) | set(per_axis)))
        twice = sorted(k for k, axes in per_axis.items() if axes > 1 or k in search)
        if twice:
            raise ConfigError(f"{', '.join(twice)} swept by two axes: sweep each key in one place")
        if both:
            raise ConfigError(f"{', '.join(both)} both fixed and swept: drop the --set/fixed entry or the search entry")
        return fixed, search
    search = {
        k: {"kind": "grid", "values": list(v)} for k, v in DEFAULT_GRID.items() if k in app.defaults and k not in fixed
    }
    if not search and not fixed.keys() & set(DEFAULT_GRID):
        raise ConfigError(
            f"app {app.name} has none of the default grid's keys ({', '.join(DEFAULT_GRID)}): "
            "say what to sweep with --grid, --choice, --uniform or --loguniform"
        )
    return fixed, search


# ---------------------------------------------------------------------------
# Trials


def combinations(spec: SweepSpec) -> list[dict]:
    """Every combination of the swept values (grid/choice values, both bounds of a range), or one key
    varied at a time when that would be too many."""
    keys = list(spec.search)
    values = [spec.search[k]["values"] for k in keys]
    if math.prod(len(v) for v in values) <= MAX_COMBINATIONS_CHECKED:
        return [dict(zip(keys, combo)) for combo in itertools.product(*values)]
    return [{k: v} for k, vs in zip(keys, values) for v in vs]


def trials(spec: SweepSpec) -> Iterator[tuple[dict, RunSettings, dict]]:
    """(sampled values, settings, run config) of the trial of each of `combinations(spec)`."""
    plan = spec.plan()
    for combo in combinations(spec):
        yield (combo, *plan.trial(combo))
