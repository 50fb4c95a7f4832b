"""Trials' settings and resources: [server bundle] + K client bundles, and whether a trial fits the cluster."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from fl_core.settings import SETTING_NAMES, ConfigError, RunSettings, clients_per_round


@dataclass
class ResourcePlan:
    """What a trial's settings, run config and bundles are derived from besides its sampled values (SweepSpec.plan)."""

    settings: dict  # the sweep's fixed engine settings (every RunSettings field)
    run_config: dict  # the app's run config with the sweep's fixed overrides
    cluster_cpus: float
    cluster_gpus: float
    sets: dict = field(default_factory=dict)  # axis -> {name: {key: value}}: grids of named sets of keys

    def trial(self, config: dict) -> tuple[RunSettings, dict]:
        """(settings, run config) of a trial whose sampled values are `config`.

        A swept set's name stands for its keys. Sampled engine settings go to
        the settings, everything else to the run config; the app's run-config
        key `seed`, if it has one, is the engine's seed.
        """
        config = {
            k: v
            for axis, value in config.items()
            for k, v in (self.sets[axis][value] if axis in self.sets else {axis: value}).items()
        }
        settings = RunSettings.from_dict({**self.settings, **{k: v for k, v in config.items() if k in SETTING_NAMES}})
        run_config = {**self.run_config, **{k: v for k, v in config.items() if k not in SETTING_NAMES}}
        return settings, {**run_config, "seed": settings.seed} if "seed" in run_config else run_config


def server_bundle_cpus(settings: RunSettings) -> int:
    """CPUs of a trial's own bundle; the server then runs that many torch threads."""
    return settings.server_cpus or 1


def default_parallel_clients(settings: RunSettings, plan: ResourcePlan) -> int:
    """Client workers one trial may use when --max-parallel-clients is not given.

    The server bundle is subtracted first: on 2 CPUs with 1 CPU per client
    this gives K=1, a trial of 2 CPUs that fits; K=2 would never be scheduled.
    """
    slots = math.floor((plan.cluster_cpus - server_bundle_cpus(settings)) / settings.num_client_cpus + 1e-9)
    if settings.num_client_gpus > 0:
        slots = min(slots, math.floor((plan.cluster_gpus - settings.server_gpus) / settings.num_client_gpus + 1e-9))
    return max(1, slots)


def client_slots(settings: RunSettings, run_config: dict, plan: ResourcePlan) -> int:
    """K, the client bundles of one trial: min(clients a round uses, max parallel clients).

    The clients a round uses come from the run config's Flower-template keys
    (fraction-train...); an app without them gets the cap.
    """
    cap = settings.max_parallel_clients or default_parallel_clients(settings, plan)
    per_round = clients_per_round(run_config, settings.pool_size) or cap
    return max(1, min(per_round, cap))


def trial_bundles(config: dict, plan: ResourcePlan) -> list[dict]:
    """[server bundle] + K client bundles for a trial's sampled config."""
    settings, run_config = plan.trial(config)
    head = {"CPU": server_bundle_cpus(settings)}
    if settings.server_gpus > 0:
        head["GPU"] = settings.server_gpus
    client = {"CPU": settings.num_client_cpus}
    if settings.num_client_gpus > 0:
        client["GPU"] = settings.num_client_gpus
    return [head] + [dict(client) for _ in range(client_slots(settings, run_config, plan))]


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
