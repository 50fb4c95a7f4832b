"""Shared fixtures: small synthetic runs of the built-in app and one in-process Ray for the session."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

# Tests start their own local Ray instances; Ray 2.60 would otherwise switch on token
# authentication for them and write ~/.ray/auth_token. Tests of authentication set it themselves.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared")


def tiny_run(settings: dict | None = None, app_dir: str | None = None, **run_config):
    """(app, run config, RunSettings) small enough for a test: synthetic data, 4 nodes, 2 a round.

    The app is the built-in one, or the one in `app_dir` (the built-in app with another ClientApp, such as
    tests/faults.py writes). Run-config keys are given with `_` for `-` (local_epochs=2); engine settings in `settings`.
    """
    from fl_core import RunSettings, fuse_run_config, load_app_folder

    app = load_app_folder(app_dir)
    values = dict(
        dataset="synthetic",
        synthetic_size=400,
        fraction_train=0.5,
        fraction_evaluate=0.5,
        min_train_nodes=2,
        min_evaluate_nodes=2,
        num_server_rounds=2,
        local_epochs=1,
        lr=0.05,
        eval_batch_size=200,
    )
    values.update(run_config)
    fused = fuse_run_config(app, {k.replace("_", "-"): v for k, v in values.items()})
    engine = RunSettings(**{"pool_size": 4, **(settings or {})})
    return app, fused, engine


def checkpoint_state(round_=2, run=None):
    """A ServerState holding every kind of state a checkpoint must keep (arrays of two dtypes, a nested strategy
    state, numpy scalars, tuples, None, int keys, each record type in a node's Context.state)."""
    import numpy as np
    from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

    from fl_core.checkpoint import ServerState
    from fl_core.strategies import StrategyState

    app, run_config, settings = run or tiny_run()
    arrays = ArrayRecord([np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(4, np.float64)])
    inner = StrategyState(momentum_vector=[np.full(3, 0.5)], clipping_norm=np.float32(0.25), keys={"a": 1, 2: None})
    node_state = RecordDict(
        {
            "control": ArrayRecord([np.full(2, 7.0)]),
            "seen": MetricRecord({"rounds": 3}),
            "tag": ConfigRecord({"name": "x", "raw": b"\x00\x01", "flags": [True, False]}),
        }
    )
    return ServerState(
        round=round_,
        arrays=arrays,
        strategy="FedAvgM",
        strategy_state=StrategyState(
            current_arrays=arrays,
            m_t={"w": np.full(3, 0.5)},
            eta=0.1,
            name="s",
            pair=(1, 2.5),
            strategy=inner,
            nothing=None,
        ),
        node_states={1001: node_state},
        history=[{"round": 1, "central_accuracy": 0.1, "fed_accuracy": None}],
        app=app.name,
        app_dir=app.directory,
        run_config=run_config,
        settings=settings.to_dict(),
    )


SMALL = ["--dataset", "synthetic", "--synthetic-size", "200", "--pool-size", "4"]  # a tiny `python -m fl_core` run


@pytest.fixture(autouse=True)
def _fedsweep_logger_as_it_was():
    """Every test leaves the `fedsweep` logger as it found it (a command line run in-process installs its handler)."""
    from fl_core.logs import LOGGER

    saved = LOGGER.handlers[:], LOGGER.level, LOGGER.propagate
    yield
    LOGGER.handlers, LOGGER.level, LOGGER.propagate = saved


@pytest.fixture
def fedsweep_log():
    """The `fedsweep` logger shown on stderr as `python -m fl_core` shows it (for the test's duration)."""
    from fl_core.logs import LOGGER, show_on_stderr

    show_on_stderr("fl_core")
    return LOGGER


@pytest.fixture
def no_ray(monkeypatch):
    """Fail the test if the CLI gets as far as starting Ray (bad input must be refused before)."""
    import ray

    def forbidden(*a, **k):
        raise AssertionError("ray.init was called for bad input")

    monkeypatch.setattr(ray, "init", forbidden)


def model_metrics(history: list[dict]) -> list[dict]:
    """Per-round metrics without the timing keys (which differ run to run)."""
    from fl_core.metrics import MACHINE_KEYS

    return [{k: v for k, v in row.items() if k not in MACHINE_KEYS} for row in history]


def same_arrays(a, b) -> bool:
    """Whether two ArrayRecords hold bit-identical arrays under the same names."""
    import numpy as np

    return list(a.keys()) == list(b.keys()) and all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a.keys())


def tensorboard_scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} of every TensorBoard event file in `folder`, in file then write order.

    Read with tensorboardX's Event proto from the files' TFRecord framing (length, CRC, data, CRC).
    """
    import glob
    import struct

    from tensorboardX.proto import event_pb2

    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(glob.glob(os.path.join(str(folder), "events.out.tfevents.*"))):
        with open(path, "rb") as f:
            data = f.read()
        at = 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at : at + 8])
            event = event_pb2.Event.FromString(data[at + 12 : at + 12 + length])
            at += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


@pytest.fixture(scope="session")
def ray_local():
    """An in-process local Ray with its own temp dir, shut down after the session."""
    import ray

    if ray.is_initialized():
        yield ray
        return
    temp_dir = tempfile.mkdtemp(prefix="fsw-", dir="/tmp")  # short: Ray's socket paths have a length limit
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp_dir, logging_level="WARNING")
    try:
        yield ray
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def cifar_dir(tmp_path_factory):
    """Real CIFAR-10 made by ../shared/datasets/make_cifar10.py; skips when ../shared is absent."""
    script = os.path.join(SHARED, "datasets", "make_cifar10.py")
    if not os.path.isfile(script):
        pytest.skip("../shared/datasets/make_cifar10.py is not here: real-CIFAR tests skipped")
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("cifar")
    subprocess.run([sys.executable, script, str(out)], check=True, capture_output=True)
    return str(out)
