"""Bad input, all of it in one table: `python -m fl_core`, `tune_search.py` and checkpoints.

The rule each case is held to: exit status 2, exactly one line on stderr saying
what is wrong (with the command's `error:` prefix), nothing written or
overwritten (every file and folder under the test's folder, prepared ones
included, is byte-identical afterwards) and Ray never started. Each case runs in
its own empty folder, which is also the working directory, so relative paths in
its command line (`--checkpoint-dir out`, `--config sweep.yaml`) and the
commands' default output folders all land where the snapshot sees them.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # tune_search is a top-level module of the repository

import fl_sweep.validate  # noqa: E402
import tune_search  # noqa: E402
from fl_core import cli  # noqa: E402
from fl_core.checkpoint import CHECKPOINT_FILE, save_checkpoint  # noqa: E402
from tests.conftest import SMALL, checkpoint_state  # noqa: E402

EXAMPLE_WITHOUT_ROUNDS = os.path.join(REPO, "tests", "apps", "no_rounds")
QUICKSTART = os.path.join(REPO, "examples", "quickstart-pytorch")
PREFIX = {"fl_core": "fl_core: error: ", "tune_search": "tune_search: error: "}


@dataclass
class Case:
    """One bad input: the command, how its folder is prepared, its argv and a fragment of the expected line."""

    id: str
    command: str  # "fl_core" (fl_core.cli.main) or "tune_search" (tune_search.main)
    argv: list[str]  # run in the case's folder: relative paths are in it
    message: str
    prepare: list[Callable] = field(default_factory=list)  # each called with (folder, monkeypatch)


def fl(*args: str) -> list[str]:
    """A small synthetic run of the built-in app with `args`, writing into ./out."""
    return [*SMALL, *args, "--checkpoint-dir", "out"]


def sweep(*args: str) -> list[str]:
    """A sweep with `args`, stored under ./out."""
    return ["--storage-path", "out", *args]


# ---------------------------------------------------------------------------
# Ways to prepare a case's folder


def files(**contents: str | bytes) -> Callable:
    """Write files (name: text or bytes; `__` in a name stands for `/`)."""

    def write(folder: Path, monkeypatch) -> None:
        for name, content in contents.items():
            path = folder / name.replace("__", "/")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content if isinstance(content, bytes) else content.encode())

    return write


def folders(*names: str) -> Callable:
    """Make (nested) folders."""

    def make(folder: Path, monkeypatch) -> None:
        for name in names:
            (folder / name).mkdir(parents=True, exist_ok=True)

    return make


APP_HEAD = '[project]\nname = "badapp"\nversion = "1"\n'
APP_FLWR = '[tool.flwr.app]\npublisher = "p"\n'
APP_COMPONENTS = '[tool.flwr.app.components]\nserverapp = "{pkg}.server:app"\nclientapp = "{pkg}.client:app"\n'


def app(pyproject: str | None, package: str | None = None) -> Callable:
    """An app folder ./app with `pyproject` (None: none), and a package `package` with empty server/client/task
    modules (found, never imported: only a check hook would be)."""

    def make(folder: Path, monkeypatch) -> None:
        (folder / "app").mkdir()
        if pyproject is not None:
            (folder / "app" / "pyproject.toml").write_text(pyproject.replace("{pkg}", package or "nowhere"))
        if package is not None:
            (folder / "app" / package).mkdir()
            for module in ("__init__", "server", "client", "task"):
                (folder / "app" / package / f"{module}.py").write_text("")

    return make


def checkpoint(corrupt: Callable[[str], None] | None = None, **state) -> Callable:
    """A checkpoint of a finished 2-round run of the built-in app (tiny synthetic run, 4 nodes) in ./run, with
    ServerState fields replaced by `state` and then `corrupt(path)` applied to the file."""

    def make(folder: Path, monkeypatch) -> None:
        saved = checkpoint_state()
        for key, value in state.items():
            setattr(saved, key, value)
        path = save_checkpoint(saved, str(folder / "run"))
        if corrupt is not None:
            corrupt(path)

    return make


def _entries(path: str) -> dict:
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def _write_npz(path: str, entries: dict) -> None:
    with open(path, "wb") as f:
        np.savez(f, **entries)


def meta_edit(edit: Callable[[dict], None]) -> Callable[[str], None]:
    """Rewrite the checkpoint's JSON document with `edit(meta)` applied: valid JSON, wrong content."""

    def corrupt(path: str) -> None:
        entries = _entries(path)
        meta = json.loads(bytes(entries["meta"]).decode())
        edit(meta)
        entries["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        _write_npz(path, entries)

    return corrupt


def meta_bytes(raw: bytes) -> Callable[[str], None]:
    """Replace the checkpoint's JSON document by `raw`."""

    def corrupt(path: str) -> None:
        entries = _entries(path)
        entries["meta"] = np.frombuffer(raw, dtype=np.uint8)
        _write_npz(path, entries)

    return corrupt


def cut(keep: Callable[[bytes], bytes]) -> Callable[[str], None]:
    """Replace the checkpoint file's bytes by `keep(bytes)`."""

    def corrupt(path: str) -> None:
        with open(path, "rb") as f:
            data = f.read()
        with open(path, "wb") as f:
            f.write(keep(data))

    return corrupt


class Payload:
    """Unpickling this creates the file `marker`: proof that a checkpoint's pickle was executed."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def pickled(entry: str) -> Callable[[str], None]:
    """Replace the checkpoint's entry `entry` by a pickled object array whose loading would create ./PWNED."""

    def corrupt(path: str) -> None:
        entries = _entries(path)
        marker = os.path.join(os.path.dirname(os.path.dirname(path)), "PWNED")
        entries[entry] = np.array([Payload(marker)], dtype=object)
        _write_npz(path, entries)

    return corrupt


def drop_entry(entry: str) -> Callable[[str], None]:
    def corrupt(path: str) -> None:
        entries = _entries(path)
        del entries[entry]
        _write_npz(path, entries)

    return corrupt


def plain_npy(path: str) -> None:
    with open(path, "wb") as f:
        np.save(f, np.zeros(3))


def sweep_marker(edit: Callable[[dict], None] | None = None, raw: str | None = None) -> Callable:
    """./out/fedsweep/fedsweep_sweep.json of a sweep that never ran (no Tune state), `edit`ed, or `raw` text."""

    def make(folder: Path, monkeypatch) -> None:
        from fl_sweep.cli import build_parser, build_spec
        from fl_sweep.storage import MARKER_FILE, write_marker

        experiment = folder / "out" / "fedsweep"
        write_marker(str(experiment), build_spec(build_parser().parse_args(["--set", "dataset=synthetic"]), 2, 0))
        if raw is not None:
            (experiment / MARKER_FILE).write_text(raw)
        elif edit is not None:
            marker = json.loads((experiment / MARKER_FILE).read_text())
            edit(marker)
            (experiment / MARKER_FILE).write_text(json.dumps(marker))

    return make


def no_optuna(folder: Path, monkeypatch) -> None:
    monkeypatch.setattr(fl_sweep.validate, "optuna_available", lambda: False)


def in_ray_job_copy(folder: Path, monkeypatch) -> None:
    """Work in what looks like a Ray Job's temporary copy of its working directory."""
    copy = folder / "session_x" / "runtime_resources" / "working_dir_files" / "_ray_pkg_abc"
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)


def _rm(key: str) -> Callable[[dict], None]:
    return lambda m: m.pop(key)


def _set(**values) -> Callable[[dict], None]:
    return lambda m: m.update(values)


def _settings(**values) -> Callable[[dict], None]:
    return lambda m: m["settings"].update(values)


def _run_config(**values) -> Callable[[dict], None]:
    return lambda m: m["run_config"].update(values)


# ---------------------------------------------------------------------------
# The table

FL = "fl_core"
TS = "tune_search"
RUN = ["--resume", "run"]  # the prepared checkpoint

CASES = [
    # --- python -m fl_core: engine settings and run-config flags
    Case("fl-fraction-train-0", FL, fl("--fraction-train", "0"), "fraction-train must be in (0, 1]"),
    Case("fl-fraction-train-1.5", FL, fl("--fraction-train", "1.5"), "fraction-train must be in (0, 1]"),
    Case("fl-min-train-nodes-above-pool", FL, fl("--min-train-nodes", "9"), "smaller than min-train-nodes 9"),
    Case("fl-alpha-0", FL, fl("--alpha", "0", "--partition", "dirichlet"), "alpha must be a positive number"),
    Case("fl-val-ratio-1", FL, fl("--val-ratio", "1"), "val-ratio must be in [0, 1)"),
    Case("fl-val-ratio-negative", FL, fl("--val-ratio", "-0.1"), "val-ratio must be in [0, 1)"),
    Case("fl-rounds-0", FL, fl("--num-server-rounds", "0"), "num-server-rounds must be at least 1"),
    Case("fl-client-cpus-too-many", FL, fl("--num-client-cpus", "4096"), "more than this machine's"),
    Case("fl-client-gpus-too-many", FL, fl("--num-client-gpus", "4096"), "asks for more GPUs than this machine's"),
    Case(
        "fl-client-gpus-1.5",
        FL,
        fl("--num-client-gpus", "1.5"),
        "--num-client-gpus 1.5: Ray hands out a share of one GPU",
    ),
    Case("fl-server-gpus-2.5", FL, fl("--server-gpus", "2.5"), "--server-gpus 2.5: Ray hands out a share of one GPU"),
    Case(
        "fl-mlflow-unreachable",
        FL,
        fl("--mlflow", "http://127.0.0.1:9"),
        "--mlflow http://127.0.0.1:9: the MLflow tracking store http://127.0.0.1:9 cannot be used",
    ),
    Case("fl-wandb-empty-project", FL, fl("--wandb", " "), "--wandb needs a W&B project name, got an empty one"),
    Case("fl-pool-size-0", FL, fl("--pool-size", "0"), "--pool-size must be at least 1"),
    Case("fl-pool-size-not-int", FL, fl("--pool-size", "four"), "argument --pool-size: invalid int value: 'four'"),
    Case("fl-server-cpus-0", FL, fl("--server-cpus", "0"), "--server-cpus must be at least 1"),
    Case(
        "fl-max-parallel-clients-0", FL, fl("--max-parallel-clients", "0"), "--max-parallel-clients must be at least 1"
    ),
    Case("fl-central-eval-every-0", FL, fl("--central-eval-every", "0"), "--central-eval-every must be at least 1"),
    Case(
        "fl-central-eval-on-unknown",
        FL,
        fl("--central-eval-on", "gpu"),
        "--central-eval-on must be one of auto, workers, server, got 'gpu'",
    ),
    Case("fl-strategy-unknown", FL, fl("--strategy", "fedmagic"), "strategy must be one of"),
    Case("fl-dp-unknown", FL, fl("--dp", "sometimes"), "dp must be one of"),
    Case("fl-dp-clipping-0", FL, fl("--dp", "server-fixed", "--dp-fixed.clipping-norm", "0"), "refused its parameters"),
    Case("fl-partition-unknown", FL, fl("--partition", "random"), "partition must be one of"),
    Case(
        "fl-data-dir-missing", FL, fl("--data-dir", "/nonexistent/cifar"), "data-dir /nonexistent/cifar does not exist"
    ),
    Case("fl-lr-not-number", FL, fl("--lr", "fast"), "run-config key lr expects a number"),
    Case("fl-local-epochs-not-int", FL, fl("--local-epochs", "1.5"), "run-config key local-epochs expects an integer"),
    Case("fl-seed-disagrees", FL, fl("--seed", "1", "--run-config", "seed=2"), "disagree"),
    Case("fl-engine-unknown", FL, fl("--engine", "tensorflow"), "invalid choice"),
    Case("fl-unknown-flag", FL, fl("--no-such-flag"), "unrecognized arguments: --no-such-flag"),
    Case("fl-checkpoint-every-0", FL, fl("--checkpoint-every", "0"), "--checkpoint-every must be at least 1"),
    Case("fl-renamed-fraction-fit", FL, fl("--fraction-fit", "0.2"), "--fraction-fit is now --fraction-train"),
    Case("fl-renamed-num-rounds", FL, fl("--num-rounds", "3"), "--num-rounds is now --num-server-rounds"),
    Case("fl-removed-model", FL, fl("--model", "cnn"), "--model was removed"),
    # --- python -m fl_core: --run-config
    Case("fl-run-config-lr-not-number", FL, fl("--run-config", "lr=fast"), "--run-config"),
    Case("fl-run-config-unknown-key", FL, fl("--run-config", "nosuchkey=1"), "'nosuchkey' is not a run-config key"),
    Case(
        "fl-run-config-epochs-float",
        FL,
        fl("--run-config", "local-epochs=1.5"),
        "run-config key local-epochs expects an integer",
    ),
    Case(
        "fl-run-config-dataset-number",
        FL,
        ["--run-config", "dataset=5", "--checkpoint-dir", "out"],
        "run-config key dataset expects a string",
    ),
    Case(
        "fl-run-config-augment-bool", FL, fl("--run-config", "augment=true"), "run-config key augment expects a string"
    ),
    Case("fl-run-config-no-equals", FL, fl("--run-config", "lr"), "--run-config 'lr': 'lr' is not KEY=VALUE"),
    Case("fl-run-config-no-key", FL, fl("--run-config", "=0.1"), "'=0.1' is not KEY=VALUE"),
    Case("fl-run-config-no-value", FL, fl("--run-config", "lr="), "'lr=' is not KEY=VALUE"),
    Case("fl-run-config-stray-word", FL, fl("--run-config", "lr=0.1 momentum"), "'momentum' is not KEY=VALUE"),
    Case("fl-run-config-bad-toml", FL, fl("--run-config", "lr=[0.1,"), "--run-config 'lr=[0.1,'"),
    Case("fl-run-config-missing-toml-file", FL, fl("--run-config", "overrides.toml"), "--run-config 'overrides.toml'"),
    # --- python -m fl_core: app folders
    Case("fl-app-missing", FL, fl("--app", "/nonexistent/app"), "is not a folder"),
    Case("fl-app-no-pyproject", FL, ["--app", "app", "--checkpoint-dir", "out"], "has no pyproject.toml", [app(None)]),
    Case(
        "fl-app-pyproject-not-toml",
        FL,
        ["--app", "app", "--checkpoint-dir", "out"],
        "cannot read pyproject.toml",
        [app("[project\nname=")],
    ),
    Case(
        "fl-app-no-flwr-section",
        FL,
        ["--app", "app", "--checkpoint-dir", "out"],
        "Missing [tool.flwr.app] section",
        [app(APP_HEAD)],
    ),
    Case(
        "fl-app-no-components",
        FL,
        ["--app", "app", "--checkpoint-dir", "out"],
        "components",
        [app(APP_HEAD + APP_FLWR)],
    ),
    Case(
        "fl-app-modules-missing",
        FL,
        ["--app", "app", "--checkpoint-dir", "out"],
        "cannot find the server app's module",
        [app(APP_HEAD + APP_FLWR + APP_COMPONENTS)],
    ),
    Case(
        "fl-app-resume-may-change-not-list",
        FL,
        ["--app", "app", "--checkpoint-dir", "out"],
        "resume-may-change must be a list",
        [app(APP_HEAD + APP_FLWR + APP_COMPONENTS + '[tool.fedsweep]\nresume-may-change = "lr"\n', "pkg_rmc")],
    ),
    Case(
        "fl-app-partitioner-not-reference",
        FL,
        ["--app", "app", "--checkpoint-dir", "out"],
        'partitioner must be "module:function"',
        [app(APP_HEAD + APP_FLWR + APP_COMPONENTS + '[tool.fedsweep]\npartitioner = "nocolon"\n', "pkg_part")],
    ),
    Case(
        "fl-app-partition-by-empty",
        FL,
        ["--app", "app", "--checkpoint-dir", "out"],
        "partition-by must name the label column",
        [app(APP_HEAD + APP_FLWR + APP_COMPONENTS + '[tool.fedsweep]\npartition-by = ""\n', "pkg_pby")],
    ),
    Case(
        "fl-app-check-hook-missing",
        FL,
        ["--app", "app", "--checkpoint-dir", "out"],
        "cannot import [tool.fedsweep] check-run-config pkg_hook.task:nothing",
        [
            app(
                APP_HEAD + APP_FLWR + APP_COMPONENTS + '[tool.fedsweep]\ncheck-run-config = "pkg_hook.task:nothing"\n',
                "pkg_hook",
            )
        ],
    ),
    Case(
        "fl-app-unknown-key-of-that-app",
        FL,
        ["--app", QUICKSTART, "--strategy", "fedavg", "--checkpoint-dir", "out"],
        "unrecognized arguments: --strategy fedavg (app quickstart-pytorch has no such run-config key",
    ),
    # --- python -m fl_core: output folder
    Case(
        "fl-checkpoint-dir-is-file",
        FL,
        [*SMALL, "--checkpoint-dir", "file.txt"],
        "is a file, not a folder",
        [files(**{"file.txt": "x"})],
    ),
    Case(
        "fl-checkpoint-dir-under-file",
        FL,
        [*SMALL, "--checkpoint-dir", "file.txt/run"],
        "--checkpoint-dir file.txt/run cannot be created:",
        [files(**{"file.txt": "x"})],
    ),
    Case(
        "fl-existing-run-not-overwritten",
        FL,
        [*SMALL, "--checkpoint-dir", "run"],
        "already holds a run",
        [checkpoint()],
    ),
    # --- python -m fl_core --resume: checkpoints
    Case("ckpt-resume-missing", FL, ["--resume", "nowhere"], "no checkpoint at nowhere"),
    Case(
        "ckpt-resume-empty-folder",
        FL,
        ["--resume", "empty"],
        f"no checkpoint at empty/{CHECKPOINT_FILE}",
        [folders("empty")],
    ),
    Case(
        "ckpt-resume-text-file",
        FL,
        ["--resume", "notes.txt"],
        "checkpoint notes.txt is corrupt or not a fedsweep checkpoint (not an .npz archive",
        [files(**{"notes.txt": "round 2 went well\n"})],
    ),
    Case(
        "ckpt-garbage",
        FL,
        RUN,
        "corrupt or not a fedsweep checkpoint (not an .npz archive",
        [files(**{f"run__{CHECKPOINT_FILE}": b"garbage"})],
    ),
    Case(
        "ckpt-zero-bytes",
        FL,
        RUN,
        "corrupt or not a fedsweep checkpoint (not an .npz archive",
        [files(**{f"run__{CHECKPOINT_FILE}": b""})],
    ),
    Case(
        "ckpt-truncated-half",
        FL,
        RUN,
        "corrupt or not a fedsweep checkpoint (not an .npz archive",
        [checkpoint(cut(lambda data: data[: len(data) // 2]))],
    ),
    Case(
        "ckpt-truncated-tail",
        FL,
        RUN,
        "corrupt or not a fedsweep checkpoint (not an .npz archive",
        [checkpoint(cut(lambda data: data[:-10]))],
    ),
    Case(
        "ckpt-plain-npy", FL, RUN, "corrupt or not a fedsweep checkpoint (not an .npz archive", [checkpoint(plain_npy)]
    ),
    Case(
        "ckpt-no-meta",
        FL,
        RUN,
        "corrupt or not a fedsweep checkpoint ('meta is not a file in the archive')",
        [checkpoint(drop_entry("meta"))],
    ),
    Case(
        "ckpt-model-array-missing", FL, RUN, "corrupt or not a fedsweep checkpoint", [checkpoint(drop_entry("a000000"))]
    ),
    Case("ckpt-meta-not-json", FL, RUN, "corrupt or not a fedsweep checkpoint", [checkpoint(meta_bytes(b"{round: 2"))]),
    Case(
        "ckpt-meta-not-utf8", FL, RUN, "corrupt or not a fedsweep checkpoint", [checkpoint(meta_bytes(b"\xff\xfe{}"))]
    ),
    Case("ckpt-meta-json-list", FL, RUN, "not a fedsweep checkpoint", [checkpoint(meta_bytes(b"[1, 2]"))]),
    Case("ckpt-meta-other-format", FL, RUN, "not a fedsweep checkpoint", [checkpoint(meta_edit(_set(format="other")))]),
    Case(
        "ckpt-meta-old-version",
        FL,
        RUN,
        "format version 1 (this fedsweep reads 2)",
        [checkpoint(meta_edit(_set(version=1)))],
    ),
    Case(
        "ckpt-meta-no-round",
        FL,
        RUN,
        "corrupt or not a fedsweep checkpoint (field 'round' is missing)",
        [checkpoint(meta_edit(_rm("round")))],
    ),
    Case("ckpt-meta-no-history", FL, RUN, "(field 'history' is missing)", [checkpoint(meta_edit(_rm("history")))]),
    Case("ckpt-meta-no-settings", FL, RUN, "(field 'settings' is missing)", [checkpoint(meta_edit(_rm("settings")))]),
    Case(
        "ckpt-meta-round-string",
        FL,
        RUN,
        "field 'round' is a str, not an int",
        [checkpoint(meta_edit(_set(round="three")))],
    ),
    Case(
        "ckpt-meta-round-negative",
        FL,
        RUN,
        "corrupt or not a fedsweep checkpoint (round -1)",
        [checkpoint(meta_edit(_set(round=-1)))],
    ),
    Case(
        "ckpt-meta-history-not-list",
        FL,
        RUN,
        "field 'history' is a dict, not a list",
        [checkpoint(meta_edit(_set(history={"round": 1})))],
    ),
    Case(
        "ckpt-meta-arrays-wrong-tag",
        FL,
        RUN,
        "corrupt or not a fedsweep checkpoint",
        [checkpoint(meta_edit(_set(arrays={"ndarray": "a000000"})))],
    ),
    Case(
        "ckpt-meta-unknown-tag",
        FL,
        RUN,
        "unknown entry type 'Pickle'",
        [checkpoint(meta_edit(_set(strategy_state={"Pickle": []})))],
    ),
    Case(
        "ckpt-meta-run-config-not-object",
        FL,
        RUN,
        "field 'run_config' is a NoneType, not a dict",
        [checkpoint(meta_edit(_set(run_config=None)))],
    ),
    Case(
        "ckpt-meta-settings-unknown-key",
        FL,
        RUN,
        "(unknown engine setting 'num_rounds')",
        [checkpoint(meta_edit(_settings(num_rounds=3)))],
    ),
    Case(
        "ckpt-meta-settings-wrong-type",
        FL,
        RUN,
        "(engine setting 'pool_size' is 'four', not an int)",
        [checkpoint(meta_edit(_settings(pool_size="four")))],
    ),
    Case(
        "ckpt-meta-settings-none",
        FL,
        RUN,
        "(engine setting 'seed' is None, not an int)",
        [checkpoint(meta_edit(_settings(seed=None)))],
    ),
    Case(
        "ckpt-run-config-wrong-type",
        FL,
        RUN,
        "the checkpoint does not fit app fedsweep-cifar10: run-config key lr expects a number, got 'fast'",
        [checkpoint(meta_edit(_run_config(lr="fast")))],
    ),
    Case(
        "ckpt-run-config-unknown-key",
        FL,
        RUN,
        "its run config: 'learning-rate' is not a run-config key",
        [checkpoint(meta_edit(_run_config(**{"learning-rate": 0.1})))],
    ),
    Case(
        "ckpt-pickled-meta",
        FL,
        RUN,
        "(Object arrays cannot be loaded when allow_pickle=False)",
        [checkpoint(pickled("meta"))],
    ),
    Case(
        "ckpt-pickled-model-array",
        FL,
        RUN,
        "(Object arrays cannot be loaded when allow_pickle=False)",
        [checkpoint(pickled("a000000"))],
    ),
    Case(
        "ckpt-app-folder-gone",
        FL,
        RUN,
        "the checkpoint's app folder /nonexistent/app is gone: give the app's folder with --app",
        [checkpoint(app_dir="/nonexistent/app")],
    ),
    Case(
        "ckpt-another-app-name",
        FL,
        RUN,
        "the checkpoint is of app 'someone-elses-app'",
        [checkpoint(app="someone-elses-app")],
    ),
    Case(
        "ckpt-resumed-with-another-app",
        FL,
        [*RUN, "--app", QUICKSTART],
        "the checkpoint is of app 'fedsweep-cifar10', not 'quickstart-pytorch'",
        [checkpoint()],
    ),
    Case("ckpt-other-pool-size", FL, [*RUN, "--pool-size", "8"], "other settings (pool_size", [checkpoint()]),
    Case("ckpt-other-lr", FL, [*RUN, "--lr", "0.5"], "other settings (lr", [checkpoint()]),
    Case(
        "ckpt-round-beyond-rounds",
        FL,
        [*RUN, "--num-server-rounds", "1"],
        "the checkpoint is of round 2, past num-server-rounds 1: resume it with --num-server-rounds 2 or more",
        [checkpoint()],
    ),
    Case(
        "ckpt-resume-with-flower-engine",
        FL,
        [*RUN, "--engine", "flower"],
        "--engine flower cannot --resume",
        [checkpoint()],
    ),
    # --- tune_search: flags
    Case(
        "ts-unknown-parameter", TS, sweep("--grid", "learning_rate=0.01,0.1"), "'learning_rate' is not a run-config key"
    ),
    Case("ts-unknown-parameter-in-set", TS, sweep("--set", "rounds=3"), "'rounds' is not a run-config key"),
    Case(
        "ts-central-eval-every-0",
        TS,
        sweep("--set", "dataset=synthetic", "--set", "central_eval_every=0"),
        "--central-eval-every must be at least 1",
    ),
    Case("ts-renamed-parameter", TS, sweep("--set", "num_rounds=3"), "num-rounds is now num-server-rounds"),
    Case("ts-empty-grid", TS, sweep("--grid", "local_epochs="), "the grid for local-epochs is empty"),
    Case("ts-grid-no-equals", TS, sweep("--grid", "lr"), "--grid expects KEY=VALUE, got 'lr'"),
    Case("ts-grid-empty-key", TS, sweep("--grid", "=0.1,0.2"), "--grid expects KEY=VALUE, got '=0.1,0.2'"),
    Case(
        "ts-grid-bad-value",
        TS,
        sweep("--set", "dataset=synthetic", "--grid", "fraction-train=0.5,1.5"),
        "fraction-train must be in (0, 1]",
    ),
    Case("ts-choice-wrong-type", TS, sweep("--choice", "local-epochs=1,two"), "local-epochs expects an integer"),
    Case("ts-swept-twice", TS, sweep("--grid", "lr=0.1,0.2", "--choice", "lr=0.3,0.4"), "lr is swept twice"),
    Case("ts-uniform-on-text", TS, sweep("--uniform", "strategy=a,b"), "strategy is not numeric"),
    Case("ts-uniform-low-above-high", TS, sweep("--uniform", "lr=0.1,0.01"), "needs LO < HI, got 0.1, 0.01"),
    Case("ts-uniform-low-equals-high", TS, sweep("--uniform", "momentum=0.5,0.5"), "needs LO < HI"),
    Case("ts-uniform-not-numbers", TS, sweep("--uniform", "lr=low,high"), "run-config key lr expects a number"),
    Case("ts-uniform-one-bound", TS, sweep("--uniform", "lr=0.1"), "needs exactly two bounds LO,HI"),
    Case("ts-loguniform-zero", TS, sweep("--loguniform", "lr=0,0.1"), "loguniform for lr needs positive bounds"),
    Case("ts-loguniform-reversed", TS, sweep("--loguniform", "lr=1e-1,1e-3"), "needs LO < HI"),
    Case("ts-set-no-equals", TS, sweep("--set", "dataset"), "--set expects KEY=VALUE, got 'dataset'"),
    Case(
        "ts-set-wrong-type",
        TS,
        sweep("--set", "dataset=synthetic", "--set", "local_epochs=two"),
        "run-config key local-epochs expects an integer",
    ),
    Case(
        "ts-set-setting-wrong-type",
        TS,
        sweep("--set", "pool_size=many"),
        "setting pool_size expects an integer, got 'many'",
    ),
    Case(
        "ts-set-pool-size-0",
        TS,
        sweep("--set", "dataset=synthetic", "--set", "pool_size=0"),
        "--pool-size must be at least 1",
    ),
    Case("ts-fixed-and-swept", TS, sweep("--set", "lr=0.1", "--grid", "lr=0.1,0.2"), "lr both fixed and swept"),
    Case(
        "ts-num-samples-0",
        TS,
        sweep("--set", "dataset=synthetic", "--num-samples", "0"),
        "--num-samples must be at least 1, got 0",
    ),
    Case("ts-num-samples-not-int", TS, sweep("--num-samples", "many"), "argument --num-samples: invalid int value"),
    Case(
        "ts-max-failures-negative",
        TS,
        sweep("--set", "dataset=synthetic", "--max-failures", "-2"),
        "--max-failures must be >= 0 (or -1 for unlimited), got -2",
    ),
    Case(
        "ts-keep-checkpoints-0",
        TS,
        sweep("--set", "dataset=synthetic", "--keep-checkpoints", "0"),
        "--keep-checkpoints must be at least 1",
    ),
    Case(
        "ts-checkpoint-every-0",
        TS,
        sweep("--set", "dataset=synthetic", "--checkpoint-every", "0"),
        "--checkpoint-every must be at least 1",
    ),
    Case(
        "ts-max-concurrent-trials-0",
        TS,
        sweep("--set", "dataset=synthetic", "--max-concurrent-trials", "0"),
        "--max-concurrent-trials must be at least 1",
    ),
    Case(
        "ts-bad-metric",
        TS,
        sweep("--set", "dataset=synthetic", "--metric", "accuracy"),
        "--metric must be a per-round metric",
    ),
    Case(
        "ts-clients-metric",
        TS,
        sweep("--set", "dataset=synthetic", "--metric", "clients_accuracy_mean"),
        "--metric must be a per-round metric",
    ),
    Case("ts-mode-unknown", TS, sweep("--mode", "sideways"), "argument --mode: invalid choice: 'sideways'"),
    Case("ts-search-unknown", TS, sweep("--search", "bayes"), "argument --search: invalid choice: 'bayes'"),
    Case(
        "ts-optuna-with-grid",
        TS,
        sweep("--search", "optuna", "--set", "dataset=synthetic"),
        "--search optuna cannot take grid values",
    ),
    Case(
        "ts-optuna-missing",
        TS,
        sweep("--search", "optuna", "--set", "dataset=synthetic", "--loguniform", "lr=1e-3,1e-1"),
        "needs the optuna package",
        [no_optuna],
    ),
    Case("ts-unknown-flag", TS, sweep("--rounds", "3"), "unrecognized arguments: --rounds 3"),
    Case(
        "ts-client-gpus-1.5",
        TS,
        sweep("--set", "dataset=synthetic", "--num-client-gpus", "1.5"),
        "--num-client-gpus 1.5: Ray hands out a share of one GPU",
    ),
    Case(
        "ts-mlflow-unreachable",
        TS,
        sweep("--set", "dataset=synthetic", "--mlflow", "http://127.0.0.1:9"),
        "--mlflow http://127.0.0.1:9: the MLflow tracking store http://127.0.0.1:9 cannot be used",
    ),
    Case(
        "ts-too-big-for-machine",
        TS,
        sweep("--set", "dataset=synthetic", "--server-cpus", "4096"),
        "one trial needs 4097 CPUs",
    ),
    # --- tune_search: app folders
    Case("ts-not-an-app", TS, sweep("--app", "."), "has no pyproject.toml"),
    Case("ts-app-missing", TS, sweep("--app", "/nonexistent/app"), "is not a folder"),
    Case("ts-app-no-flwr-section", TS, sweep("--app", "app"), "Missing [tool.flwr.app] section", [app(APP_HEAD)]),
    Case(
        "ts-app-pyproject-not-toml",
        TS,
        sweep("--app", "app"),
        "cannot read pyproject.toml",
        [app('[project]\nname = "x')],
    ),
    Case(
        "ts-asha-without-rounds-key",
        TS,
        sweep("--app", EXAMPLE_WITHOUT_ROUNDS, "--scheduler", "asha", "--grid", "lr=0.1,0.2"),
        "--scheduler asha stops trials on rounds",
    ),
    Case(
        "ts-app-without-default-grid-keys",
        TS,
        sweep("--app", EXAMPLE_WITHOUT_ROUNDS),
        "has none of the default grid's keys",
    ),
    # --- tune_search: --config files
    Case("ts-config-missing", TS, sweep("--config", "sweep.yaml"), "cannot read --config sweep.yaml"),
    Case("ts-config-is-folder", TS, sweep("--config", "sweeps"), "cannot read --config sweeps", [folders("sweeps")]),
    Case(
        "ts-config-bad-yaml",
        TS,
        sweep("--config", "sweep.yaml"),
        "cannot read --config sweep.yaml",
        [files(**{"sweep.yaml": "fixed:\n  lr: [0.1,\n"})],
    ),
    Case(
        "ts-config-bad-json",
        TS,
        sweep("--config", "sweep.json"),
        "cannot read --config sweep.json",
        [files(**{"sweep.json": '{"fixed": {"lr": 0.1,}}'})],
    ),
    Case(
        "ts-config-not-mapping",
        TS,
        sweep("--config", "sweep.yaml"),
        "must be a mapping with sections",
        [files(**{"sweep.yaml": "- lr\n- 0.1\n"})],
    ),
    Case(
        "ts-config-unknown-section",
        TS,
        sweep("--config", "sweep.yaml"),
        "must be a mapping with sections",
        [files(**{"sweep.yaml": "fixd:\n  lr: 0.1\n"})],
    ),
    Case(
        "ts-config-fixed-not-mapping",
        TS,
        sweep("--config", "sweep.yaml"),
        "--config sweep.yaml: fixed must be a mapping",
        [files(**{"sweep.yaml": "fixed:\n  - lr=0.1\n"})],
    ),
    Case(
        "ts-config-search-not-mapping",
        TS,
        sweep("--config", "sweep.yaml"),
        "search must be a mapping",
        [files(**{"sweep.yaml": "search: lr\n"})],
    ),
    Case(
        "ts-config-unknown-key",
        TS,
        sweep("--config", "sweep.yaml"),
        "'learning-rate' is not a run-config key",
        [files(**{"sweep.yaml": "fixed:\n  learning-rate: 0.1\n"})],
    ),
    Case(
        "ts-config-renamed-key",
        TS,
        sweep("--config", "sweep.yaml"),
        "num-rounds is now num-server-rounds",
        [files(**{"sweep.yaml": "fixed:\n  num-rounds: 3\n"})],
    ),
    Case(
        "ts-config-wrong-type",
        TS,
        sweep("--config", "sweep.yaml"),
        "run-config key local-epochs expects an integer",
        [files(**{"sweep.yaml": "fixed:\n  local-epochs: two\n"})],
    ),
    Case(
        "ts-config-list-value",
        TS,
        sweep("--config", "sweep.yaml"),
        "run-config key lr expects a number",
        [files(**{"sweep.yaml": "fixed:\n  lr: [0.1, 0.2]\n"})],
    ),
    Case(
        "ts-config-setting-wrong-type",
        TS,
        sweep("--config", "sweep.yaml"),
        "setting pool_size expects an integer, got 2.5",
        [files(**{"sweep.yaml": "fixed:\n  pool_size: 2.5\n"})],
    ),
    Case(
        "ts-config-search-scalar",
        TS,
        sweep("--config", "sweep.yaml"),
        "search.lr must look like",
        [files(**{"sweep.yaml": "search:\n  lr: 0.1\n"})],
    ),
    Case(
        "ts-config-search-unknown-kind",
        TS,
        sweep("--config", "sweep.yaml"),
        "unknown search kind 'normal'",
        [files(**{"sweep.yaml": "search:\n  lr: {normal: [0, 1]}\n"})],
    ),
    Case(
        "ts-config-search-bad-range",
        TS,
        sweep("--config", "sweep.yaml"),
        "needs LO < HI",
        [files(**{"sweep.yaml": "search:\n  lr: {uniform: [0.2, 0.1]}\n"})],
    ),
    Case(
        "ts-config-search-key-not-string",
        TS,
        sweep("--config", "sweep.yaml"),
        "search key 1 is not a name",
        [files(**{"sweep.yaml": "search:\n  1: [0.1, 0.2]\n"})],
    ),
    # --- tune_search: storage, names, resume
    Case(
        "ts-unwritable-storage",
        TS,
        ["--storage-path", "file.txt/sub", "--set", "dataset=synthetic"],
        "file.txt is a file, not a folder",
        [files(**{"file.txt": "not a folder"})],
    ),
    Case("ts-name-with-slash", TS, sweep("--name", "a/b"), "--name must be a plain folder name"),
    Case(
        "ts-existing-sweep-not-overwritten",
        TS,
        sweep("--set", "dataset=synthetic"),
        "already exists: continue that sweep with --resume",
        [sweep_marker()],
    ),
    Case(
        "ts-relative-storage-in-ray-job",
        TS,
        ["--set", "dataset=synthetic", "--storage-path", "results"],
        "give an absolute path or a URI",
        [in_ray_job_copy],
    ),
    Case(
        "ts-default-storage-in-ray-job",
        TS,
        ["--set", "dataset=synthetic"],
        "give an absolute path or a URI",
        [in_ray_job_copy],
    ),
    Case("ts-resume-of-nothing", TS, ["--resume", "--storage-path", "nothing"], "holds no sweep made by fedsweep-tune"),
    Case(
        "ts-resume-of-a-non-sweep",
        TS,
        ["--resume", "--storage-path", "empty"],
        "holds no sweep made by fedsweep-tune",
        [folders("empty/fedsweep")],
    ),
    Case(
        "ts-resume-with-sweep-flags",
        TS,
        ["--resume", "--storage-path", "out", "--grid", "lr=0.1,0.2", "--set", "seed=1"],
        "--resume continues the sweep as it was started; drop --set, --grid",
        [sweep_marker()],
    ),
    Case("ts-resume-never-saved", TS, ["--resume", "--storage-path", "out"], "never saved its state", [sweep_marker()]),
    Case(
        "ts-resume-marker-not-json",
        TS,
        ["--resume", "--storage-path", "out"],
        "is not a valid fedsweep-tune marker",
        [sweep_marker(raw="{not json")],
    ),
    Case(
        "ts-resume-marker-old-version",
        TS,
        ["--resume", "--storage-path", "out"],
        "has marker version 1",
        [sweep_marker(_set(version=1))],
    ),
    Case(
        "ts-resume-app-folder-gone",
        TS,
        ["--resume", "--storage-path", "out"],
        "the sweep's app folder /nonexistent/app is gone",
        [sweep_marker(lambda m: m["spec"].update(app_dir="/nonexistent/app"))],
    ),
    Case(
        "ts-resume-marker-bad-spec",
        TS,
        ["--resume", "--storage-path", "out"],
        "is not a valid fedsweep-tune marker",
        [sweep_marker(lambda m: m["spec"].update(rounds=3))],
    ),
    Case("ts-report-of-a-non-sweep", TS, ["report", "."], "holds no sweep made by fedsweep-tune"),
    Case("ts-report-without-path", TS, ["report"], "the following arguments are required: experiment"),
]


# ---------------------------------------------------------------------------
# The test


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every folder (None) and file (its bytes) under `folder`, by relative path."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


def test_table_is_wide_and_ids_are_unique():
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids)), [i for i in ids if ids.count(i) > 1]
    assert len(CASES) >= 30


def test_the_pickled_payload_would_run_if_unpickled(tmp_path, monkeypatch):
    """The ckpt-pickled-* cases prove something: loading their file with pickles allowed creates the marker file
    (which those cases, with nothing written, show fedsweep never does)."""
    checkpoint(pickled("meta"))(tmp_path, monkeypatch)
    with np.load(tmp_path / "run" / CHECKPOINT_FILE, allow_pickle=True) as npz:
        npz["meta"]
    assert (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input(case: Case, tmp_path, monkeypatch, capsys):
    """Exit 2, one `<command>: error:` line with the expected words, no file touched, Ray not started."""
    import ray

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # an app's check hook imported from the case's folder
    for prepare in case.prepare:
        prepare(tmp_path, monkeypatch)
    capsys.readouterr()
    before = snapshot(tmp_path)
    ray_before = ray.is_initialized()  # another test's session-wide Ray may be up already

    def forbidden(*args, **kwargs):
        raise AssertionError("ray.init was called for bad input")

    monkeypatch.setattr(ray, "init", forbidden)
    main = cli.main if case.command == FL else tune_search.main
    code = main(list(case.argv))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1, err
    assert err[0].startswith(PREFIX[case.command]) and case.message in err[0], err[0]
    after = snapshot(tmp_path)
    assert sorted(after) == sorted(before), "files or folders written"
    assert after == before, "files overwritten"
    assert ray.is_initialized() == ray_before
