"""Flower apps as fedsweep finds them: a folder with a pyproject.toml, as `flwr run` takes it.

The folder's `[tool.flwr.app.components]` name the ServerApp and ClientApp,
`[tool.flwr.app.config]` holds the run config's defaults, and overrides are
written as `flwr run --run-config` takes them (`"lr=0.1 local-epochs=2"`).
Reading and validating use Flower's own functions. An optional `[tool.fedsweep]`
table adds what only fedsweep uses:

    [tool.fedsweep]
    check-run-config = "mypkg.task:check_run_config"   # fn(run_config, num_partitions); raises ValueError on bad input
    resume-may-change = ["num-server-rounds"]          # run-config keys a resumed run may change (this is the default)
    partitioner = "mypkg.task:partitioner"             # fn(run_config, num_partitions) -> the flwr_datasets
                                                       # Partitioner (dataset assigned) giving the clients' partitions
    partition-by = "label"                             # its label column (this is the default)

The built-in CIFAR-10 job is such a folder: `apps/cifar10`.
"""

from __future__ import annotations

import difflib
import importlib.util
import logging
import os
import re
import sys
from dataclasses import dataclass

from flwr.common.config import flatten_dict, get_project_config, parse_config_args
from flwr.supercore.object_ref import load_app

from fl_core.logs import one_line
from fl_core.settings import ConfigError

BUILTIN_APP_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "apps", "cifar10")
ROUNDS_KEY = "num-server-rounds"  # Flower's template key for the number of rounds (fedsweep reads it when present)
DEFAULT_RESUME_MAY_CHANGE = (ROUNDS_KEY,)
DEFAULT_PARTITION_BY = "label"


@dataclass(frozen=True)
class FlowerApp:
    """A Flower app folder: where it is, its components and its run-config defaults."""

    directory: str  # absolute path of the folder holding pyproject.toml
    name: str  # [project].name
    server_app: str  # "module:attribute" of the ServerApp
    client_app: str  # "module:attribute" of the ClientApp
    defaults: dict  # flat run config from [tool.flwr.app.config]
    check_run_config: str | None = None  # "module:function", from [tool.fedsweep]
    resume_may_change: tuple[str, ...] = DEFAULT_RESUME_MAY_CHANGE
    partitioner: str | None = None  # "module:function", from [tool.fedsweep]
    partition_by: str = DEFAULT_PARTITION_BY

    def load(self, component: str):
        """The app's ServerApp (`component="server"`) or ClientApp ("client"), imported from its folder."""
        reference = self.server_app if component == "server" else self.client_app
        try:
            return load_app(reference, ConfigError, self.directory)
        except ImportError as exc:
            raise ConfigError(f"cannot import the {component} app {reference} of {self.directory}: {exc}") from None

    def find_components(self) -> None:
        """ConfigError unless the modules of the ServerApp, the ClientApp and the partitioner hook can be found
        (without importing them: importing an app pulls in torch, seconds that `python -m fl_core` spends beside
        Ray's start instead)."""
        if self.directory not in sys.path:
            sys.path.insert(0, self.directory)  # as Flower's load_app does
        found_here = [("server app", self.server_app), ("client app", self.client_app)]
        if self.partitioner is not None:
            found_here.append(("[tool.fedsweep] partitioner", self.partitioner))
        for component, reference in found_here:
            module = reference.partition(":")[0]
            try:
                found = importlib.util.find_spec(module) is not None
            except (ImportError, ValueError):  # a parent package that is missing or fails to import
                found = False
            if not found:
                raise ConfigError(f"cannot find the {component}'s module {module} ({reference}) in {self.directory}")

    def _hook(self, reference: str, key: str):
        """The function a `[tool.fedsweep]` key names, imported from the app's folder; ConfigError if it cannot be."""
        try:
            return load_app(reference, ConfigError, self.directory)
        except (ImportError, ConfigError) as exc:  # Flower's ConfigError goes on with a paragraph on the form
            reason = str(exc).strip().splitlines()[0]
            raise ConfigError(
                f"cannot import [tool.fedsweep] {key} {reference} of {self.directory}: {reason}"
            ) from None

    def check(self, run_config: dict, num_partitions: int) -> None:
        """Run the app's own run-config check, if it declares one; ConfigError with its message."""
        if self.check_run_config is None:
            return
        check = self._hook(self.check_run_config, "check-run-config")
        flower_log = logging.getLogger("flwr")
        level = flower_log.level
        flower_log.setLevel(logging.ERROR)  # a check may build a strategy: its start-up warnings come later anyway
        try:
            check(dict(run_config), num_partitions)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        finally:
            flower_log.setLevel(level)

    def partitions(self, run_config: dict, num_partitions: int):
        """The app's partitioner hook called for this run: a flwr_datasets Partitioner with its dataset assigned,
        `num_partitions` partitions and the label column `partition_by`; ConfigError naming the hook otherwise."""
        from flwr_datasets.partitioner import Partitioner  # imports Hugging Face datasets: only for a hook

        where = f"[tool.fedsweep] partitioner {self.partitioner}"
        hook = self._hook(self.partitioner, "partitioner")
        try:
            result = hook(dict(run_config), num_partitions)
        except Exception as exc:  # whatever the app's code raises, the user needs the hook's name with it
            raise ConfigError(f"{where} failed: {type(exc).__name__}: {exc}") from None
        if not isinstance(result, Partitioner):
            raise ConfigError(f"{where} returned {type(result).__name__}, not a flwr_datasets Partitioner")
        if not result.is_dataset_assigned():
            raise ConfigError(f"{where} returned a partitioner without its dataset (assign partitioner.dataset)")
        if result.num_partitions != num_partitions:
            raise ConfigError(f"{where} made {result.num_partitions} partitions for a run of {num_partitions} nodes")
        if self.partition_by not in result.dataset.column_names:
            raise ConfigError(
                f"{where}: its dataset has no column {self.partition_by!r} (columns: "
                f"{', '.join(result.dataset.column_names)}); name the label column with "
                "[tool.fedsweep] partition-by"
            )
        return result


def load_app_folder(directory: str | None) -> FlowerApp:
    """The app in `directory` (None: the built-in CIFAR-10 app); ConfigError when it is not a valid Flower app."""
    folder = os.path.abspath(directory or BUILTIN_APP_DIR)
    if not os.path.isdir(folder):
        raise ConfigError(f"--app {directory} is not a folder: give the folder that holds the app's pyproject.toml")
    try:
        project = get_project_config(folder)
    except FileNotFoundError:
        raise ConfigError(f"--app {directory or folder} has no pyproject.toml: it is not a Flower app folder") from None
    except ValueError as exc:  # Flower's validation (one line per problem), or a TOML syntax error
        text = one_line(exc)
        if not text.startswith("Invalid pyproject.toml"):
            text = f"cannot read pyproject.toml ({text})"
        raise ConfigError(f"--app {directory or folder}: {text}") from None
    flwr_app = project["tool"]["flwr"]["app"]
    ours = project.get("tool", {}).get("fedsweep", {})
    may_change = ours.get("resume-may-change", list(DEFAULT_RESUME_MAY_CHANGE))
    if not isinstance(may_change, list) or not all(isinstance(k, str) for k in may_change):
        raise ConfigError(f"--app {folder}: [tool.fedsweep] resume-may-change must be a list of run-config keys")
    hook = ours.get("partitioner")
    if hook is not None and not (isinstance(hook, str) and all(hook.partition(":")[::2])):
        raise ConfigError(f'--app {folder}: [tool.fedsweep] partitioner must be "module:function", got {hook!r}')
    partition_by = ours.get("partition-by", DEFAULT_PARTITION_BY)
    if not isinstance(partition_by, str) or not partition_by:
        raise ConfigError(
            f"--app {folder}: [tool.fedsweep] partition-by must name the label column, got {partition_by!r}"
        )
    return FlowerApp(
        directory=folder,
        name=str(project["project"]["name"]),
        server_app=flwr_app["components"]["serverapp"],
        client_app=flwr_app["components"]["clientapp"],
        defaults=flatten_dict(flwr_app.get("config", {})),
        check_run_config=ours.get("check-run-config"),
        resume_may_change=tuple(may_change),
        partitioner=hook,
        partition_by=partition_by,
    )


_PAIR = re.compile(r"(\S+?)=(\'[^\']*\'|\"[^\"]*\"|\S+)")  # a KEY=VALUE of flwr.common.config.parse_config_args


def parse_run_config(texts: list[str]) -> dict:
    """Overrides written as `flwr run --run-config` takes them (`"k=v k2=v2"`, or one .toml file), flattened."""
    for text in texts:  # Flower's parser skips what is not KEY=VALUE: refuse it instead
        rest = [] if text.endswith(".toml") else _PAIR.sub(" ", text).split()
        if rest:
            raise ConfigError(
                f"--run-config {text!r}: {rest[0]!r} is not KEY=VALUE; write overrides as "
                "'key1=123 key2=0.5 key3=\"text\"'"
            )
    try:
        return parse_config_args(list(texts))
    except Exception as exc:  # click's exception for bad TOML values, OSError for a missing .toml file
        message = getattr(exc, "message", None) or str(exc)
        raise ConfigError(f"--run-config {' '.join(texts)!r}: {' '.join(message.split())}") from None


def config_key(app: FlowerApp, key: str, where: str) -> str:
    """The app's run-config key for `key` as a user typed it (`_` for `-` accepted); ConfigError if it has none."""
    if key in app.defaults:
        return key
    dashed = key.replace("_", "-")
    if dashed in app.defaults:
        return dashed
    close = difflib.get_close_matches(dashed, app.defaults, n=1)
    hint = f" (did you mean {close[0]}?)" if close else f"; its keys: {', '.join(app.defaults)}"
    raise ConfigError(f"{where}: {key!r} is not a run-config key of app {app.name}{hint}")


def coerce(key: str, value, default, what: str = "run-config key"):
    """`value` (a string from a command line, or a parsed TOML/YAML scalar) as the type of `default`.

    `what` names the kind of key in the error message ("run-config key", "setting").
    """
    kind = type(default)
    try:
        if isinstance(value, str) and kind is not str:
            text = value.strip()
            if kind is bool:
                if text.lower() not in ("true", "false"):
                    raise ValueError
                return text.lower() == "true"
            number = float(text)
            if kind is int:
                if not number.is_integer():
                    raise ValueError
                return int(number)
            return number
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if kind is int and isinstance(value, float) and value.is_integer():
            return int(value)
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise ValueError
        return value.strip() if kind is str else value
    except (TypeError, ValueError):
        expected = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
            kind, kind.__name__
        )
        raise ConfigError(f"{what} {key} expects {expected}, got {value!r}") from None


def bind_seed(app: FlowerApp, run_config: dict, seed: int) -> dict:
    """The run config with the app's run-config key `seed` (if it has one) set to the engine's seed: one per run."""
    return {**run_config, "seed": seed} if "seed" in app.defaults else dict(run_config)


def fuse_run_config(app: FlowerApp, overrides: dict, where: str = "--run-config") -> dict:
    """The app's defaults with `overrides` applied; unknown keys and values of another type are refused."""
    fused = dict(app.defaults)
    for key, value in overrides.items():
        name = config_key(app, key, where)
        fused[name] = coerce(name, value, app.defaults[name])
    return fused
