"""Data every process of a run needs, loaded once per run (or per sweep) and shared through Ray's object store.

An app marks the function that loads its data set with `@shared`. The function
takes `(run_config, num_partitions)` and must depend on nothing else (files it
reads aside)::

    from fl_core import shared

    @shared
    def load_data(run_config, num_partitions):
        ...  # read the data set and split it into num_partitions parts
        return data

    data = load_data(context.run_config, context.node_config["num-partitions"])

Under fedsweep the driver calls it once before the run starts, puts the result
in Ray's object store, and every worker and the server read that one copy from
shared memory (numpy arrays are not copied). Anywhere else (Flower's own
simulation engine, a plain script) it runs once per process and is cached, so
the app needs no fedsweep to run.

While the driver calls it, fedsweep records which run-config keys it read: those
keys (with num_partitions) decide whether two runs can share a copy, so a sweep
over `lr` loads the data once while a sweep over `alpha` loads each distinct
split once.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

# Ray is imported where a value is put or fetched: an app's `import fl_core` for @shared must not need it.

ALL_KEYS = "*"  # recorded when the function read the whole run config (iterated it)

_REGISTRY: dict[str, "SharedFunction"] = {}
_APPS: set[str] = set()  # folders of the apps imported in this process (their loaders are all in _REGISTRY)
_INSTALLED: list["SharedValue"] = []  # this run's values, installed by the engine in this process


class MissingKey(KeyError):
    """A shared function read a run-config key this run does not have: it is another app's loader."""


class _ReadRecorder(Mapping):
    """A read-only view of a run config that notes which keys were read."""

    def __init__(self, config: Mapping) -> None:
        self._config = config
        self.read: set[str] = set()

    def __getitem__(self, key):
        self.read.add(key)
        if key not in self._config:
            raise MissingKey(key)
        return self._config[key]

    def __contains__(self, key) -> bool:
        self.read.add(key)
        return key in self._config

    def __iter__(self) -> Iterator:
        self.read.add(ALL_KEYS)
        return iter(self._config)

    def __len__(self) -> int:
        self.read.add(ALL_KEYS)
        return len(self._config)


def _canonical(value) -> str:
    """A stable text form of a run-config value (for comparing and cache keys)."""
    return json.dumps(value, sort_keys=True, default=str)


@dataclass
class SharedValue:
    """One computed value of a shared function and what it depended on."""

    function: str  # SharedFunction.name
    num_partitions: int
    inputs: dict  # run-config key -> value it read (every key when it read ALL_KEYS)
    value: object = None  # in the process that computed it or has fetched it
    ref: object = None  # its ObjectRef once published
    fetched: bool = field(default=False, repr=False)

    def answers(self, function: str, run_config: Mapping, num_partitions: int) -> bool:
        """Whether this is what calling `function` (a SharedFunction name) with these arguments would give."""
        return function == self.function and self.matches(run_config, num_partitions)

    def matches(self, run_config: Mapping, num_partitions: int) -> bool:
        """Whether calling the function with these arguments would give this value."""
        if num_partitions != self.num_partitions:
            return False
        return all(
            key in run_config and _canonical(run_config[key]) == _canonical(value) for key, value in self.inputs.items()
        )

    def get(self):
        """The value, fetched from the object store on first use in this process."""
        if not self.fetched:
            import ray

            self.value, self.fetched = ray.get(self.ref), True
        return self.value

    def for_transfer(self) -> "SharedValue":
        """A copy without the value itself, to send to other processes (they fetch it by ref)."""
        return SharedValue(self.function, self.num_partitions, self.inputs, None, self.ref, False)


class SharedFunction:
    """A data-loading function whose result is shared by every process of a run (see the module doc)."""

    def __init__(self, fn) -> None:
        self.fn = fn
        self.name = f"{fn.__module__}:{fn.__qualname__}"
        self.__doc__, self.__name__, self.__wrapped__ = fn.__doc__, fn.__name__, fn
        self._local: dict[str, object] = {}  # computed here without the engine

    def __call__(self, run_config: Mapping, num_partitions: int):
        """The published value for these arguments if there is one, else computed here once and cached."""
        for entry in _INSTALLED:
            if entry.answers(self.name, run_config, num_partitions):
                return entry.get()
        key = _canonical([dict(run_config), num_partitions])
        if key not in self._local:
            self._local[key] = self.fn(run_config, num_partitions)
        return self._local[key]

    def compute(self, run_config: Mapping, num_partitions: int) -> SharedValue:
        """Call the function and note the run-config keys it read (MissingKey if it reads one the run lacks)."""
        recorder = _ReadRecorder(run_config)
        value = self.fn(recorder, num_partitions)
        keys = set(run_config) if ALL_KEYS in recorder.read else recorder.read & set(run_config)
        inputs = {k: run_config[k] for k in sorted(keys)}
        return SharedValue(self.name, num_partitions, inputs, value, None, True)


def shared(fn) -> SharedFunction:
    """Decorator: share `fn(run_config, num_partitions)`'s result through Ray's object store under fedsweep."""
    function = SharedFunction(fn)
    _REGISTRY[function.name] = function
    return function


def registered() -> list[SharedFunction]:
    """Every shared function imported so far in this process (other apps' loaders too: see `compute_for`)."""
    return list(_REGISTRY.values())


def app_imported(directory: str) -> None:
    """Note that this process imported the app in `directory` (and so registered its loaders)."""
    _APPS.add(directory)


def compute_for(function: SharedFunction, run_config: Mapping, num_partitions: int) -> SharedValue | None:
    """`function`'s value for this run; None when it reads a run-config key the run lacks and this process has
    imported more than one app.

    Such a process holds every app's loaders; they are told apart by the keys
    they read, so the driver does not load (or fail on) another app's data.
    With one app imported, a missing key is that app's error and is raised.
    """
    try:
        return function.compute(run_config, num_partitions)
    except MissingKey:
        if len(_APPS) > 1:
            return None
        raise


def compute_missing(run_config: Mapping, num_partitions: int, available: list[SharedValue]) -> list[SharedValue]:
    """Values of every registered function for this run that `available` does not already hold, computed here."""
    missing = []
    for function in registered():
        if not any(v.answers(function.name, run_config, num_partitions) for v in available):
            value = compute_for(function, run_config, num_partitions)
            if value is not None:
                missing.append(value)
    return missing


def publish(values: list[SharedValue]) -> None:
    """Put each value in Ray's object store (once; Ray must be running)."""
    import ray

    for value in values:
        if value.ref is None:
            value.ref = ray.put(value.value)


def install(values: list[SharedValue]) -> None:
    """Make shared functions in this process answer from `values` (replacing what a previous run installed).

    Functions imported later (an app may import its data module lazily) see them too.
    """
    _INSTALLED[:] = values


def uninstall() -> None:
    """Forget the values of the run that ended (their object-store copies go with it)."""
    _INSTALLED.clear()
