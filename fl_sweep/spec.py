"""A sweep's definition: the search space and fixed settings, parsed from flags and files, and checked."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import importlib.util
import itertools
import json
import math
import os
from dataclasses import dataclass

from fl_core.config import ConfigError, SimConfig, setting_type
from fl_sweep.resources import ResourcePlan, check_fits

PROG = "tune_search"
MARKER_FILE = "fedsweep_sweep.json"
MARKER_FORMAT = "fedsweep-tune-sweep"
MARKER_VERSION = 1
DEFAULT_NAME = "fedsweep"
DEFAULT_STORAGE = "./ray_results"
DEFAULT_GRID = {"fraction_fit": [0.05, 0.1, 0.2], "local_epochs": [1, 2, 5]}
SEARCH_KINDS = ("grid", "choice", "uniform", "loguniform")
SEARCH_ALGS = ("grid", "random", "optuna")
SCHEDULERS = ("fifo", "asha")
# Settings that decide which samples each client holds: sweeping them needs more than one data set.
DATA_KEYS = ("dataset", "data_dir", "synthetic_size", "pool_size", "partition", "alpha", "classes_per_client",
             "val_ratio", "seed")
MAX_SHARED_DATASETS = 8
# Per-round metrics a sweep can optimise, with their natural direction.
METRIC_MODES = {
    "central_accuracy": "max",
    "central_loss": "min",
    "fed_val_accuracy": "max",
    "fed_val_loss": "min",
    "train_loss": "min",
}
ROUND_COLUMNS = ("round", "central_accuracy", "central_loss", "fed_val_accuracy", "fed_val_loss", "train_loss",
                 "fit_clients", "train_samples", "seconds", "samples_per_s", "time_total_s")
CLIENT_EVAL_KEYS = ("mean", "min", "p10", "max")
# Validating every combination of a huge grid would take long; above this, each key is checked alone.
MAX_COMBINATIONS_CHECKED = 4096
# How often (s) Tune snapshots the experiment state: it decides how much is redone after the driver dies.
EXPERIMENT_SNAPSHOT_S = "1"
SIM_FIELDS = {f.name: f for f in dataclasses.fields(SimConfig)}


# ---------------------------------------------------------------------------
# The sweep's settings


@dataclass
class SweepSpec:
    """Everything that defines a sweep; stored in the marker file so `--resume` rebuilds the same one."""

    fixed: dict  # every SimConfig setting (swept ones hold their default and are overridden)
    search: dict  # key -> {"kind": one of SEARCH_KINDS, "values": [...]}
    metric: str = "central_accuracy"
    mode: str = "max"
    search_alg: str = "grid"
    scheduler: str = "fifo"
    num_samples: int = 1
    max_concurrent_trials: int | None = None
    asha_grace_rounds: int = 1
    search_seed: int | None = None
    server_gpus: float = 0.0
    cluster_cpus: float = 1.0  # what the default --max-parallel-clients is derived from
    cluster_gpus: float = 0.0
    keep_checkpoints: int = 2
    max_failures: int = 2

    def to_dict(self) -> dict:
        """JSON-ready copy."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "SweepSpec":
        """Inverse of to_dict."""
        return cls(**values)


# ---------------------------------------------------------------------------
# Values from the command line and files


def normalise_key(key: str, where: str) -> str:
    """SimConfig field name for `key` (dashes accepted); ConfigError with a suggestion if unknown."""
    name = key.strip().replace("-", "_")
    if name not in SIM_FIELDS:
        close = difflib.get_close_matches(name, SIM_FIELDS, n=1)
        hint = f" (did you mean {close[0]}?)" if close else f"; known settings: {', '.join(SIM_FIELDS)}"
        raise ConfigError(f"unknown setting {key!r} in {where}{hint}")
    return name


def coerce(key: str, value):
    """`value` (a string from the command line, or a YAML/JSON scalar) as the type of setting `key`."""
    base, optional = setting_type(key)
    if optional and (value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", ""))):
        return None
    try:
        if isinstance(value, bool):
            raise ValueError
        if base is str:
            if not isinstance(value, str):
                raise ValueError
            return value.strip()
        if base is int:
            number = float(value) if isinstance(value, (str, float)) else value
            if isinstance(number, float) and not number.is_integer():
                raise ValueError
            return int(number)
        return float(value)
    except (TypeError, ValueError):
        kind = {int: "an integer", float: "a number", str: "a string"}[base]
        raise ConfigError(f"setting {key} expects {kind}, got {value!r}") from None


def parse_assignment(text: str, flag: str) -> tuple[str, str]:
    """Split `key=value` from `flag`."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"{flag} expects KEY=VALUE, got {text!r}")
    return normalise_key(key, flag), value


def search_entry(key: str, kind: str, values: list, where: str) -> dict:
    """Checked `{"kind", "values"}` entry for sweeping `key`."""
    if kind not in SEARCH_KINDS:
        raise ConfigError(f"{where}: unknown search kind {kind!r} for {key}; use one of {', '.join(SEARCH_KINDS)}")
    if key == "data_dir":
        raise ConfigError(f"{where}: data_dir cannot be swept; fix it with --set data_dir=PATH")
    values = [coerce(key, v) for v in values]
    if kind in ("grid", "choice"):
        if not values:
            raise ConfigError(f"{where}: the {kind} for {key} is empty; give at least one value")
        return {"kind": kind, "values": values}
    base, _ = setting_type(key)
    if base is str:
        raise ConfigError(f"{where}: {key} is not numeric; sweep it with --grid or --choice")
    if len(values) != 2 or None in values:
        raise ConfigError(f"{where}: {kind} for {key} needs exactly two bounds LO,HI, got {values}")
    lo, hi = values
    if not lo < hi:
        raise ConfigError(f"{where}: {kind} for {key} needs LO < HI, got {lo}, {hi}")
    if kind == "loguniform" and lo <= 0:
        raise ConfigError(f"{where}: loguniform for {key} needs positive bounds, got {lo}")
    return {"kind": kind, "values": values}


def read_config_file(path: str) -> tuple[dict, dict]:
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
    fixed = {normalise_key(k, path): coerce(normalise_key(k, path), v) for k, v in (document.get("fixed") or {}).items()}
    search = {}
    for key, entry in (document.get("search") or {}).items():
        name = normalise_key(key, path)
        if isinstance(entry, list):  # shorthand: a plain list is a grid
            entry = {"grid": entry}
        if not isinstance(entry, dict) or len(entry) != 1 or not isinstance(next(iter(entry.values())), list):
            raise ConfigError(f"{path}: search.{key} must look like {{grid: [..]}}, {{choice: [..]}}, "
                              "{uniform: [lo, hi]} or {loguniform: [lo, hi]}")
        (kind, values), = entry.items()
        search[name] = search_entry(name, kind, values, f"{path}: search.{key}")
    return fixed, search


# Flags that define the sweep: with --resume they come from the marker file instead.
SWEEP_FLAGS = ("config", "set", "grid", "choice", "uniform", "loguniform", "num_samples", "search", "search_seed",
               "metric", "mode", "scheduler", "asha_grace_rounds", "max_concurrent_trials", "server_cpus",
               "server_gpus", "num_client_cpus", "num_client_gpus", "max_parallel_clients", "keep_checkpoints",
               "max_failures")


def _cli_search(args: argparse.Namespace) -> dict:
    """Search entries from --grid/--choice/--uniform/--loguniform."""
    search = {}
    for kind in SEARCH_KINDS:
        for text in getattr(args, kind):
            key, values = parse_assignment(text, f"--{kind}")
            if key in search:
                raise ConfigError(f"{key} is swept twice (--{kind} {text}): give one search flag per setting")
            items = values.split(",") if values.strip() else []
            search[key] = search_entry(key, kind, items, f"--{kind} {text}")
    return search


def _cli_fixed(args: argparse.Namespace) -> dict:
    """Fixed settings from the resource flags and --set (--set last, so it wins)."""
    fixed = {}
    for flag, key in (("server_cpus", "server_cpus"), ("num_client_cpus", "num_client_cpus"),
                      ("num_client_gpus", "num_client_gpus"), ("max_parallel_clients", "max_parallel_clients")):
        if getattr(args, flag) is not None:
            fixed[key] = getattr(args, flag)
    for text in args.set:
        key, value = parse_assignment(text, "--set")
        fixed[key] = coerce(key, value)
    return fixed


def merge_settings(file_fixed: dict, file_search: dict, cli_fixed: dict, cli_search: dict) -> tuple[dict, dict]:
    """(fixed, search): command line over file; the default grid when nothing is swept.

    A key both fixed and swept explicitly is an error; the default grid just
    leaves out the keys the user fixed.
    """
    fixed = {**file_fixed, **cli_fixed}
    search = {**file_search, **cli_search}
    if search:
        both = sorted(set(fixed) & set(search))
        if both:
            raise ConfigError(f"{', '.join(both)} both fixed and swept: drop the --set/fixed entry or the search entry")
    else:
        search = {k: {"kind": "grid", "values": list(v)} for k, v in DEFAULT_GRID.items() if k not in fixed}
    for key in ("data_dir",):  # trials run in their own directories: paths must be absolute
        if fixed.get(key):
            fixed[key] = os.path.abspath(os.path.expanduser(fixed[key]))
    return fixed, search


def build_spec(args: argparse.Namespace, cluster_cpus: float, cluster_gpus: float) -> SweepSpec:
    """The sweep described by the command line (and --config file)."""
    file_fixed, file_search = read_config_file(args.config) if args.config else ({}, {})
    fixed, search = merge_settings(file_fixed, file_search, _cli_fixed(args), _cli_search(args))
    full = SimConfig.from_dict(fixed).to_dict()
    metric = args.metric or "central_accuracy"
    search_alg = args.search or "grid"
    return SweepSpec(
        fixed=full,
        search=search,
        metric=metric,
        mode=args.mode or METRIC_MODES.get(metric, "max"),
        search_alg=search_alg,
        scheduler=args.scheduler or "fifo",
        num_samples=args.num_samples if args.num_samples is not None else (1 if search_alg == "grid" else 10),
        max_concurrent_trials=args.max_concurrent_trials,
        asha_grace_rounds=args.asha_grace_rounds if args.asha_grace_rounds is not None else 1,
        search_seed=args.search_seed,
        server_gpus=args.server_gpus if args.server_gpus is not None else 0.0,
        cluster_cpus=cluster_cpus,
        cluster_gpus=cluster_gpus,
        keep_checkpoints=args.keep_checkpoints if args.keep_checkpoints is not None else 2,
        max_failures=args.max_failures if args.max_failures is not None else 2,
    )


# ---------------------------------------------------------------------------
# Validation before Ray starts


def combinations(spec: SweepSpec) -> list[dict]:
    """Every combination of the swept values (grid/choice values, both bounds of a range), or one key
    varied at a time when that would be too many."""
    keys = list(spec.search)
    values = [spec.search[k]["values"] for k in keys]
    if math.prod(len(v) for v in values) <= MAX_COMBINATIONS_CHECKED:
        return [dict(zip(keys, combo)) for combo in itertools.product(*values)]
    return [{k: v} for k, vs in zip(keys, values) for v in vs]


def validate_spec(spec: SweepSpec, local_cpus: int | None, local_gpus: int | None) -> None:
    """Raise ConfigError on anything that would fail later: settings, every grid value, metric, search, resources."""
    need_positive = {"--num-samples": spec.num_samples, "--keep-checkpoints": spec.keep_checkpoints,
                     "--asha-grace-rounds": spec.asha_grace_rounds}
    if spec.max_concurrent_trials is not None:
        need_positive["--max-concurrent-trials"] = spec.max_concurrent_trials
    for flag, value in need_positive.items():
        if value < 1:
            raise ConfigError(f"{flag} must be at least 1, got {value}")
    if spec.max_failures < -1:
        raise ConfigError(f"--max-failures must be >= 0 (or -1 for unlimited), got {spec.max_failures}")
    if spec.server_gpus < 0:
        raise ConfigError(f"--server-gpus must be >= 0, got {spec.server_gpus}")
    if spec.metric not in METRIC_MODES:
        raise ConfigError(f"--metric must be one of {', '.join(METRIC_MODES)}, got {spec.metric!r}")
    _validate_search_alg(spec)
    plan = ResourcePlan.of(spec)
    for combo in combinations(spec):
        where = f" (with {', '.join(f'{k}={v}' for k, v in combo.items())})" if combo else ""
        config = {**spec.fixed, **combo}
        try:
            SimConfig.from_dict(config).validate(local_cpus=local_cpus, local_gpus=local_gpus)
            if local_cpus is not None:
                check_fits(combo, plan)
        except ConfigError as exc:
            raise ConfigError(f"{exc}{where if _mentions_any(str(exc), combo) else ''}") from None
        if spec.metric.startswith("fed_val") and config["fraction_evaluate"] == 0:
            raise ConfigError(f"--metric {spec.metric} needs federated evaluation: fraction_evaluate is 0{where}")


def _mentions_any(message: str, keys) -> bool:
    """Whether a SimConfig message names one of `keys` (as --flag): then the swept values are worth showing."""
    return any(f"--{k.replace('_', '-')}" in message for k in keys)


def optuna_available() -> bool:
    """Whether optuna can be imported (kept in a function so tests can pretend it is missing)."""
    return importlib.util.find_spec("optuna") is not None


def _validate_search_alg(spec: SweepSpec) -> None:
    """Refuse search/scheduler combinations Tune cannot run."""
    if spec.search_alg == "optuna":
        if not optuna_available():
            raise ConfigError("--search optuna needs the optuna package, which is not installed: "
                              "pip install 'fedsweep[optuna]' (or optuna), or use --search grid/random")
        grids = [k for k, e in spec.search.items() if e["kind"] == "grid"]
        if grids:
            raise ConfigError(f"--search optuna cannot take grid values (Optuna has no grid_search), found for "
                              f"{', '.join(grids)}: sweep them with --choice instead")
    if spec.scheduler == "asha" and "num_rounds" in spec.search:
        raise ConfigError("--scheduler asha stops trials on rounds and needs one num_rounds: fix it with --set")
