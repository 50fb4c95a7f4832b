"""Client work on Ray: long-lived worker actors, each hosting the app's `ClientApp`.

A worker runs any node's messages: it is sent (message, that node's Context,
seed) and returns the reply and the node's updated Context state. Nodes are not
tied to workers, so a node's state lives with the driver (see grid.py).

The pool is sized to what the run owns. Inside a Ray Tune trial that is the
trial's placement group: bundle 0 is the trainable's own, every further bundle
holds one worker. Alone, it is the cluster's resources divided by one client's,
capped by the clients a round sends work to (read from the run config, see
settings.clients_per_round) and --max-parallel-clients.
"""

from __future__ import annotations

import math
import traceback
from collections import deque

import ray
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from fl_core.settings import ConfigError, RunSettings, clients_per_round

READY_TIMEOUT_S = 300


class ClientAppWorker:
    """Hosts the app's ClientApp in a Ray actor and runs the messages it is given."""

    def __init__(self, app, shared_values: list, num_cpus: float, run_id: int) -> None:
        """Load the ClientApp once; `shared_values` answer the app's @shared functions from the object store."""
        from flwr.common.constant import SUPERLINK_NODE_ID
        from flwr.supercore.task_identity import TaskIdentity

        from fl_core import shared_data

        try:
            import torch

            torch.set_num_threads(max(1, int(num_cpus)))  # never more busy threads than CPUs given
        except ImportError:
            pass
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = run_id, SUPERLINK_NODE_ID, 1
        self.client_app = app.load("client")
        shared_data.install(shared_values)

    def ready(self) -> str:
        """Answers once the worker is placed and has loaded the app; says which device it may use."""
        return "cuda" if ray.get_gpu_ids() else "cpu"

    def handle(self, message, context, seed: int):
        """(reply, state) of `context`'s node for `message`; state is None when the app raised.

        Like Flower's engine, an exception in the ClientApp becomes an error
        reply (CLIENT_APP_RAISED_EXCEPTION, with the traceback) and the node's
        Context changes of that call are discarded.
        """
        from flwr.app import Error, Message
        from flwr.common.constant import ErrorCode

        from fl_core.seeding import seed_globals

        seed_globals(seed)
        try:
            reply = self.client_app(message, context)
        except Exception:  # the app's error travels back as Flower's error reply
            text = traceback.format_exc()
            error = Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=text)
            return Message(error, reply_to=message), None
        return reply, context.state


def plan_pool(settings: RunSettings, run_config: dict) -> tuple[int, object | None]:
    """(number of workers, placement group or None) for the resources this run owns."""
    wanted = settings.max_parallel_clients or clients_per_round(run_config, settings.pool_size) or settings.pool_size
    wanted = min(wanted, settings.pool_size)
    pg = ray.util.get_current_placement_group()
    if pg is not None:
        client_bundles = pg.bundle_specs[1:]
        for i, bundle in enumerate(client_bundles, start=1):
            if bundle.get("CPU", 0) < settings.num_client_cpus or bundle.get("GPU", 0) < settings.num_client_gpus:
                raise ConfigError(
                    f"placement group bundle {i} {bundle} cannot hold a client needing "
                    f"{settings.num_client_cpus} CPU / {settings.num_client_gpus} GPU"
                )
        if not client_bundles:
            raise ConfigError("the trial's placement group has no client bundles: give it [server] + K client bundles")
        return min(wanted, len(client_bundles)), pg
    # The cluster's total, not what is free this instant: workers of a run that
    # just ended release their resources asynchronously.
    total = ray.cluster_resources()
    slots = math.floor(total.get("CPU", 0) / settings.num_client_cpus + 1e-9)
    if settings.num_client_gpus > 0:
        gpus = total.get("GPU", 0) - settings.server_gpus
        slots = min(slots, math.floor(gpus / settings.num_client_gpus + 1e-9))
    if slots < 1:
        raise ConfigError(
            f"the Ray cluster has {total.get('CPU', 0)} CPUs and {total.get('GPU', 0)} GPUs; "
            f"one client needs {settings.num_client_cpus} CPU and {settings.num_client_gpus} GPU: lower "
            "--num-client-cpus/--num-client-gpus or add nodes"
        )
    return min(wanted, slots), None


class WorkerPool:
    """A fixed set of ClientAppWorker actors; `run` spreads calls over them, any worker any node."""

    def __init__(self, app, settings: RunSettings, run_config: dict, shared_values: list, run_id: int) -> None:
        """Start the workers (without waiting: `run` waits for them the first time)."""
        size, pg = plan_pool(settings, run_config)
        worker_cls = ray.remote(ClientAppWorker)  # workers import the app from its folder, as the driver does
        transfer = [value.for_transfer() for value in shared_values]
        self.workers = []
        for i in range(size):
            options = {"num_cpus": settings.num_client_cpus, "num_gpus": settings.num_client_gpus,
                       "max_restarts": 0}
            if pg is not None:
                options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=i + 1)
            self.workers.append(worker_cls.options(**options).remote(app, transfer, settings.num_client_cpus, run_id))
        self._ready_refs = [w.ready.remote() for w in self.workers]
        self.devices: list[str] | None = None

    @property
    def size(self) -> int:
        """Number of workers (clients that can run at once)."""
        return len(self.workers)

    def wait_ready(self) -> list[str]:
        """Block until every worker has started; their devices. RuntimeError if they cannot all start."""
        if self.devices is None:
            ready, pending = ray.wait(self._ready_refs, num_returns=len(self._ready_refs), timeout=READY_TIMEOUT_S)
            if pending:
                self.shutdown()
                raise RuntimeError(
                    f"only {len(ready)} of {len(self._ready_refs)} client workers could start within "
                    f"{READY_TIMEOUT_S} s: the cluster lacks the resources it advertised"
                )
            self.devices = ray.get(self._ready_refs)  # raises the worker's error if the app failed to load
        return self.devices

    def run(self, calls: list[tuple]) -> list[tuple]:
        """Results of `worker.handle(*call)` for every call, in the order of `calls`.

        Calls go to workers as they become free; which worker runs which call
        does not change any result.
        """
        self.wait_ready()
        results: list = [None] * len(calls)
        waiting = deque(enumerate(calls))
        idle = list(reversed(self.workers))
        running: dict = {}  # ObjectRef -> (index, worker)
        while waiting or running:
            while idle and waiting:
                index, call = waiting.popleft()
                worker = idle.pop()
                running[worker.handle.remote(*call)] = (index, worker)
            done, _ = ray.wait(list(running), num_returns=1)
            for ref in done:
                index, worker = running.pop(ref)
                results[index] = ray.get(ref)
                idle.append(worker)
        return results

    def shutdown(self) -> None:
        """Stop every worker (their resources go back to the cluster or trial)."""
        for worker in self.workers:
            ray.kill(worker, no_restart=True)
        self.workers = []
