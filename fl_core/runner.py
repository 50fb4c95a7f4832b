"""One run of a Flower app on Ray: data shared, workers started, the ServerApp called with fedsweep's grid.

`run_app` is what `python -m fl_core` and each Tune trial call. It calls the
app's ServerApp in this process with a `RayGrid`; the rounds of its
`strategy.start` (or `fl_core.start`) run in the loop of loop.py; an app that
loops by itself is reported from what the grid sees. Everything around the rounds (printing, checkpoints,
metrics files, Tune reports) is a callback.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager

from flwr.app import Context, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fl_core import central, seeding, shared_data
from fl_core.apps import FlowerApp, bind_seed
from fl_core.callbacks import Callback, RoundEnd, RunEnd
from fl_core.checkpoint import ServerState
from fl_core.grid import RayGrid
from fl_core.loop import strategy_start_runs_here
from fl_core.observer import RoundObserver
from fl_core.settings import ConfigError, RunSettings

# Ray, torch and the pool (which imports Ray) are imported in the functions that use them: fl_core is imported by
# apps (for @shared and start, also under Flower's engine) and by the command line before it checks its input.

RUN_ID = 1  # Flower gives each run an id; fedsweep runs one app per process at a time
SERVER_NODE_ID = 0  # the ServerApp's Context.node_id, as in Flower's simulation


class RunInProgress:
    """What the round loop and the grid's observer need of the run in progress."""

    def __init__(self, app: FlowerApp, settings: RunSettings, run_config: dict, grid, callbacks, resume) -> None:
        self.app, self.settings, self.run_config, self.grid = app, settings, run_config, grid
        self.callbacks = list(callbacks)
        self.resume: ServerState | None = resume
        self.history: list[dict] = list(resume.history) if resume is not None else []
        self.sampler = seeding.NodeSampler(settings.seed)
        self.observer = RoundObserver(self)
        grid.listeners.append(self.observer)
        self.rounds_started = False
        self.client_evaluation: dict = {}
        self.last_state: ServerState | None = None
        # Where a sharded central evaluation runs (--central-eval-on, auto resolved for this pool and server).
        self.central_on = central.place(settings, grid.pool.size, server_threads(settings))

    @contextmanager
    def seeded(self, server_round: int, phase: int):
        """Run the block with the global generators seeded from (seed, round, phase)."""
        seeding.seed_globals(seeding.derive_seed(self.settings.seed, server_round, phase))
        yield

    def round_done(
        self, server_round: int, num_rounds: int | None, first: int, metrics: dict, state: ServerState | None
    ) -> None:
        """Tell every callback a round ended."""
        self.last_state = state
        event = RoundEnd(server_round, num_rounds, first, metrics, state)
        for callback in self.callbacks:
            callback.on_round_end(event)


def import_app(app: FlowerApp) -> None:
    """Import the app's ServerApp and ClientApp modules here (registering its @shared functions)."""
    app.load("server")
    app.load("client")
    shared_data.app_imported(app.directory)


@contextmanager
def bad_data_is_bad_input():
    """Within the block, a data loader's ValueError or FileNotFoundError becomes a ConfigError (exit status 2)."""
    try:
        yield
    except ConfigError:
        raise
    except (ValueError, FileNotFoundError) as exc:
        raise ConfigError(str(exc)) from None


def prepare_shared(app: FlowerApp, run_config: dict, num_partitions: int, available: list | None = None) -> list:
    """Import the app and compute its @shared data for this run (what `available` lacks); meant before Ray starts."""
    import_app(app)
    values = list(available or [])
    with bad_data_is_bad_input():
        return values + shared_data.compute_missing(run_config, num_partitions, values)


def server_threads(settings: RunSettings) -> int:
    """Torch threads of the server process (central evaluation): the CPUs it owns.

    In a Tune trial that is bundle 0 of the trial's placement group. Alone it
    is every local core: client workers are idle while the server evaluates.
    """
    import ray

    if settings.server_cpus is not None:
        return settings.server_cpus
    pg = ray.util.get_current_placement_group()
    if pg is not None:
        return max(1, int(pg.bundle_specs[0].get("CPU", 1)))
    return os.cpu_count() or 1


class GpuHolder:
    """An actor that only holds GPUs through Ray: a standalone run's server share (see reserve_server_gpus)."""

    def gpu_ids(self) -> list[str]:
        """The GPU ids Ray gave this actor, as CUDA_VISIBLE_DEVICES names them."""
        import ray

        return [str(i) for i in ray.get_gpu_ids()]


def reserve_server_gpus(settings: RunSettings) -> tuple[object | None, str | None]:
    """(holder actor or None, the server's CUDA_VISIBLE_DEVICES or None to leave it), before the workers start.

    --server-gpus 0: "" (the server sees no GPU). In a Tune trial, bundle 0 of
    the trial holds them and Ray has set this process's CUDA_VISIBLE_DEVICES.
    Alone the driver is no Ray worker, so an actor on this node holds them for
    the run: Ray then gives the client workers the other GPUs (or the rest of a
    shared one), and the server uses the ones Ray gave the actor. Reserved
    before the workers so that a whole GPU is still free to hold.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if settings.server_gpus == 0:
        return None, ""
    if ray.util.get_current_placement_group() is not None:
        return None, None
    here = ray.get_runtime_context().get_node_id()
    node_gpus = next((n["Resources"].get("GPU", 0) for n in ray.nodes() if n["NodeID"] == here and n["Alive"]), 0)
    if node_gpus < settings.server_gpus:
        raise ConfigError(
            f"--server-gpus {settings.server_gpus:g}: the server's machine has {node_gpus:g} GPUs in "
            "Ray; use --server-gpus 0 or run fl_core on a machine with a GPU"
        )
    holder = (
        ray.remote(GpuHolder)
        .options(
            num_cpus=0,
            num_gpus=settings.server_gpus,
            scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False),
        )
        .remote()
    )
    try:
        ids = ray.get(holder.gpu_ids.remote(), timeout=120)
    except ray.exceptions.GetTimeoutError:
        ray.kill(holder)
        raise RuntimeError(
            f"--server-gpus {settings.server_gpus:g}: Ray could not hold that much GPU on the "
            "server's machine within 120 s (other work holds its GPUs)"
        ) from None
    return holder, ",".join(ids)


@contextmanager
def server_process(settings: RunSettings, visible: str | None):
    """The server's share of this process: its thread count, and the GPUs `visible` (reserve_server_gpus) names.

    CUDA_VISIBLE_DEVICES only counts before CUDA starts in a process, so a
    server that already started it keeps what it sees.
    """
    import torch

    threads = torch.get_num_threads()
    previous = os.environ.get("CUDA_VISIBLE_DEVICES")
    change = visible is not None and not torch.cuda.is_initialized()
    if change:
        os.environ["CUDA_VISIBLE_DEVICES"] = visible
    torch.set_num_threads(server_threads(settings))
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        if change:
            if previous is None:
                os.environ.pop("CUDA_VISIBLE_DEVICES", None)
            else:
                os.environ["CUDA_VISIBLE_DEVICES"] = previous


def run_app(
    app: FlowerApp,
    run_config: dict,
    settings: RunSettings,
    *,
    callbacks: list[Callback] | tuple = (),
    resume: ServerState | None = None,
    shared_values: list | None = None,
) -> RunEnd:
    """Run (or continue, from `resume`) the app on the connected Ray cluster; returns the run's history.

    `shared_values` are @shared results computed already (prepare_shared, or a
    sweep's); whatever else the app shares is computed here. The settings and
    the app's run-config check are applied first (ConfigError); the app's
    run-config key `seed`, if it has one, is set to the engine's seed. Ray is
    started locally if it is not running.
    """
    import ray

    from fl_core.pool import WorkerPool

    settings.validate()
    run_config = bind_seed(app, run_config, settings.seed)
    app.check(run_config, settings.pool_size)
    if not ray.is_initialized():
        ray.init()
    t_start = time.perf_counter()
    values = prepare_shared(app, run_config, settings.pool_size, shared_values)
    shared_data.publish(values)
    shared_data.install(values)
    holder, server_visible = reserve_server_gpus(settings)
    try:
        pool = WorkerPool(app, settings, run_config, values, RUN_ID)  # workers start while the server gets ready
    except BaseException:
        if holder is not None:
            ray.kill(holder)
        raise
    try:
        grid = RayGrid(
            pool,
            num_nodes=settings.pool_size,
            run_config=run_config,
            seed=settings.seed,
            run_id=RUN_ID,
            node_states=resume.node_states if resume is not None else None,
            on_client_failure=settings.on_client_failure,
            min_reply_share=settings.min_reply_share,
            client_app=app.load("client"),
            cohort_size=settings.cohort_size,
        )
        run = RunInProgress(app, settings, run_config, grid, callbacks, resume)
        server_app = app.load("server")
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = RUN_ID, SERVER_NODE_ID, 1
        grid.run_in_progress = run  # what fl_core.start and Strategy.start find on the grid the ServerApp gets
        with (
            server_process(settings, server_visible),
            seeding.seeded_node_sampling(run.sampler),
            strategy_start_runs_here(),
        ):
            seeding.seed_globals(seeding.derive_seed(settings.seed, 0, seeding.MAIN))
            server_app(
                grid,
                Context(
                    run_id=RUN_ID,
                    node_id=SERVER_NODE_ID,
                    node_config={},
                    state=RecordDict(),
                    run_config=dict(run_config),
                ),
            )
        run.observer.flush()
        state = run.last_state if run.last_state is not None else resume
        if state is not None and run.client_evaluation:
            state.extra = {**state.extra, "client_evaluation": run.client_evaluation}
        end = RunEnd(list(run.history), run.client_evaluation, time.perf_counter() - t_start, state)
        for callback in run.callbacks:
            callback.on_run_end(end)
        return end
    finally:
        pool.shutdown()
        if holder is not None:
            ray.kill(holder)
        shared_data.uninstall()
