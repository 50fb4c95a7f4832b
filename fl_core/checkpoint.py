"""Server checkpoints: one `.npz` file that loads without executing code.

The file holds the global weights, the strategy's arrays and a JSON document
(round, metrics history, config, format version) stored as a uint8 array, so
`np.load(..., allow_pickle=False)` reads everything. It is written to a temp
file in the same folder and renamed over the old one: a crash leaves either
the previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from dataclasses import dataclass, field

import numpy as np

from fl_core.config import ConfigError, SimConfig, incompatible_keys

CHECKPOINT_FILE = "fl_checkpoint.npz"
FORMAT = "fedsweep-fl-checkpoint"
VERSION = 1


class CheckpointError(ConfigError):
    """A checkpoint that cannot be read or does not fit the requested run."""


@dataclass
class ServerState:
    """Everything needed to continue a run after `round`."""

    round: int
    parameters: list[np.ndarray]
    strategy_state: dict[str, list[np.ndarray]]
    history: list[dict]
    config: dict
    extra: dict = field(default_factory=dict)


def checkpoint_path(path: str) -> str:
    """The checkpoint file for `path`, which names the file or the folder holding it."""
    return os.path.join(path, CHECKPOINT_FILE) if os.path.isdir(path) else path


def write_atomically(path: str, write) -> None:
    """Call `write(binary_file)` on a temp file beside `path`, sync it and rename it over `path`.

    Readers see the old file or the new one, never a partial one; on failure the temp file is removed.
    """
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".tmp-", suffix=".part")
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
    arrays = {f"param_{i:04d}": a for i, a in enumerate(state.parameters)}
    for name, values in state.strategy_state.items():
        arrays.update({f"strategy__{name}__{i:04d}": a for i, a in enumerate(values)})
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "round": state.round,
        "num_parameters": len(state.parameters),
        "strategy_state": {name: len(values) for name, values in state.strategy_state.items()},
        "history": state.history,
        "config": state.config,
        "extra": state.extra,
    }
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    target = os.path.join(directory, CHECKPOINT_FILE)
    write_atomically(target, lambda f: np.savez(f, **arrays))
    return target


def load_checkpoint(path: str) -> ServerState:
    """Read a checkpoint file (or the folder holding one); CheckpointError if it is not a valid one."""
    file = checkpoint_path(path)
    if not os.path.isfile(file):
        raise CheckpointError(f"no checkpoint at {file}: pass the file or the folder that holds {CHECKPOINT_FILE}")
    try:
        npz = np.load(file, allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise ValueError("a single array, not an .npz archive")
        with npz:
            meta = json.loads(bytes(npz["meta"]).decode())
            if meta.get("format") != FORMAT:
                raise ValueError("not a fedsweep checkpoint")
            if meta.get("version") != VERSION:
                raise ValueError(f"format version {meta.get('version')} (this fedsweep reads {VERSION})")
            parameters = [npz[f"param_{i:04d}"] for i in range(meta["num_parameters"])]
            strategy_state = {
                name: [npz[f"strategy__{name}__{i:04d}"] for i in range(n)] for name, n in meta["strategy_state"].items()
            }
    except CheckpointError:
        raise
    except (OSError, EOFError, ValueError, KeyError, TypeError, zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"checkpoint {file} is corrupt or not a fedsweep checkpoint ({exc})") from None
    return ServerState(meta["round"], parameters, strategy_state, meta["history"], meta["config"], meta.get("extra", {}))


def check_compatible(state: ServerState, config: SimConfig) -> None:
    """Refuse to resume `state` under a config that changes the data, model or training."""
    differing = incompatible_keys(state.config, config)
    if differing:
        detail = ", ".join(f"{k}: checkpoint {state.config.get(k)!r} vs now {getattr(config, k)!r}" for k in differing)
        raise CheckpointError(f"the checkpoint was made with other settings ({detail}); resume it with its own settings")
    if state.round > config.num_rounds:
        raise CheckpointError(
            f"the checkpoint is at round {state.round}, past --num-rounds {config.num_rounds}: raise --num-rounds"
        )
