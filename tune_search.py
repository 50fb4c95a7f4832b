"""fedsweep-tune: hyperparameter sweeps of fl_core simulations with Ray Tune.

Run a sweep (default: a grid over client fraction x local epochs)::

    python tune_search.py --set dataset=synthetic --set num_rounds=5
    python tune_search.py --config sweep.yaml --loguniform lr=1e-3,1e-1 --search random --num-samples 8
    python tune_search.py --name fedsweep --resume          # continue an interrupted sweep
    python tune_search.py report ./ray_results/fedsweep     # tables and plots, at any time

Design, in short:

* Every trial is one `fl_core.run_simulation`. Each round reports its metrics
  with a checkpoint of that round (`fl_checkpoint.npz`), so a crashed trial and
  a resumed sweep continue after the last reported round.
* A trial's placement group is [server bundle] + K client bundles, with
  K = min(clients per round, max parallel clients); fl_core puts one client
  worker actor on each client bundle.
* The data is loaded once by the driver and shared through the object store.
  Data-defining settings (DATA_KEYS) may be swept: with `grid`/`choice` values
  the driver loads each distinct data set once (at most MAX_SHARED_DATASETS);
  with `uniform`/`loguniform` values, or more distinct data sets than that,
  each trial loads its own data.
* The sweep's settings are written to `fedsweep_sweep.json` in the experiment
  directory; `--resume` and `report` refuse a directory without it.
* Trials keep Tune's per-trial working directory (RAY_CHDIR_TO_TRIAL_DIR is
  left alone): every path a trial uses (storage, data_dir) is made absolute first.
* Exit status: 0 all trials finished, 1 some trial failed, 2 bad input (refused
  before Ray starts or anything is written).

Test-only hooks (environment variables read by the trainable, harmless otherwise):
FEDSWEEP_TEST_ROUND_LOG=<file> appends "trial_id,round" for every round a trial
finishes; FEDSWEEP_TEST_FAIL_ONCE=<file> makes the first trial that reaches
round 2 raise once (the file, holding that trial's id, records that it happened).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import importlib.util
import itertools
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass

from fl_core.config import ConfigError, SimConfig

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


@dataclass
class ResourcePlan:
    """What a trial's settings and bundles are derived from besides its sampled config."""

    fixed: dict  # the sweep's fixed settings; a trial's SimConfig is these updated with its sampled values
    server_gpus: float
    cluster_cpus: float
    cluster_gpus: float

    @classmethod
    def of(cls, spec: SweepSpec) -> "ResourcePlan":
        """The plan of a sweep."""
        return cls(dict(spec.fixed), spec.server_gpus, spec.cluster_cpus, spec.cluster_gpus)

    def sim_config(self, config: dict) -> SimConfig:
        """The full SimConfig of a trial whose sampled (swept) values are `config`."""
        return SimConfig.from_dict({**self.fixed, **config})


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad usage as one ConfigError line instead of usage + exit."""

    def error(self, message):
        """Raise instead of printing the usage block."""
        raise ConfigError(message)


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


def _field_kind(key: str) -> tuple[type, bool]:
    """(base type, accepts None) of a SimConfig field, from its annotation string."""
    annotation = str(SIM_FIELDS[key].type)
    base = {"int": int, "float": float, "str": str}[annotation.split(" ")[0]]
    return base, "None" in annotation


def coerce(key: str, value):
    """`value` (a string from the command line, or a YAML/JSON scalar) as the type of setting `key`."""
    base, optional = _field_kind(key)
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
    base, _ = _field_kind(key)
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


# ---------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    """Parser of a sweep run (the `report` sub-command has its own)."""
    p = _Parser(
        prog=PROG,
        description="Sweep fl_core federated simulations with Ray Tune. Default search: a grid over fraction_fit "
        "{0.05, 0.1, 0.2} x local_epochs {1, 2, 5}; any search flag replaces it. Keys are fl_core SimConfig settings "
        "(see `python -m fl_core --help`). Also: `%(prog)s report EXPERIMENT_PATH` writes the tables and plots of a "
        "sweep at any time.",
        epilog="Exit status: 0 when every trial finished, 1 when some trial failed (its error is in its trial "
        "folder; --resume retries it from its last round), 2 on bad input (nothing is written then).",
    )
    s = p.add_argument_group("settings and search space")
    s.add_argument("--config", metavar="FILE", help="YAML/JSON file with sections fixed: {key: value} and "
                   "search: {key: {grid|choice: [..]} or {uniform|loguniform: [lo, hi]}}; flags override it")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="fix a setting (repeatable)")
    for kind, shape in (("grid", "V1,V2,..."), ("choice", "V1,V2,..."), ("uniform", "LO,HI"), ("loguniform", "LO,HI")):
        s.add_argument(f"--{kind}", action="append", default=[], metavar=f"KEY={shape}",
                       help=f"sweep KEY with tune.{kind if kind != 'grid' else 'grid_search'} (repeatable)")
    s.add_argument("--num-samples", type=int, help="repeats of the grid (grid search) or trials drawn "
                   "(random/optuna); default 1 for grid, 10 otherwise")
    s.add_argument("--search", choices=SEARCH_ALGS, help="grid: grid values are crossed; random: grid values become "
                   "choices; optuna: OptunaSearch (needs optuna; no grid values). Default grid")
    s.add_argument("--search-seed", type=int, help="seed of random/optuna sampling")
    s.add_argument("--metric", help=f"per-round metric to optimise: {', '.join(METRIC_MODES)} (default central_accuracy)")
    s.add_argument("--mode", choices=("min", "max"), help="default: max for accuracies, min for losses")
    s.add_argument("--scheduler", choices=SCHEDULERS, help="fifo (default) or asha (early stopping on rounds)")
    s.add_argument("--asha-grace-rounds", type=int, help="rounds every trial runs before ASHA may stop it (default 1)")
    s.add_argument("--max-concurrent-trials", type=int, help="cap on trials running at once (default: as resources allow)")
    r = p.add_argument_group("resources (per trial: one server bundle + K client bundles)")
    r.add_argument("--server-cpus", type=int, help="CPUs of the trial's own bundle: server and central evaluation (default 1)")
    r.add_argument("--server-gpus", type=float, help="GPUs of the trial's own bundle (default 0)")
    r.add_argument("--num-client-cpus", type=float, help="CPUs per client bundle (default 1)")
    r.add_argument("--num-client-gpus", type=float, help="GPUs per client bundle, fractions allowed (default 0)")
    r.add_argument("--max-parallel-clients", type=int, help="K = min(clients per round, this); default: (CPUs - "
                   "server CPUs) / client CPUs, at least 1, so that one trial always fits the cluster")
    o = p.add_argument_group("storage, failures, Ray")
    o.add_argument("--storage-path", help=f"where experiments live: a local path, NFS, s3:// or gs:// (default {DEFAULT_STORAGE})")
    o.add_argument("--name", help=f"experiment name (default {DEFAULT_NAME}); an existing sweep of that name is never "
                   "overwritten: continue it with --resume or pick another --name")
    o.add_argument("--resume", action="store_true", help="continue the interrupted sweep at --storage-path/--name: "
                   "finished trials are kept, unfinished and errored ones continue from their last round")
    o.add_argument("--keep-checkpoints", type=int, help="round checkpoints kept per trial (default 2)")
    o.add_argument("--max-failures", type=int, help="restarts of a crashed trial, from its last round (default 2)")
    o.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                   help="join a Ray cluster (auto, ray://...); default: $RAY_ADDRESS when set (as in a Ray Job), "
                   "else start a local Ray in-process")
    o.add_argument("--ray-temp-dir", help="temp/session folder of the local Ray started here (keep it short)")
    o.add_argument("--top", type=int, default=5, help="rows of the best-trials table (default 5)")
    return p


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
# Resources


def server_bundle_cpus(sim: SimConfig) -> int:
    """CPUs of a trial's own bundle; fl_core's server then runs that many torch threads."""
    return sim.server_cpus or 1


def default_parallel_clients(sim: SimConfig, plan: ResourcePlan) -> int:
    """Client workers one trial may use when --max-parallel-clients is not given.

    The server bundle is subtracted first: on 2 CPUs with 1 CPU per client
    this gives K=1, a trial of 2 CPUs that fits; K=2 would never be scheduled.
    """
    slots = math.floor((plan.cluster_cpus - server_bundle_cpus(sim)) / sim.num_client_cpus + 1e-9)
    if sim.num_client_gpus > 0:
        slots = min(slots, math.floor((plan.cluster_gpus - plan.server_gpus) / sim.num_client_gpus + 1e-9))
    return max(1, slots)


def client_slots(sim: SimConfig, plan: ResourcePlan) -> int:
    """K, the client bundles of one trial: min(clients sampled per round, max parallel clients)."""
    cap = sim.max_parallel_clients or default_parallel_clients(sim, plan)
    return max(1, min(sim.clients_per_round(), cap))


def trial_bundles(config: dict, plan: ResourcePlan) -> list[dict]:
    """[server bundle] + K client bundles for a trial's sampled config."""
    sim = plan.sim_config(config)
    head = {"CPU": server_bundle_cpus(sim)}
    if plan.server_gpus > 0:
        head["GPU"] = plan.server_gpus
    client = {"CPU": sim.num_client_cpus}
    if sim.num_client_gpus > 0:
        client["GPU"] = sim.num_client_gpus
    return [head] + [dict(client) for _ in range(client_slots(sim, plan))]


def trial_resources(config: dict, plan: ResourcePlan):
    """The PlacementGroupFactory of a trial from its sampled config (the callable given to tune.with_resources)."""
    from ray import tune

    return tune.PlacementGroupFactory(trial_bundles(config, plan))


def check_fits(config: dict, plan: ResourcePlan) -> None:
    """ConfigError if one trial's bundles exceed the cluster's CPUs or GPUs (it would wait forever)."""
    bundles = trial_bundles(config, plan)
    cpus = sum(b.get("CPU", 0) for b in bundles)
    gpus = sum(b.get("GPU", 0) for b in bundles)
    if cpus > plan.cluster_cpus + 1e-9 or gpus > plan.cluster_gpus + 1e-9:
        raise ConfigError(
            f"one trial needs {cpus:g} CPUs and {gpus:g} GPUs ({len(bundles) - 1} client bundles) but the cluster has "
            f"{plan.cluster_cpus:g} CPUs and {plan.cluster_gpus:g} GPUs: lower --max-parallel-clients, "
            "--num-client-cpus or --server-cpus"
        )


# ---------------------------------------------------------------------------
# Validation before Ray starts


def _combinations(spec: SweepSpec) -> list[dict]:
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
    for combo in _combinations(spec):
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


# ---------------------------------------------------------------------------
# Storage and the marker file


def is_uri(path: str) -> bool:
    """Whether `path` names remote storage (s3://, gs://, ...) rather than a local or NFS path."""
    return "://" in path and not path.startswith("file://")


def experiment_location(storage_path: str | None, name: str | None) -> str:
    """The experiment directory (absolute local path or URI) for --storage-path and --name."""
    name = name or DEFAULT_NAME
    if not name.strip() or "/" in name or name in (".", ".."):
        raise ConfigError(f"--name must be a plain folder name, got {name!r}")
    storage = storage_path or DEFAULT_STORAGE
    if storage.startswith("file://"):
        storage = storage[len("file://"):]
    if is_uri(storage):
        return storage.rstrip("/") + "/" + name
    return os.path.join(os.path.abspath(os.path.expanduser(storage)), name)


def _filesystem(path: str):
    """(pyarrow filesystem, path within it) for a URI or local path."""
    import pyarrow.fs

    if not is_uri(path):
        return pyarrow.fs.LocalFileSystem(), path
    try:
        return pyarrow.fs.FileSystem.from_uri(path)
    except Exception as exc:  # missing credentials, unknown scheme, no network: one message for all
        raise ConfigError(f"cannot open storage {path}: {type(exc).__name__}: {exc}") from None


def _exists(path: str) -> bool:
    """Whether a local path or URI exists."""
    if not is_uri(path):
        return os.path.exists(path)
    import pyarrow.fs

    fs, inner = _filesystem(path)
    try:
        return fs.get_file_info(inner).type != pyarrow.fs.FileType.NotFound
    except Exception as exc:
        raise ConfigError(f"cannot reach storage {path}: {type(exc).__name__}: {exc}") from None


def check_writable(experiment: str) -> None:
    """ConfigError unless the experiment folder can be created (local paths; remote ones are checked by Ray)."""
    if is_uri(experiment):
        return
    probe = experiment
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise ConfigError(f"--storage-path cannot be created: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"--storage-path is not writable: no permission to write in {probe}")


def read_marker(experiment: str) -> dict:
    """The marker document of a sweep made by this tool; ConfigError if `experiment` is not one."""
    path = experiment.rstrip("/") + "/" + MARKER_FILE
    if not _exists(path):
        raise ConfigError(f"{experiment} holds no sweep made by fedsweep-tune (no {MARKER_FILE}); "
                          "check --storage-path and --name")
    fs, inner = _filesystem(path)
    try:
        with fs.open_input_stream(inner) as f:
            marker = json.loads(f.readall().decode())
        if marker.get("format") != MARKER_FORMAT:
            raise ValueError("wrong format")
        SweepSpec.from_dict(marker["spec"])
    except Exception as exc:
        raise ConfigError(f"{path} is not a valid fedsweep-tune marker ({exc})") from None
    if marker.get("version") != MARKER_VERSION:
        raise ConfigError(f"{path} has marker version {marker.get('version')}; this tool reads {MARKER_VERSION}")
    return marker


def write_marker(experiment: str, spec: SweepSpec) -> None:
    """Write the marker (sweep settings) into the experiment folder, creating it."""
    marker = {"format": MARKER_FORMAT, "version": MARKER_VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "spec": spec.to_dict()}
    fs, inner = _filesystem(experiment)
    fs.create_dir(inner, recursive=True)
    with fs.open_output_stream(inner.rstrip("/") + "/" + MARKER_FILE) as f:
        f.write(json.dumps(marker, indent=1).encode())


# ---------------------------------------------------------------------------
# Data


def swept_data_keys(spec: SweepSpec) -> tuple[str, ...]:
    """Swept settings that change the data, in a fixed order."""
    return tuple(k for k in DATA_KEYS if k in spec.search)


def data_key(config: dict, keys: tuple[str, ...]) -> str:
    """Identifies the data set a trial needs: its values of the swept data settings."""
    return json.dumps({k: config.get(k) for k in keys}, sort_keys=True)


def shared_data_configs(spec: SweepSpec) -> dict[str, SimConfig] | None:
    """Data key -> config to load, for every data set the driver shares; None when trials load their own."""
    keys = swept_data_keys(spec)
    if any(spec.search[k]["kind"] not in ("grid", "choice") for k in keys):
        return None
    combos = [dict(zip(keys, c)) for c in itertools.product(*(spec.search[k]["values"] for k in keys))]
    if len(combos) > MAX_SHARED_DATASETS:
        return None
    return {data_key(c, keys): SimConfig.from_dict({**spec.fixed, **c}) for c in combos}


def load_shared_data(spec: SweepSpec) -> dict:
    """Data key -> FederatedData for the data sets the driver shares (empty when trials load their own).

    Also pins CIFAR-10's folder as an absolute path in `spec.fixed`: trials run
    in their own working directories, where a relative default would miss it.
    """
    from fl_core.data import DEFAULT_DATA_DIR, load_cifar10, load_federated_data

    datasets = spec.search["dataset"]["values"] if "dataset" in spec.search else [spec.fixed["dataset"]]
    if "cifar10" in datasets:
        spec.fixed["data_dir"] = os.path.abspath(spec.fixed["data_dir"] or DEFAULT_DATA_DIR)
    configs = shared_data_configs(spec)
    if configs is None:
        if "cifar10" in datasets:
            load_cifar10(spec.fixed["data_dir"])  # trials load their own: check (or download) it once here
        return {}
    return {key: load_federated_data(config) for key, config in configs.items()}


# ---------------------------------------------------------------------------
# The trainable (runs in a Tune trial)


def _test_hooks(trial_id: str, round_: int) -> None:
    """Test-only: inject one failure at round 2, and log every finished round (see module docstring)."""
    marker = os.environ.get("FEDSWEEP_TEST_FAIL_ONCE")
    if marker and round_ == 2:
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # atomic: only one trial fails
        except FileExistsError:
            pass
        else:
            os.write(fd, trial_id.encode())
            os.close(fd)
            raise RuntimeError(f"FEDSWEEP_TEST_FAIL_ONCE: injected failure in round 2 of trial {trial_id}")
    log = os.environ.get("FEDSWEEP_TEST_ROUND_LOG")
    if log:
        with open(log, "a") as f:
            f.write(f"{trial_id},{round_}\n")


def _report(metrics: dict, state) -> None:
    """One tune.report with a checkpoint of `state` (written to a fresh temp dir that Tune copies)."""
    from ray import tune

    from fl_core import save_checkpoint

    directory = tempfile.mkdtemp(prefix="fedsweep-ckpt-")
    try:
        save_checkpoint(state, directory)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _make_reporter(trial_id: str):
    """The fl_core callback that reports each round to Tune (built here so fl_core is imported in the trial)."""
    from fl_core import Callback

    class TuneReporter(Callback):
        """Reports every round; the last round waits for the all-client evaluation to report it too."""

        def __init__(self) -> None:
            """Nothing held back yet."""
            self.last_round = None

        def on_round_end(self, event) -> None:
            """Report the round with its checkpoint (the last one: keep it for on_run_end)."""
            _test_hooks(trial_id, event.round)
            if event.round < event.num_rounds:
                _report(dict(event.metrics), event.state)
            else:
                self.last_round = event

        def on_run_end(self, event) -> None:
            """Report the final round with the per-client evaluation summary."""
            if self.last_round is None:  # resumed after the final round: already reported
                return
            metrics = dict(self.last_round.metrics)
            metrics.update({f"client_acc_{k}": event.client_evaluation.get(k) for k in CLIENT_EVAL_KEYS})
            _report(metrics, event.state)

    return TuneReporter()


def fedsweep_trial(config: dict, data_refs: dict, data_keys: tuple, plan: ResourcePlan) -> None:
    """Tune function trainable: one fl_core simulation, resumed from the trial's last checkpoint if any.

    `config` holds the trial's sampled values only; the fixed settings come with `plan`.
    """
    from ray import tune

    from fl_core import load_checkpoint, load_federated_data, run_simulation

    logging.getLogger("flwr").setLevel(logging.WARNING)
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)  # a line per checkpoint otherwise
    sim = plan.sim_config(config)
    # The pool then uses exactly the K client bundles of this trial's placement group.
    sim.max_parallel_clients = client_slots(sim, plan)
    resume = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            resume = load_checkpoint(directory)
        if resume.round >= sim.num_rounds:
            return
    data_ref = data_refs.get(data_key(config, data_keys))
    data = load_federated_data(sim) if data_ref is None else None  # swept data keys without a shared copy
    reporter = _make_reporter(tune.get_context().get_trial_id())
    run_simulation(sim, data=data, data_ref=data_ref, resume=resume, callbacks=[reporter])


def make_trainable(spec: SweepSpec, data_refs: dict):
    """The trainable as Tune sees it: data via the object store, resources from the trial's config."""
    from ray import tune

    plan = ResourcePlan.of(spec)
    trainable = tune.with_parameters(fedsweep_trial, data_refs=data_refs, data_keys=swept_data_keys(spec), plan=plan)
    return tune.with_resources(trainable, functools.partial(trial_resources, plan=plan))


# ---------------------------------------------------------------------------
# Tune objects


def param_space(spec: SweepSpec) -> dict:
    """The swept settings as Tune domains (fixed ones travel with the trainable: short trial configs)."""
    from ray import tune

    space = {}
    for key, entry in spec.search.items():
        kind, values = entry["kind"], entry["values"]
        integer = _field_kind(key)[0] is int
        if kind == "grid" and spec.search_alg == "grid":
            space[key] = tune.grid_search(values)
        elif kind in ("grid", "choice"):
            space[key] = tune.choice(values)
        elif kind == "uniform":
            space[key] = tune.randint(values[0], values[1] + 1) if integer else tune.uniform(*values)
        else:
            space[key] = tune.lograndint(values[0], values[1] + 1) if integer else tune.loguniform(*values)
    return space


def trial_dirname(trial) -> str:
    """Short trial folder names (Tune's default embeds every swept value)."""
    return f"trial_{trial.trial_id}"


def tune_config(spec: SweepSpec):
    """TuneConfig: metric, search algorithm, scheduler, samples, concurrency."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    if spec.search_alg == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        searcher = OptunaSearch(seed=spec.search_seed)
    else:
        searcher = BasicVariantGenerator(random_state=spec.search_seed)
    scheduler = None
    if spec.scheduler == "asha":
        scheduler = ASHAScheduler(time_attr="round", max_t=spec.fixed["num_rounds"],
                                  grace_period=min(spec.asha_grace_rounds, spec.fixed["num_rounds"]))
    return tune.TuneConfig(metric=spec.metric, mode=spec.mode, search_alg=searcher, scheduler=scheduler,
                           num_samples=spec.num_samples, max_concurrent_trials=spec.max_concurrent_trials,
                           trial_dirname_creator=trial_dirname,
                           # Saves a worker start (imports of torch and Flower, seconds) per trial; a trial
                           # whose thread does not end within Tune's timeout gets a fresh actor anyway.
                           reuse_actors=True)


def run_config(spec: SweepSpec, experiment: str):
    """RunConfig: where results go, how many checkpoints stay, how often a crashed trial restarts."""
    from ray import tune

    storage, name = experiment.rstrip("/").rsplit("/", 1)
    return tune.RunConfig(
        name=name,
        storage_path=storage,
        checkpoint_config=tune.CheckpointConfig(num_to_keep=spec.keep_checkpoints),
        failure_config=tune.FailureConfig(max_failures=spec.max_failures),
        verbose=1,
    )


# ---------------------------------------------------------------------------
# Running a sweep


def local_resources() -> tuple[int, int]:
    """(CPUs, GPUs) of this machine, as a local Ray would see them."""
    import torch

    return os.cpu_count() or 1, torch.cuda.device_count()


def prepare(args: argparse.Namespace) -> tuple[SweepSpec, str]:
    """Check everything that can be checked without Ray; returns (spec, experiment location)."""
    experiment = experiment_location(args.storage_path, args.name)
    if args.resume:
        given = [f"--{k.replace('_', '-')}" for k in SWEEP_FLAGS if getattr(args, k) not in (None, [], False)]
        if given:
            raise ConfigError(f"--resume continues the sweep as it was started; drop {', '.join(given)}")
        spec = SweepSpec.from_dict(read_marker(experiment)["spec"])
        from ray import tune

        if not tune.Tuner.can_restore(experiment):
            raise ConfigError(f"{experiment} holds a sweep that never saved its state: start it again under another --name")
        return spec, experiment
    check_writable(experiment)
    if _exists(experiment):
        raise ConfigError(f"{experiment} already exists: continue that sweep with --resume, or pick another --name")
    if args.address is None:
        cpus, gpus = local_resources()
        spec = build_spec(args, cpus, gpus)
        validate_spec(spec, cpus, gpus)
    else:
        spec = build_spec(args, 0, 0)  # cluster size filled in once connected
        validate_spec(spec, None, None)
    return spec, experiment


def start_ray(args: argparse.Namespace, spec: SweepSpec, fresh: bool) -> None:
    """Start local Ray in-process or join --address; for a new sweep on a cluster, size the defaults from it."""
    import ray

    # Snapshot the experiment state often so a killed driver loses at most a second of bookkeeping.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", EXPERIMENT_SNAPSHOT_S)
    # Tune also forces a snapshot every --keep-checkpoints reports and warns when that is frequent: expected here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if args.address is None:
        kwargs = {"_temp_dir": os.path.abspath(args.ray_temp_dir)} if args.ray_temp_dir else {}
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level=logging.WARNING, **kwargs)
        return
    ray.init(address=args.address, logging_level=logging.WARNING)
    if fresh:
        total = ray.cluster_resources()
        spec.cluster_cpus, spec.cluster_gpus = total.get("CPU", 0.0), total.get("GPU", 0.0)
        plan = ResourcePlan.of(spec)
        for combo in _combinations(spec):
            check_fits(combo, plan)


class _GoneCheckpointFilter(logging.Filter):
    """Turns Tune's traceback for deleting an already-deleted checkpoint into one warning line.

    After a driver was killed, the restored experiment state may list a
    checkpoint that the killed run had already rotated out; Tune registers the
    new checkpoint first and then fails to delete the old one. Nothing is lost.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the matching record; let every other record through unchanged."""
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, FileNotFoundError) and "Error handling checkpoint" in str(record.msg):
            record.msg, record.args, record.exc_info = (
                "an old checkpoint was already deleted before the sweep was interrupted; nothing lost (%s)", (exc,), None)
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def execute(args: argparse.Namespace, spec: SweepSpec, experiment: str, data: dict) -> dict:
    """Start Ray, run (or restore) the sweep, leave Ray shut down; returns its timings in seconds."""
    import ray
    from ray import tune

    t0 = time.perf_counter()
    start_ray(args, spec, fresh=not args.resume)
    timings = {"ray_start_s": time.perf_counter() - t0}
    try:
        trainable = make_trainable(spec, {key: ray.put(value) for key, value in data.items()})
        if args.resume:
            logging.getLogger("ray.tune.execution.tune_controller").addFilter(_GoneCheckpointFilter())
            tuner = tune.Tuner.restore(experiment, trainable=trainable, resume_errored=True)
        else:
            write_marker(experiment, spec)
            tuner = tune.Tuner(trainable, param_space=param_space(spec), tune_config=tune_config(spec),
                               run_config=run_config(spec, experiment))
        t0 = time.perf_counter()
        tuner.fit()
        timings["sweep_s"] = time.perf_counter() - t0
    finally:
        ray.shutdown()
    return timings


def run_main(argv: list[str] | None) -> int:
    """`tune_search [options]`: run or resume a sweep, then write its report."""
    try:
        args = build_parser().parse_args(argv)
        spec, experiment = prepare(args)
        data = load_shared_data(spec)  # before Ray: a missing data set is bad input too
    except ConfigError as exc:
        return fail(exc)
    try:
        timings = execute(args, spec, experiment, data)
    except ConfigError as exc:  # e.g. a joined cluster too small for one trial
        return fail(exc)
    print(f"sweep ran {timings['sweep_s']:.1f} s (Ray start {timings['ray_start_s']:.1f} s)")
    summary = write_report(experiment, top=args.top)
    return 1 if summary["errored"] else 0


def fail(exc: Exception) -> int:
    """Print the one-line error and return the bad-input exit status."""
    message = " ".join(str(exc).split())
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


# ---------------------------------------------------------------------------
# Reports


def _trial_frames(experiment: str):
    """(trials, {trial_id: per-round DataFrame}) read from the experiment folder."""
    from ray.tune import ExperimentAnalysis

    try:
        analysis = ExperimentAnalysis(experiment)
    except (ValueError, FileNotFoundError) as exc:
        raise ConfigError(f"no Tune experiment state in {experiment} yet ({str(exc).splitlines()[0]})") from None
    return analysis.trials, analysis.trial_dataframes


def rounds_table(trials, frames: dict, swept: list[str]):
    """Every trial's per-round metrics, one row per (trial, round).

    A round reported twice (re-run after a restore from an older checkpoint)
    keeps its latest report.
    """
    import pandas as pd

    parts = []
    for trial in trials:
        df = frames.get(trial.trial_id)
        if df is None or df.empty or "round" not in df:
            continue
        part = df[[c for c in ROUND_COLUMNS if c in df]].copy()
        part.insert(0, "trial_id", trial.trial_id)
        for i, key in enumerate(swept, start=1):
            part.insert(i, key, trial.config.get(key))
        parts.append(part)
    if not parts:
        return pd.DataFrame(columns=["trial_id", *swept, *ROUND_COLUMNS])
    table = pd.concat(parts, ignore_index=True)
    table["round"] = table["round"].astype(int)
    table = table.drop_duplicates(["trial_id", "round"], keep="last")
    return table.sort_values(["trial_id", "round"]).reset_index(drop=True)


def _last_checkpoint(trial, experiment: str) -> str | None:
    """Path (or URI, for remote storage) of the trial's latest kept checkpoint, if any."""
    checkpoint = trial.checkpoint
    if checkpoint is None:
        return None
    if is_uri(experiment) and "://" not in checkpoint.path:
        return experiment.split("://", 1)[0] + "://" + checkpoint.path.lstrip("/")
    return checkpoint.path


def _metric_summary(mine, metric: str, mode: str) -> dict:
    """Final and best value of `metric` over one trial's rounds, and the round of the best."""
    values = mine[metric].dropna() if metric in mine else []
    if len(values) == 0:
        return {f"final_{metric}": None, f"best_{metric}": None, f"best_{metric}_round": None}
    best = values.idxmax() if mode == "max" else values.idxmin()
    return {f"final_{metric}": mine[metric].iloc[-1], f"best_{metric}": values[best],
            f"best_{metric}_round": int(mine.loc[best, "round"])}


def trials_table(trials, rounds, spec: SweepSpec, experiment: str):
    """One row per trial: swept values, final and best metric, rounds, wall time, status, checkpoint."""
    import pandas as pd

    rows = []
    for trial in sorted(trials, key=lambda t: t.trial_id):
        mine = rounds[rounds["trial_id"] == trial.trial_id]
        row = {"trial_id": trial.trial_id, "status": trial.status, **{k: trial.config.get(k) for k in spec.search}}
        row["rounds"] = len(mine)
        row.update(_metric_summary(mine, spec.metric, spec.mode))
        row.update(_metric_summary(mine, "central_accuracy", "max"))  # always there, whatever the metric
        row["wall_time_s"] = mine["time_total_s"].iloc[-1] if len(mine) else None
        row["round_seconds_mean"] = mine["seconds"].mean() if len(mine) else None
        result = trial.last_result or {}
        row.update({f"client_acc_{k}": result.get(f"client_acc_{k}") for k in CLIENT_EVAL_KEYS})
        row["checkpoint"] = _last_checkpoint(trial, experiment)
        rows.append(row)
    return pd.DataFrame(rows)


def best_trial(table, spec: SweepSpec) -> dict | None:
    """The row with the best final metric (Tune's default scope: the last reported round)."""
    column = f"final_{spec.metric}"
    scored = table.dropna(subset=[column])
    if scored.empty:
        return None
    index = scored[column].idxmax() if spec.mode == "max" else scored[column].idxmin()
    return scored.loc[index].to_dict()


def _short(value) -> str:
    """A swept value for a legend: floats to 4 significant digits."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _json_default(value):
    """numpy scalars as Python numbers; anything else as text."""
    return value.item() if hasattr(value, "item") else str(value)


def plot_accuracy(rounds, swept: list[str], path: str) -> None:
    """Central test accuracy against round, one line per trial."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for trial_id, part in rounds.groupby("trial_id", sort=True):
        label = ", ".join(f"{k}={_short(part[k].iloc[0])}" for k in swept) or trial_id
        ax.plot(part["round"], part["central_accuracy"], marker="o", markersize=3, label=label)
    ax.set_xlabel("round")
    ax.set_ylabel("central test accuracy")
    ax.set_title("Accuracy per round, every trial")
    ax.grid(alpha=0.3)
    if 0 < rounds["trial_id"].nunique() <= 12:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_heatmap(table, spec: SweepSpec, path: str) -> str | None:
    """Final accuracy over fraction_fit x local_epochs (mean over other keys); returns a note when skipped."""
    import matplotlib.pyplot as plt
    import numpy as np

    if not {"fraction_fit", "local_epochs"} <= set(spec.search):
        return "heatmap skipped: fraction_fit and local_epochs are not both swept"
    data = table.dropna(subset=["final_central_accuracy"])
    if data.empty:
        return "heatmap skipped: no trial has reported yet"
    grid = data.pivot_table(index="local_epochs", columns="fraction_fit", values="final_central_accuracy", aggfunc="mean")
    fig, ax = plt.subplots(figsize=(1.6 * len(grid.columns) + 2.5, 1.2 * len(grid.index) + 2))
    image = ax.imshow(grid.values, cmap="viridis", aspect="auto", origin="lower")
    ax.set_xticks(range(len(grid.columns)), [f"{c:.4g}" for c in grid.columns])
    ax.set_yticks(range(len(grid.index)), [f"{i:g}" for i in grid.index])
    for (row, col), value in np.ndenumerate(grid.values):
        ax.text(col, row, "-" if np.isnan(value) else f"{value:.3f}", ha="center", va="center", color="w")
    others = [k for k in spec.search if k not in ("fraction_fit", "local_epochs")]
    ax.set_title("Final central accuracy" + (f" (mean over {', '.join(others)})" if others or spec.num_samples > 1 else ""),
                 fontsize=9)
    ax.set_xlabel("fraction_fit (client fraction)")
    ax.set_ylabel("local_epochs")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


def _publish(local_dir: str, experiment: str) -> None:
    """Copy the report files into a remote experiment folder (local folders are written in place)."""
    import pyarrow.fs

    fs, inner = _filesystem(experiment)
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
    trials, frames = _trial_frames(experiment)
    swept = list(spec.search)
    rounds = rounds_table(trials, frames, swept)
    table = trials_table(trials, rounds, spec, experiment)
    best = best_trial(table, spec)
    out = experiment if not is_uri(experiment) else tempfile.mkdtemp(prefix="fedsweep-report-")
    table.to_csv(os.path.join(out, "trials.csv"), index=False)
    rounds.to_csv(os.path.join(out, "rounds.csv"), index=False)
    with open(os.path.join(out, "best.json"), "w") as f:
        json.dump(_best_document(best, trials, spec, experiment), f, indent=1, default=_json_default)
    plot_accuracy(rounds, swept, os.path.join(out, "accuracy_vs_round.png"))
    note = plot_heatmap(table, spec, os.path.join(out, "heatmap_final_accuracy.png"))
    if out != experiment:
        _publish(out, experiment)
        shutil.rmtree(out, ignore_errors=True)
    print_best(table, spec, top)
    errored = table.loc[table["status"] == "ERROR", "trial_id"].tolist()
    if note:
        print(note)
    if errored:
        print(f"{len(errored)} trial(s) failed ({', '.join(errored)}): their errors are in their trial folders; "
              "`--resume` retries them from their last round")
    print(f"report written to {experiment}: trials.csv, rounds.csv, best.json, accuracy_vs_round.png"
          + ("" if note else ", heatmap_final_accuracy.png"))
    return {"trials": len(table), "errored": errored, "best": best}


def _best_document(best: dict | None, trials, spec: SweepSpec, experiment: str) -> dict:
    """best.json: the best trial's swept values, full config, score and checkpoint."""
    if best is None:
        return {"metric": spec.metric, "mode": spec.mode, "trial_id": None, "note": "no trial has reported yet"}
    trial = next(t for t in trials if t.trial_id == best["trial_id"])
    checkpoint = best.get("checkpoint")
    return {
        "metric": spec.metric,
        "mode": spec.mode,
        "trial_id": best["trial_id"],
        "value": best[f"final_{spec.metric}"],
        "rounds": best["rounds"],
        "status": best["status"],
        "swept": {k: trial.config.get(k) for k in spec.search},
        "config": {**spec.fixed, **trial.config},
        "checkpoint": checkpoint,
        "checkpoint_file": None if checkpoint is None else checkpoint.rstrip("/") + "/fl_checkpoint.npz",
        "experiment": experiment,
    }


def report_main(argv: list[str]) -> int:
    """`tune_search report EXPERIMENT_PATH`: the tables and plots of a sweep, finished or not."""
    parser = _Parser(prog=f"{PROG} report", description="Write trials.csv, rounds.csv, best.json and plots "
                     "for a sweep (finished, running or interrupted) and print its best trials.")
    parser.add_argument("experiment", help="the sweep's folder: STORAGE_PATH/NAME")
    parser.add_argument("--top", type=int, default=5, help="rows of the best-trials table (default 5)")
    try:
        args = parser.parse_args(argv)
        path = args.experiment if is_uri(args.experiment) else os.path.abspath(args.experiment)
        write_report(path, top=args.top)
    except ConfigError as exc:
        return fail(exc)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python tune_search.py` and `fedsweep-tune`; returns the exit status (2: bad input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["report"]:
            return report_main(argv[1:])
        return run_main(argv)
    except SystemExit as exc:  # --help
        return int(exc.code or 0)


if __name__ == "__main__":
    # Run the importable copy of this file, so trials unpickle its functions by module name.
    import tune_search

    sys.exit(tune_search.main())
