"""Client work on Ray: long-lived worker actors, each hosting the app's `ClientApp`.

A worker runs any node's messages. It is sent a group of cohorts, one Ray call
per group, each cohort a list of (message, that node's Context, seed), runs
the cohorts one after another (a cohort of one is one ClientApp call, a larger
one goes to the app's cohort function: fl_core.cohorts) and streams back each
cohort's replies with the nodes' updated Context states as soon as it has them
(a Ray streaming generator). What the messages of a group share crosses once
per call instead of once per message. Nodes are not tied to workers, so a
node's state lives with the driver (see grid.py).

The pool is sized to what the run owns. Inside a Ray Tune trial that is the
trial's placement group: bundle 0 is the trainable's own, every further bundle
holds one worker. Alone, it is the cluster's resources divided by one client's,
capped by the clients a round sends work to (read from the run config, see
settings.clients_per_round) and --max-parallel-clients.

Faults: a cohort whose call raises, whose worker process dies or that runs
past --client-timeout (per node it holds) is run again alone (on any worker,
with the same messages, Contexts and seeds, so its results are the same), up to
--client-retries times; the call's failure is then handed to the grid, which
applies the run's policy. When a worker dies or is killed mid-group, the
group's cohorts it had not answered go to other calls, uncounted. A dead
worker is restarted by Ray (max_restarts) in the same place (a hung one is
killed first), so the pool keeps its size within the run's own resources. A
worker whose node left the
cluster (Ray declares a node dead some seconds after it stops answering) or
that is not back within RESTART_TIMEOUT_S is retired: the run goes on with the
other workers, its results unchanged. The run stops with NodeLostError when no
worker is left, and inside a Tune trial as soon as a node is lost (Tune then
retries the trial from its last checkpoint: a trial that goes on after its
placement group lost a bundle runs far slower, bench/README.md "Faults change nothing").
"""

from __future__ import annotations

import math
import os
import time
from collections import deque

import ray
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from fl_core import cohorts, shared_data
from fl_core.failures import CallFailure, NodeLostError, Raised, outcome
from fl_core.logs import LOGGER
from fl_core.seeding import seeded_call
from fl_core.settings import ConfigError, RunSettings, clients_per_round

READY_TIMEOUT_S = 300
RESTART_TIMEOUT_S = 120  # a restarted worker on a live node that is not back by then: the run stops
NODE_POLL_S = 1.0  # how often a restarting worker's node is checked for liveness


class ClientAppWorker:
    """Hosts the app's ClientApp in a Ray actor and runs the groups of work it is given, one item after another."""

    def __init__(self, app, num_cpus: float, run_id: int) -> None:
        """Load the ClientApp once (again after a restart)."""
        try:
            import torch  # an app may be written without torch

            torch.set_num_threads(max(1, int(num_cpus)))  # never more busy threads than CPUs given
        except ImportError:
            pass
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = run_id, SUPERLINK_NODE_ID, 1
        self.client_app = app.load("client")

    def ready(self, shared_values: list) -> tuple[str, str, str]:
        """Answer the app's @shared functions from the object store; (device it may use, "pid P at IP", node id).

        The pool calls it before a worker's first message and again after each
        restart. (The values' refs are not constructor arguments: Ray warns about
        any such ref of an actor that may restart, issue 53727, though these
        stay pinned by the driver for the run.)
        """
        shared_data.install(shared_values)
        context = ray.get_runtime_context()
        where = f"pid {os.getpid()} at {ray.util.get_node_ip_address()}"
        return ("cuda" if ray.get_gpu_ids() else "cpu"), where, context.get_node_id()

    def handle(self, weighting_key: str | None, items: list):
        """Yield [(reply, state), ...] of each cohort of (message, Context, seed) in turn, or Raised if it raised.

        A cohort of one is one ClientApp call; a larger one goes to the app's
        cohort function, if it has one, and with a `weighting_key` its replies
        are folded into one (fl_core.cohorts.handle). The messages of a group
        share their content (a strategy sends every node the same RecordDict,
        and it crosses to the worker once): see cohorts.handle for who gets a copy.
        """
        for cohort in items:
            yield outcome(cohorts.handle, self.client_app, cohort, weighting_key)

    def apply(self, function, *args):
        """Yield `function(*common, arg)` for each (arg, seed) of the group, or Raised if it raised.

        `args` are the arguments every item shares, then the group. The global
        generators are seeded with the item's seed first (fl_core.central runs
        its shards this way).
        """
        *common, items = args
        for arg, seed in items:
            yield outcome(seeded_call, seed, function, *common, arg)


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


def plan_groups(indices, sizes: list | None, workers: int, most: int | None = None) -> list[list[int]]:
    """The items `indices` in groups for the workers: one call each, largest expected work first.

    There are `workers` groups, or more when `most` (--nodes-per-call) caps a
    group's items. Without sizes (or none known) the groups are contiguous runs
    of near-equal length. With `sizes`, the expected work of every item by its
    index (None: unknown, taken as the known mean), each item in turn, largest
    first, joins the group with the least work so far (longest processing time
    first), so that the phase ends about when the average worker is done.
    Items keep their order within a group. Deterministic; no result depends on
    it.
    """
    indices = list(indices)
    if not indices:
        return []
    groups = min(len(indices), max(workers, -(-len(indices) // most) if most else 0))
    known = [s for s in (sizes or []) if s is not None]
    if not known:
        length, longer = divmod(len(indices), groups)  # the first `longer` groups hold one more
        starts = [g * length + min(g, longer) for g in range(groups + 1)]
        return [indices[starts[g] : starts[g + 1]] for g in range(groups)]
    mean = sum(known) / len(known)
    work = [mean if sizes[i] is None else sizes[i] for i in indices]
    capacity = most or len(indices)
    loads, members = [0.0] * groups, [[] for _ in range(groups)]
    for k in sorted(range(len(indices)), key=lambda k: (-work[k], k)):
        g = min((g for g in range(groups) if len(members[g]) < capacity), key=lambda g: (loads[g], g))
        loads[g] += work[k]
        members[g].append(k)
    order = sorted(range(groups), key=lambda g: (-loads[g], g))
    return [[indices[k] for k in sorted(members[g])] for g in order]


class WorkerPool:
    """A fixed set of ClientAppWorker actors; `run` spreads calls over them, any worker any node, retrying faults."""

    def __init__(self, app, settings: RunSettings, run_config: dict, shared_values: list, run_id: int) -> None:
        """Start the workers (without waiting: `run` waits for them the first time)."""
        size, pg = plan_pool(settings, run_config)
        worker_cls = ray.remote(ClientAppWorker)  # workers import the app from its folder, as the driver does
        self._shared = [value.for_transfer() for value in shared_values]
        self.retries = settings.client_retries
        self.timeout = settings.client_timeout
        self.nodes_per_call = settings.nodes_per_call
        self.workers = []
        for i in range(size):
            # max_restarts=-1: Ray restarts a dead worker in its place; our own retries bound the faults per call.
            options = {
                "num_cpus": settings.num_client_cpus,
                "num_gpus": settings.num_client_gpus,
                "max_restarts": -1,
                "max_task_retries": 0,
            }
            if pg is not None:
                options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                    pg, placement_group_bundle_index=i + 1
                )
            self.workers.append(worker_cls.options(**options).remote(app, settings.num_client_cpus, run_id))
        self._ready_refs = [w.ready.remote(self._shared) for w in self.workers]
        self.devices: list[str] | None = None
        self.where: list[str] = []  # "pid P at IP" of each worker's current process
        self.nodes: list[str] = []  # node id of each worker
        self._restarting: dict = {}  # ready() ref of a restarting worker -> (worker index, deadline)
        self.retired: set[int] = set()  # workers lost for good (their node left the cluster)
        self.in_placement_group = pg is not None  # a Tune trial's
        self.retried = 0  # failed attempts run again, over the run (rounds report their share)

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
            answers = ray.get(self._ready_refs)  # raises the worker's error if the app failed to load
            self.devices = [device for device, _, _ in answers]
            self.where = [where for _, where, _ in answers]
            self.nodes = [node for _, _, node in answers]
            LOGGER.debug(
                "%d client worker(s) ready: %s",
                self.size,
                "; ".join(f"{self.describe(w)} on {self.devices[w]}" for w in range(self.size)),
            )
        return self.devices

    def describe(self, worker: int) -> str:
        """'worker W (pid P at IP)' for reports."""
        return f"worker {worker} ({self.where[worker]})"

    def live_size(self) -> int:
        """Workers not retired (some may be restarting)."""
        return self.size - len(self.retired)

    def run(
        self,
        items: list,
        report=None,
        *,
        method: str = "handle",
        common: tuple = (),
        sizes: list | None = None,
        spans: list[int] | None = None,
    ) -> list:
        """Results of `worker.<method>(*common, group)` for every item, in the order of `items`.

        The items go to the workers in groups (`plan_groups`: one group per live
        worker, or more of at most --nodes-per-call items), one Ray call per
        group; the worker yields each item's result as it finishes it. Which
        worker runs which item, in which group, and whether it was retried
        changes no result. An item that raised is run again alone; when a
        worker dies or an item outlasts --client-timeout, that item counts as
        failed and the group's unfinished items go to other calls. An item that
        fails 1 + `self.retries` times yields a CallFailure instead.
        `report(index, attempt, kind, worker, detail, retrying)` hears of every
        failed attempt. `spans` says how many nodes each item holds (a cohort):
        its time limit is --client-timeout times that.
        """
        self.wait_ready()
        common = tuple(ray.put(value) for value in common)  # crosses to the workers once, not once per group
        results: list = [None] * len(items)
        attempts = [0] * len(items)
        waiting = deque(plan_groups(range(len(items)), sizes, self.live_size(), self.nodes_per_call))
        LOGGER.debug("%d %s calls in %d group(s): %s", len(items), method, len(waiting), [len(g) for g in waiting])
        busy = {w for w, _ in self._restarting.values()} | self.retired
        idle = [w for w in reversed(range(self.size)) if w not in busy]
        running: dict = {}  # ObjectRefGenerator -> [worker, item indices, position of the next result, last progress]

        def failed(index: int, worker: int, kind: str, detail: str) -> None:
            attempts[index] += 1
            retrying = attempts[index] <= self.retries
            self.retried += retrying
            if report is not None:
                report(index, attempts[index], kind, self.describe(worker), detail, retrying)
            if retrying:
                waiting.appendleft([index])  # alone, with the same inputs
            else:
                results[index] = CallFailure(kind, attempts[index], self.describe(worker), detail)

        def stopped(stream, kind: str, detail: str) -> None:
            """The group's worker is gone mid-group: its current item failed, the rest goes to other calls."""
            worker, group, position, _ = running.pop(stream)
            if position == len(group):  # it had answered every item (and died before its call ended): none failed
                return
            rest = group[position + 1 :]
            if rest:
                waiting.extendleft(reversed(plan_groups(rest, None, max(1, self.live_size()), self.nodes_per_call)))
            failed(group[position], worker, kind, detail)

        while waiting or running:
            while idle and waiting:
                group, worker = waiting.popleft(), idle.pop()
                call = getattr(self.workers[worker], method).options(num_returns="streaming")
                stream = call.remote(*common, [items[i] for i in group])
                running[stream] = [worker, group, 0, time.monotonic()]
            done, _ = ray.wait(
                list(running) + list(self._restarting), num_returns=1, timeout=self._wait_s(running, spans)
            )
            for ready in done:
                if ready in self._restarting:
                    back = self._back(ready)
                    if back is not None:
                        idle.append(back)
                    continue
                state = running[ready]
                worker, group, position, _ = state
                try:
                    result = ray.get(next(ready))
                except StopIteration:  # the group is done
                    del running[ready]
                    idle.append(worker)
                    continue
                except ray.exceptions.RayActorError as exc:  # its process died (killed, out of memory, node lost)
                    self._restart(worker, kill=False)
                    stopped(ready, "worker died", str(exc))
                    continue
                except ray.exceptions.RayTaskError as exc:  # the group's call itself failed (its arguments, say)
                    idle.append(worker)
                    stopped(ready, "raised", str(exc))
                    continue
                state[2:] = [position + 1, time.monotonic()]
                if isinstance(result, Raised):
                    failed(group[position], worker, "raised", result.detail)
                else:
                    results[group[position]] = result
            now = time.monotonic()
            if self.timeout is not None:
                for stream, (worker, group, position, progress) in list(running.items()):
                    limit = self._limit_s(spans, group, position)
                    if now - progress > limit:
                        self._restart(worker, kill=True)
                        stopped(stream, "timed out", f"no reply within {limit:g} s (--client-timeout {self.timeout:g})")
            self._check_restarting(now)
        return results

    def _limit_s(self, spans: list[int] | None, group: list[int], position: int) -> float:
        """The time limit of the item a running group is at: --client-timeout for each node it holds."""
        nodes = spans[group[position]] if spans is not None and position < len(group) else 1
        return self.timeout * nodes

    def _wait_s(self, running: dict, spans: list[int] | None = None) -> float | None:
        """How long `run` may block for the next result: until the earliest timeout or node check is due."""
        limits = []
        if self.timeout is not None and running:
            due = min(
                progress + self._limit_s(spans, group, position) for _, group, position, progress in running.values()
            )
            limits.append(max(0.0, due - time.monotonic()))
        if self._restarting:
            limits.append(NODE_POLL_S)
        return min(limits) if limits else None

    def _restart(self, worker: int, kill: bool) -> None:
        """Have Ray restart `worker` in its place (killing a hung one first); `run` uses it again once it answers."""
        if kill:
            ray.kill(self.workers[worker], no_restart=False)
        self._probe(worker, time.monotonic() + RESTART_TIMEOUT_S)

    def _probe(self, worker: int, deadline: float) -> None:
        """Ask `worker` whether it is back (its ready() answers once Ray has restarted it), until `deadline`."""
        self._restarting[self.workers[worker].ready.remote(self._shared)] = (worker, deadline)

    def _back(self, ref) -> int | None:
        """A restarting worker answered: its index, noting where it now runs.

        None if it is not usable: it was retired (its old node is gone), or the
        answer was that it is still restarting (a probe sent just as the old
        process was being killed), and then it is asked again.
        """
        worker, deadline = self._restarting.pop(ref)
        if self._retire_lost([worker]):
            return None
        try:
            _, self.where[worker], self.nodes[worker] = ray.get(ref)
        except ray.exceptions.RayActorError as exc:
            if exc.actor_init_failed:  # the restarted process could not load the app: no use asking again
                raise RuntimeError(
                    f"client {self.describe(worker)} was restarted but cannot load the app: {exc}"
                ) from None
            self._probe(worker, deadline)
            return None
        return worker

    def _check_restarting(self, now: float) -> None:
        """Retire restarting workers whose node is gone, or that did not come back in time."""
        if not self._restarting:
            return
        self._retire_lost([worker for worker, _ in self._restarting.values()])
        for ref, (worker, deadline) in list(self._restarting.items()):
            if now > deadline:
                del self._restarting[ref]
                self._retire(worker, f"was restarted but did not come back within {RESTART_TIMEOUT_S} s")

    def _retire_lost(self, workers: list[int]) -> bool:
        """Retire those of `workers` whose node has left the cluster; whether any was.

        Ray would restart them on another node, if one had room; a lost node's
        workers are dropped instead, so that the pool never waits on a place
        that may not come (a resumed run starts a full pool again).
        """
        alive = {node["NodeID"] for node in ray.nodes() if node["Alive"]}
        lost = [worker for worker in workers if self.nodes[worker] not in alive]
        if lost and self.in_placement_group:
            # A trial that goes on after its placement group lost a bundle slows down (bench/README.md, "Faults
            # change nothing"); a run alone does not: Tune's retry from the checkpoint instead.
            raise NodeLostError(
                f"client {self.describe(lost[0])} was lost with its node {self.nodes[lost[0]]}: the "
                "trial stops here, for Tune to retry it from its last checkpoint"
            )
        for worker in lost:
            for ref, (restarting, _) in list(self._restarting.items()):
                if restarting == worker:
                    del self._restarting[ref]
            self._retire(worker, f"was lost with its node {self.nodes[worker]}")
        return bool(lost)

    def _retire(self, worker: int, why: str) -> None:
        """Stop using `worker`; NodeLostError if it was the last one."""
        ray.kill(self.workers[worker], no_restart=True)
        self.retired.add(worker)
        left = self.size - len(self.retired)
        if left == 0:
            raise NodeLostError(
                f"client {self.describe(worker)} {why}, and no client worker is left: the run stops "
                "here (inside Tune the trial is retried from its last checkpoint)"
            )
        LOGGER.warning(
            f"client {self.describe(worker)} {why}; the run goes on with {left} worker(s), its results unchanged"
        )

    def shutdown(self) -> None:
        """Stop every worker (their resources go back to the cluster or trial)."""
        for worker in self.workers:
            ray.kill(worker, no_restart=True)
        self.workers = []
        self._restarting = {}
