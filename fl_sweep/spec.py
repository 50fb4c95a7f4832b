"""A sweep's definition: the app, its search space and fixed values, parsed from flags and files, and checked.

Keys are either the engine's settings (`pool_size`, `seed`, resources: the
RunSettings fields) or run-config keys of the app (`fraction-train`,
`local-epochs`, `fedadam.eta`...; `_` is accepted for `-`).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import itertools
import json
import math
from dataclasses import dataclass

from fl_core.apps import FlowerApp, bind_seed, coerce, config_key, fuse_run_config, load_app_folder
from fl_core.cli import renamed
from fl_core.settings import SETTING_NAMES, ConfigError, RunSettings, setting_type
from fl_sweep.resources import ResourcePlan, check_fits

PROG = "tune_search"
MARKER_FILE = "fedsweep_sweep.json"
MARKER_FORMAT = "fedsweep-tune-sweep"
MARKER_VERSION = 2
DEFAULT_NAME = "fedsweep"
DEFAULT_STORAGE = "./ray_results"
# Swept when no search flag is given, for the keys the app has (Flower's template names).
DEFAULT_GRID = {"fraction-train": [0.05, 0.1, 0.2], "local-epochs": [1, 2, 5]}
SEARCH_KINDS = ("grid", "choice", "uniform", "loguniform")
SEARCH_ALGS = ("grid", "random", "optuna")
SCHEDULERS = ("fifo", "asha")
METRIC_PREFIXES = ("central_", "fed_", "train_", "clients_")  # what fl_core reports per round (and at the end)
ROUNDS_KEY = "num-server-rounds"  # Flower's template name for the number of rounds: ASHA's horizon
# Validating every combination of a huge grid would take long; above this, each key is checked alone.
MAX_COMBINATIONS_CHECKED = 4096
# How often (s) Tune snapshots the experiment state: it decides how much is redone after the driver dies.
EXPERIMENT_SNAPSHOT_S = "1"


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
    max_failures: int = 2

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
        return coerce(key, value, base())
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
    for key, value in (document.get("fixed") or {}).items():
        name = normalise_key(app, key, path)
        fixed[name] = coerce_value(app, name, value)
    search = {}
    for key, entry in (document.get("search") or {}).items():
        name = normalise_key(app, key, path)
        if isinstance(entry, list):  # shorthand: a plain list is a grid
            entry = {"grid": entry}
        if not isinstance(entry, dict) or len(entry) != 1 or not isinstance(next(iter(entry.values())), list):
            raise ConfigError(f"{path}: search.{key} must look like {{grid: [..]}}, {{choice: [..]}}, "
                              "{uniform: [lo, hi]} or {loguniform: [lo, hi]}")
        (kind, values), = entry.items()
        search[name] = search_entry(app, name, kind, values, f"{path}: search.{key}")
    return fixed, search


# Flags that define the sweep: with --resume they come from the marker file instead.
SWEEP_FLAGS = ("app", "config", "set", "grid", "choice", "uniform", "loguniform", "num_samples", "search",
               "search_seed", "metric", "mode", "scheduler", "asha_grace_rounds", "max_concurrent_trials",
               "server_cpus", "server_gpus", "num_client_cpus", "num_client_gpus", "max_parallel_clients",
               "keep_checkpoints", "max_failures")


def _cli_search(app: FlowerApp, args: argparse.Namespace) -> dict:
    """Search entries from --grid/--choice/--uniform/--loguniform."""
    search = {}
    for kind in SEARCH_KINDS:
        for text in getattr(args, kind):
            key, values = parse_assignment(app, text, f"--{kind}")
            if key in search:
                raise ConfigError(f"{key} is swept twice (--{kind} {text}): give one search flag per setting")
            items = values.split(",") if values.strip() else []
            search[key] = search_entry(app, key, kind, items, f"--{kind} {text}")
    return search


def _cli_fixed(app: FlowerApp, args: argparse.Namespace) -> dict:
    """Fixed values from the resource flags and --set (--set last, so it wins)."""
    fixed = {}
    for key in ("server_cpus", "server_gpus", "num_client_cpus", "num_client_gpus", "max_parallel_clients"):
        if getattr(args, key) is not None:
            fixed[key] = getattr(args, key)
    for text in args.set:
        key, value = parse_assignment(app, text, "--set")
        fixed[key] = coerce_value(app, key, value)
    return fixed


def merge_settings(app: FlowerApp, file_fixed: dict, file_search: dict, cli_fixed: dict,
                   cli_search: dict) -> tuple[dict, dict]:
    """(fixed, search): command line over file; the default grid (keys the app has) when nothing is swept.

    A key both fixed and swept explicitly is an error; the default grid just
    leaves out the keys the user fixed.
    """
    fixed = {**file_fixed, **cli_fixed}
    search = {**file_search, **cli_search}
    if search:
        both = sorted(set(fixed) & set(search))
        if both:
            raise ConfigError(f"{', '.join(both)} both fixed and swept: drop the --set/fixed entry or the search entry")
        return fixed, search
    search = {k: {"kind": "grid", "values": list(v)} for k, v in DEFAULT_GRID.items()
              if k in app.defaults and k not in fixed}
    if not search and not fixed.keys() & set(DEFAULT_GRID):
        raise ConfigError(f"app {app.name} has none of the default grid's keys ({', '.join(DEFAULT_GRID)}): "
                          "say what to sweep with --grid, --choice, --uniform or --loguniform")
    return fixed, search


def default_mode(metric: str) -> str:
    """min for losses, max for anything else."""
    return "min" if "loss" in metric else "max"


def build_spec(args: argparse.Namespace, cluster_cpus: float, cluster_gpus: float) -> SweepSpec:
    """The sweep described by the command line (and --config file)."""
    app = load_app_folder(args.app)
    file_fixed, file_search = read_config_file(app, args.config) if args.config else ({}, {})
    fixed, search = merge_settings(app, file_fixed, file_search, _cli_fixed(app, args), _cli_search(app, args))
    settings = RunSettings.from_dict({k: v for k, v in fixed.items() if k in SETTING_NAMES}).to_dict()
    run_config = bind_seed(app, fuse_run_config(app, {k: v for k, v in fixed.items() if k not in SETTING_NAMES}, "--set"),
                           settings["seed"])
    metric = args.metric or "central_accuracy"
    search_alg = args.search or "grid"
    return SweepSpec(
        app_dir=app.directory,
        settings=settings,
        run_config=run_config,
        search=search,
        metric=metric,
        mode=args.mode or default_mode(metric),
        search_alg=search_alg,
        scheduler=args.scheduler or "fifo",
        num_samples=args.num_samples if args.num_samples is not None else (1 if search_alg == "grid" else 10),
        max_concurrent_trials=args.max_concurrent_trials,
        asha_grace_rounds=args.asha_grace_rounds if args.asha_grace_rounds is not None else 1,
        search_seed=args.search_seed,
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
    if not spec.metric.startswith(METRIC_PREFIXES):
        raise ConfigError(f"--metric must be a metric fedsweep reports, starting with {', '.join(METRIC_PREFIXES)} "
                          f"(e.g. central_accuracy, fed_loss), got {spec.metric!r}")
    _validate_search_alg(spec)
    app = spec.app()
    plan = ResourcePlan.of(spec)
    for combo in combinations(spec):
        where = f" (with {', '.join(f'{k}={v}' for k, v in combo.items())})" if combo else ""
        settings, run_config = plan.trial(combo)
        try:
            settings.validate(local_cpus=local_cpus, local_gpus=local_gpus)
            app.check(run_config, settings.pool_size)
            if local_cpus is not None:
                check_fits(combo, plan)
        except ConfigError as exc:
            raise ConfigError(f"{exc}{where if _mentions_any(str(exc), combo) else ''}") from None


def _mentions_any(message: str, keys) -> bool:
    """Whether a message names one of `keys` (as a key or --flag): then the swept values are worth showing."""
    return any(k in message or f"--{k.replace('_', '-')}" in message for k in keys)


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
    if spec.scheduler == "asha":
        if ROUNDS_KEY not in spec.run_config:
            raise ConfigError(f"--scheduler asha stops trials on rounds and reads their number from the app's "
                              f"run-config key {ROUNDS_KEY}, which this app does not have")
        if ROUNDS_KEY in spec.search:
            raise ConfigError(f"--scheduler asha stops trials on rounds and needs one {ROUNDS_KEY}: fix it with --set")
