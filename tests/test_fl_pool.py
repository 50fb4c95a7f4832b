"""Sizing the client worker pool to what the run owns (no Ray needed: its answers are stubbed)."""

from __future__ import annotations

import pytest
import ray

from fl_core import ConfigError, RunSettings
from fl_core.pool import plan_pool


def plan_slots(fraction_train=0.5, fraction_evaluate=0.1, pool_size=100, **settings):
    """plan_pool for the run-config keys that decide a round's clients and the given engine settings."""
    run_config = {
        "fraction-train": fraction_train,
        "fraction-evaluate": fraction_evaluate,
        "min-train-nodes": 2,
        "min-evaluate-nodes": 2,
    }
    return plan_pool(RunSettings(pool_size=pool_size, **settings), run_config)


class FakePG:
    """Stands in for a Tune trial's placement group."""

    def __init__(self, bundles):
        self.bundle_specs = bundles


@pytest.fixture
def cluster(monkeypatch):
    """Set the cluster's resources and the current placement group seen by plan_slots."""

    def set_(resources=None, pg=None):
        monkeypatch.setattr(ray, "cluster_resources", lambda: dict(resources or {}))
        monkeypatch.setattr(ray.util, "get_current_placement_group", lambda: pg)

    return set_


def test_alone_cpu_slots_are_cluster_cpus_over_client_cpus(cluster):
    cluster({"CPU": 8})
    assert plan_slots(fraction_train=0.1) == (8, None)  # 10 clients a round
    assert plan_slots(fraction_train=0.1, num_client_cpus=3)[0] == 2


def test_slots_never_exceed_what_a_round_uses_or_the_cap(cluster):
    cluster({"CPU": 64})
    assert plan_slots(fraction_train=0.05, fraction_evaluate=0.02)[0] == 5
    assert plan_slots(fraction_train=0.02, fraction_evaluate=0.07)[0] == 7  # evaluation may use more than training
    assert plan_slots(fraction_train=0.5, max_parallel_clients=3)[0] == 3
    assert plan_slots(fraction_train=0.5, pool_size=4)[0] == 2  # fewer nodes than CPUs


def test_an_app_without_flower_template_keys_gets_what_fits(cluster):
    cluster({"CPU": 64})
    assert plan_pool(RunSettings(pool_size=10), {"lr": 0.1}) == (10, None)  # every node at once, no more
    assert plan_pool(RunSettings(pool_size=100), {"lr": 0.1})[0] == 64


def test_fractional_gpus_share_one_gpu(cluster):
    cluster({"CPU": 16, "GPU": 1})
    assert plan_slots(num_client_gpus=0.125)[0] == 8
    cluster({"CPU": 4, "GPU": 2})
    assert plan_slots(num_client_gpus=0.25)[0] == 4  # CPUs bind first
    cluster({"CPU": 16, "GPU": 1})
    assert plan_slots(num_client_gpus=0.125, server_gpus=0.5)[0] == 4  # the server's share is not the clients'


def test_too_small_a_cluster_is_a_clear_error(cluster):
    cluster({"CPU": 2})
    with pytest.raises(ConfigError, match="one client needs 1.0 CPU and 0.5 GPU"):
        plan_slots(num_client_gpus=0.5)


def test_inside_a_trial_the_client_bundles_are_the_slots(cluster):
    pg = FakePG([{"CPU": 1}] + [{"CPU": 1, "GPU": 0.25}] * 3)
    cluster({"CPU": 64, "GPU": 8}, pg)  # the whole cluster is not what the trial owns
    assert plan_slots(fraction_train=0.2, num_client_gpus=0.25) == (3, pg)


def test_trial_bundles_too_small_for_a_client_are_refused(cluster):
    cluster({"CPU": 64}, FakePG([{"CPU": 1}, {"CPU": 1}]))
    with pytest.raises(ConfigError, match="bundle 1 .* cannot hold a client"):
        plan_slots(num_client_cpus=2)
    cluster({"CPU": 64}, FakePG([{"CPU": 1}]))
    with pytest.raises(ConfigError, match="no client bundles"):
        plan_slots()
