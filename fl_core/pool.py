"""Client work on Ray: long-lived worker actors, one per client slot, behind Flower `ClientProxy`s.

Flower's server calls `proxy.fit(ins)` from its thread pool; the proxy borrows an
idle worker from the pool, runs the client there and returns the worker. More
sampled clients than workers simply wait for a free one.

The pool is sized to what the run owns. Inside a Ray Tune trial that is the
trial's placement group: bundle 0 is the trainable's own, every further bundle
holds one worker. Alone, it is the cluster's resources divided by one
client's, capped by the clients a round can use.
"""

from __future__ import annotations

import math
import queue

import ray
import torch
from flwr.common import Code, DisconnectRes, EvaluateIns, EvaluateRes, FitIns, FitRes, GetParametersIns
from flwr.common import GetParametersRes, GetPropertiesIns, GetPropertiesRes, ReconnectIns, Status
from flwr.server.client_proxy import ClientProxy
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from fl_core.client import CifarClient
from fl_core.config import ConfigError, SimConfig
from fl_core.models import build_model
from fl_core.task import place_model

READY_TIMEOUT_S = 300


class ClientWorker:
    """Runs any client's fit/evaluate with this worker's resources (a Ray actor)."""

    def __init__(self, data, model_name: str, num_cpus: float) -> None:
        # `data` arrives dereferenced from the object store: numpy arrays that
        # view shared memory, so a worker adds no copy of the dataset.
        torch.set_num_threads(max(1, int(num_cpus)))  # never more busy threads than CPUs given
        self.data = data
        self.device = torch.device("cuda" if ray.get_gpu_ids() else "cpu")
        self.model = place_model(build_model(model_name, seed=0), self.device)

    def ready(self) -> str:
        """Answers once the worker is placed and initialised; says where it runs."""
        return str(self.device)

    def _client(self, cid: str):
        return CifarClient(int(cid), self.data, self.model, self.device).to_client()

    def fit(self, cid: str, ins: FitIns) -> FitRes:
        """Flower fit of client `cid`."""
        return self._client(cid).fit(ins)

    def evaluate(self, cid: str, ins: EvaluateIns) -> EvaluateRes:
        """Flower evaluate of client `cid`."""
        return self._client(cid).evaluate(ins)

    def get_parameters(self, cid: str, ins: GetParametersIns) -> GetParametersRes:
        """Flower get_parameters of client `cid`."""
        return self._client(cid).get_parameters(ins)


def plan_slots(config: SimConfig) -> tuple[int, object | None]:
    """(number of workers, placement group or None) for the resources this run owns."""
    wanted = max(config.clients_per_round(), config.clients_per_evaluation(), 1)
    if config.max_parallel_clients:
        wanted = min(wanted, config.max_parallel_clients)
    pg = ray.util.get_current_placement_group()
    if pg is not None:
        client_bundles = pg.bundle_specs[1:]
        for i, bundle in enumerate(client_bundles, start=1):
            if bundle.get("CPU", 0) < config.num_client_cpus or bundle.get("GPU", 0) < config.num_client_gpus:
                raise ConfigError(
                    f"placement group bundle {i} {bundle} cannot hold a client needing "
                    f"{config.num_client_cpus} CPU / {config.num_client_gpus} GPU"
                )
        if not client_bundles:
            raise ConfigError("the trial's placement group has no client bundles: give it [server] + K client bundles")
        return min(wanted, len(client_bundles)), pg
    # The cluster's total, not what is free this instant: workers of a run that
    # just ended release their resources asynchronously.
    free = ray.cluster_resources()
    slots = math.floor(free.get("CPU", 0) / config.num_client_cpus + 1e-9)
    if config.num_client_gpus > 0:
        slots = min(slots, math.floor(free.get("GPU", 0) / config.num_client_gpus + 1e-9))
    if slots < 1:
        raise ConfigError(
            f"the Ray cluster has {free.get('CPU', 0)} CPUs and {free.get('GPU', 0)} GPUs; "
            f"one client needs {config.num_client_cpus} CPU and {config.num_client_gpus} GPU: lower "
            "--num-client-cpus/--num-client-gpus or add nodes"
        )
    return min(wanted, slots), None


class ClientPool:
    """A fixed set of `ClientWorker` actors handed out one call at a time."""

    def __init__(self, data_ref, config: SimConfig) -> None:
        size, pg = plan_slots(config)
        worker_cls = ray.remote(ClientWorker)
        self.workers = []
        for i in range(size):
            options = {"num_cpus": config.num_client_cpus, "num_gpus": config.num_client_gpus, "max_restarts": 0}
            if pg is not None:
                options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=i + 1)
            self.workers.append(worker_cls.options(**options).remote(data_ref, config.model, config.num_client_cpus))
        ready, pending = ray.wait([w.ready.remote() for w in self.workers], num_returns=size, timeout=READY_TIMEOUT_S)
        if pending:
            self.shutdown()
            raise RuntimeError(
                f"only {len(ready)} of {size} client workers could start within {READY_TIMEOUT_S} s: "
                "the cluster lacks the resources it advertised"
            )
        self.devices = ray.get(ready)
        self._idle: queue.Queue = queue.Queue()
        for worker in self.workers:
            self._idle.put(worker)

    @property
    def size(self) -> int:
        """Number of workers (clients that can run at once)."""
        return len(self.workers)

    def call(self, method: str, cid: str, ins, timeout: float | None):
        """Run `method` for client `cid` on the next idle worker and return its result."""
        worker = self._idle.get()
        try:
            return ray.get(getattr(worker, method).remote(cid, ins), timeout=timeout)
        finally:
            self._idle.put(worker)

    def shutdown(self) -> None:
        """Stop every worker (their resources go back to the cluster or trial)."""
        for worker in self.workers:
            ray.kill(worker, no_restart=True)
        self.workers = []


class RayClientProxy(ClientProxy):
    """What Flower's server sees of client `cid`: each call runs on the pool."""

    def __init__(self, cid: str, pool: ClientPool) -> None:
        super().__init__(cid)
        self.pool = pool

    def get_properties(self, ins: GetPropertiesIns, timeout, group_id) -> GetPropertiesRes:
        """Clients advertise no properties."""
        return GetPropertiesRes(status=Status(code=Code.OK, message=""), properties={})

    def get_parameters(self, ins: GetParametersIns, timeout, group_id) -> GetParametersRes:
        """The client's current weights (fresh model weights)."""
        return self.pool.call("get_parameters", self.cid, ins, timeout)

    def fit(self, ins: FitIns, timeout, group_id) -> FitRes:
        """Local training of this client on a pool worker."""
        return self.pool.call("fit", self.cid, ins, timeout)

    def evaluate(self, ins: EvaluateIns, timeout, group_id) -> EvaluateRes:
        """Local validation of this client on a pool worker."""
        return self.pool.call("evaluate", self.cid, ins, timeout)

    def reconnect(self, ins: ReconnectIns, timeout, group_id) -> DisconnectRes:
        """Simulated clients have no connection to drop."""
        return DisconnectRes(reason="")
