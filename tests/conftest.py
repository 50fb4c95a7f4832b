"""Shared fixtures: small synthetic configs and one in-process Ray for the session."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

# Tests start their own local Ray instances; Ray 2.60 would otherwise switch on token
# authentication for them and write ~/.ray/auth_token. Tests of authentication set it themselves.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared")


def tiny_config(**overrides):
    """A SimConfig small enough for a test: synthetic data, 4 clients, 2 per round."""
    from fl_core import SimConfig

    values = dict(
        dataset="synthetic",
        synthetic_size=400,
        pool_size=4,
        fraction_fit=0.5,
        fraction_evaluate=0.5,
        min_fit_clients=2,
        min_evaluate_clients=2,
        num_rounds=2,
        lr=0.05,
        eval_batch_size=200,
    )
    values.update(overrides)
    return SimConfig(**values)


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
