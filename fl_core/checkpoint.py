"""Checkpoints: one `.npz` file that loads without executing code.

The file holds every array (global model, strategy state, node states) as a
plain npz entry and one JSON document (stored as a uint8 array) that says what
they are: round, strategy state, node states, metrics history, app, run config
and engine settings. `np.load(..., allow_pickle=False)` reads it all. Records
(ArrayRecord, MetricRecord, ConfigRecord, RecordDict), numpy arrays and scalars,
bytes and containers of those are encoded with a type tag; nothing else is
stored. It is written to a temp file in the same folder and renamed over the
old one: a crash leaves either the previous checkpoint or the new one.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from dataclasses import dataclass, field

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fl_core.apps import ROUNDS_KEY, fuse_run_config
from fl_core.settings import RESUME_FIXED_SETTINGS, ROUNDING_SETTINGS, SETTING_NAMES, ConfigError, setting_type
from fl_core.strategies import StrategyState

CHECKPOINT_FILE = "fl_checkpoint.npz"
FORMAT = "fedsweep-fl-checkpoint"
VERSION = 2


class CheckpointError(ConfigError):
    """A checkpoint that cannot be read or does not fit the requested run."""


@dataclass
class ServerState:
    """Everything needed to continue a run after `round`."""

    round: int
    arrays: ArrayRecord  # the global model
    strategy: str  # the strategy's class name
    strategy_state: StrategyState
    node_states: dict[int, RecordDict]  # node id -> Context.state (nodes whose state holds something)
    history: list[dict]  # one metrics row per finished round
    app: str  # the app's project name
    app_dir: str  # the app's folder when the checkpoint was written
    run_config: dict
    settings: dict  # RunSettings.to_dict()
    extra: dict = field(default_factory=dict)  # e.g. the final all-node evaluation


# ---------------------------------------------------------------------------
# Encoding: JSON with tagged values, arrays stored beside it


class _Encoder:
    """Turns data into JSON-ready values, collecting arrays in `arrays`."""

    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}

    def _array(self, value: np.ndarray) -> str:
        key = f"a{len(self.arrays):06d}"
        self.arrays[key] = value
        return key

    def encode(self, value):
        """The JSON form of `value`."""
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, np.ndarray):
            return {"ndarray": self._array(value)}
        if isinstance(value, np.generic):
            return {"scalar": self._array(np.asarray(value))}
        if isinstance(value, bytes):
            return {"bytes": self._array(np.frombuffer(value, dtype=np.uint8))}
        if isinstance(value, ArrayRecord):
            return {"ArrayRecord": [[k, self._array(a.numpy())] for k, a in value.items()]}
        for tag, kind in (
            ("MetricRecord", MetricRecord),
            ("ConfigRecord", ConfigRecord),
            ("RecordDict", RecordDict),
            ("StrategyState", StrategyState),
        ):
            if isinstance(value, kind):
                return {tag: [[k, self.encode(v)] for k, v in value.items()]}
        if isinstance(value, (list, tuple)):
            return {type(value).__name__: [self.encode(v) for v in value]}
        if isinstance(value, dict):
            return {"dict": [[self.encode(k), self.encode(v)] for k, v in value.items()]}
        raise TypeError(f"cannot store a {type(value).__name__} in a checkpoint")


def _decode(value, arrays):
    """Inverse of _Encoder.encode, reading arrays from the open npz `arrays`."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list) or not isinstance(value, dict) or len(value) != 1:
        raise ValueError(f"unexpected entry {str(value)[:80]!r}")
    ((tag, body),) = value.items()
    if tag == "ndarray":
        return arrays[body]
    if tag == "scalar":
        return arrays[body][()]
    if tag == "bytes":
        return arrays[body].tobytes()
    if tag == "ArrayRecord":
        return ArrayRecord({k: Array(arrays[key]) for k, key in body})
    records = {
        "MetricRecord": MetricRecord,
        "ConfigRecord": ConfigRecord,
        "RecordDict": RecordDict,
        "StrategyState": StrategyState,
    }
    if tag in records:
        return records[tag]({k: _decode(v, arrays) for k, v in body})
    if tag in ("list", "tuple"):
        items = [_decode(v, arrays) for v in body]
        return items if tag == "list" else tuple(items)
    if tag == "dict":
        return {_decode(k, arrays): _decode(v, arrays) for k, v in body}
    raise ValueError(f"unknown entry type {tag!r}")


# ---------------------------------------------------------------------------
# Files


def checkpoint_path(path: str) -> str:
    """The checkpoint file for `path`, which names the file or the folder holding it."""
    return os.path.join(path, CHECKPOINT_FILE) if os.path.isdir(path) else path


TEMP_PREFIX, TEMP_SUFFIX = ".tmp-", ".part"  # write_atomically's temp files


def remove_stale_temp_files(directory: str) -> None:
    """Delete write_atomically's temp files a killed process left in `directory` (call it before writing there)."""
    if os.path.isdir(directory):
        for name in os.listdir(directory):
            if name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX):
                os.unlink(os.path.join(directory, name))


def write_atomically(path: str, write) -> None:
    """Call `write(binary_file)` on a temp file beside `path`, sync it and rename it over `path`.

    Readers see the old file or the new one, never a partial one; on failure the temp file is removed.
    """
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_checkpoint(state: ServerState, directory: str) -> str:
    """Atomically write `state` as `directory/fl_checkpoint.npz`; returns the file's path."""
    os.makedirs(directory, exist_ok=True)
    encoder = _Encoder()
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "round": state.round,
        "arrays": encoder.encode(state.arrays),
        "strategy": state.strategy,
        "strategy_state": encoder.encode(state.strategy_state),
        "node_states": [[node_id, encoder.encode(s)] for node_id, s in sorted(state.node_states.items())],
        "history": state.history,
        "app": state.app,
        "app_dir": state.app_dir,
        "run_config": state.run_config,
        "settings": state.settings,
        "extra": state.extra,
    }
    entries = dict(encoder.arrays)
    entries["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    target = os.path.join(directory, CHECKPOINT_FILE)
    write_atomically(target, lambda f: np.savez(f, **entries))
    return target


def _a(kind: type) -> str:
    return ("an " if kind.__name__[0] in "aeiou" else "a ") + kind.__name__


def _typed(meta: dict, key: str, kind: type):
    """meta[key], which must be a `kind`."""
    if key not in meta:
        raise ValueError(f"field {key!r} is missing")
    value = meta[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"field {key!r} is {_a(type(value))}, not {_a(kind)}")
    return value


def _check_settings(settings: dict) -> dict:
    """`settings` (the checkpoint's engine settings) if every key is a setting with a value of its type."""
    for name, value in settings.items():
        if name not in SETTING_NAMES:
            raise ValueError(f"unknown engine setting {name!r}")
        kind, optional = setting_type(name)
        kinds = (int, float) if kind is float else kind
        if not ((value is None and optional) or (isinstance(value, kinds) and not isinstance(value, bool))):
            raise ValueError(f"engine setting {name!r} is {value!r}, not {_a(kind)}")
    return settings


def load_checkpoint(path: str) -> ServerState:
    """Read a checkpoint file (or the folder holding one); CheckpointError if it is not a valid one."""
    file = checkpoint_path(path)
    if not os.path.isfile(file):
        raise CheckpointError(f"no checkpoint at {file}: pass the file or the folder that holds {CHECKPOINT_FILE}")
    try:
        if not zipfile.is_zipfile(file):  # np.load would take it for a pickle (refused) or a single .npy array
            raise ValueError("not an .npz archive: cut short, or another kind of file")
        npz = np.load(file, allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise ValueError("a single array, not an .npz archive")
        with npz:
            meta = json.loads(bytes(npz["meta"]).decode())
            if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                raise ValueError("not a fedsweep checkpoint")
            if meta.get("version") != VERSION:
                raise ValueError(f"format version {meta.get('version')} (this fedsweep reads {VERSION})")
            arrays = _decode(_typed(meta, "arrays", dict), npz)
            strategy_state = _decode(_typed(meta, "strategy_state", dict), npz)
            if not isinstance(arrays, ArrayRecord) or not isinstance(strategy_state, StrategyState):
                raise ValueError("arrays or strategy state of the wrong type")
            node_states = {}
            for node_id, encoded in _typed(meta, "node_states", list):
                node_states[int(node_id)] = _decode(encoded, npz)
                if not isinstance(node_states[int(node_id)], RecordDict):
                    raise ValueError(f"state of node {node_id} is not a RecordDict")
            history = _typed(meta, "history", list)
            if not all(isinstance(row, dict) for row in history):
                raise ValueError("history rows must be objects")
            state = ServerState(
                round=_typed(meta, "round", int),
                arrays=arrays,
                strategy=_typed(meta, "strategy", str),
                strategy_state=strategy_state,
                node_states=node_states,
                history=history,
                app=_typed(meta, "app", str),
                app_dir=_typed(meta, "app_dir", str),
                run_config=_typed(meta, "run_config", dict),
                settings=_check_settings(_typed(meta, "settings", dict)),
                extra=_typed(meta, "extra", dict),
            )
            if state.round < 1:
                raise ValueError(f"round {state.round}")
    except CheckpointError:
        raise
    except (
        OSError,
        EOFError,
        ValueError,
        KeyError,
        TypeError,
        IndexError,
        AttributeError,
        zipfile.BadZipFile,
        UnicodeDecodeError,
    ) as exc:
        raise CheckpointError(f"checkpoint {file} is corrupt or not a fedsweep checkpoint ({exc})") from None
    return state


def check_app(state: ServerState, app) -> None:
    """Refuse to resume `state` with another app, or one that cannot take the checkpoint's run config."""
    if state.app != app.name:
        raise CheckpointError(
            f"the checkpoint is of app {state.app!r}, not {app.name!r}: resume it with --app of that app"
        )
    try:
        fuse_run_config(app, state.run_config, "its run config")
    except ConfigError as exc:
        raise CheckpointError(
            f"the checkpoint does not fit app {app.name}: {exc}; resume it with the version of the app that made it"
        ) from None


def check_resume(state: ServerState, app, run_config: dict, settings) -> list[str]:
    """Refuse to resume `state` with another app, run config or data; returns notes on what may still differ.

    Run-config keys the app lists in resume-may-change (by default
    num-server-rounds) may differ; changed thread counts are allowed with a note,
    since they change floating-point results from here on.
    """
    check_app(state, app)
    keys = sorted(set(state.run_config) | set(run_config))
    differing = [k for k in keys if state.run_config.get(k) != run_config.get(k) and k not in app.resume_may_change]
    differing += [k for k in RESUME_FIXED_SETTINGS if state.settings.get(k) != getattr(settings, k)]
    if differing:
        detail = ", ".join(
            f"{k}: checkpoint {_value(state, k)!r} vs now {_current(run_config, settings, k)!r}" for k in differing
        )
        raise CheckpointError(
            f"the checkpoint was made with other settings ({detail}); resume it with its own settings"
        )
    rounds = run_config.get(ROUNDS_KEY)
    if isinstance(rounds, int) and state.round > rounds:
        raise CheckpointError(
            f"the checkpoint is of round {state.round}, past {ROUNDS_KEY} {rounds}: resume it with "
            f"--{ROUNDS_KEY} {state.round} or more"
        )
    return [
        f"{k} changed from {state.settings.get(k)} to {getattr(settings, k)}: the results from here on are not "
        "bit-identical to an uninterrupted run (other thread counts or cohorts sum in another order)"
        for k in ROUNDING_SETTINGS
        if k in state.settings and state.settings[k] != getattr(settings, k)
    ]


def _value(state: ServerState, key: str):
    return state.settings[key] if key in RESUME_FIXED_SETTINGS else state.run_config.get(key)


def _current(run_config: dict, settings, key: str):
    return getattr(settings, key) if key in RESUME_FIXED_SETTINGS else run_config.get(key)
