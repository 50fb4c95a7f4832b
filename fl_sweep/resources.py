"""Trial resources: [server bundle] + K client bundles, and whether a trial fits the cluster."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fl_core.config import ConfigError, SimConfig

if TYPE_CHECKING:  # only for annotations: spec imports this module
    from fl_sweep.spec import SweepSpec

# ---------------------------------------------------------------------------
# Resources


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
