"""The round loop, and the two calls an app makes to hand its rounds to fedsweep.

`start(strategy, grid, ...)` takes the arguments of Flower's `strategy.start`.
Under fedsweep it runs the rounds itself, resumable from any round:

    configure_train -> grid -> aggregate_train -> configure_evaluate -> grid
    -> aggregate_evaluate -> central evaluation (every round, or every N-th: fl_core.central)

(the order of Flower's own `Strategy.start`), with the global generators
reseeded from (seed, round, phase) before every strategy call and central
evaluation, node sampling drawn from (seed, round), the strategy's state and
every node's Context state in each round's checkpoint, and every round reported
to the callbacks. Anywhere else (Flower's own engine) it calls
`strategy.start(...)` and returns its result, so the app runs unchanged there.

`evaluate_all_nodes(grid, arrays, config)` sends one evaluate message to every
node and summarises their metrics (mean, min, 10th percentile, max); under
fedsweep the summary also lands in the run's summary and its last Tune report.

While fedsweep runs a ServerApp, Flower's `Strategy.start` called with
fedsweep's grid is this loop too (`strategy_start_runs_here`), so an unchanged
app that calls `strategy.start(grid=grid, ...)` as Flower's templates do gets
the same. Only a strategy class that overrides `start` with a loop of its own
(or a ServerApp that sends its messages itself) runs its own rounds: the grid
sees its messages and `fl_core.observer.RoundObserver` reports what they show (client-side
metrics per round), but such a run cannot be checkpointed or resumed, which
the observer says in one line when its first round starts.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp.strategy import Result, Strategy

from fl_core import central, seeding
from fl_core.checkpoint import CheckpointError, ServerState
from fl_core.metrics import CENTRAL_ROUND, Phase, prefixed, round_row
from fl_core.strategies import innermost, mean_weighting_key, restore_strategy_state, strategy_state


def start(
    strategy,
    grid,
    initial_arrays: ArrayRecord,
    num_rounds: int = 3,
    timeout: float = 3600,
    train_config: ConfigRecord | None = None,
    evaluate_config: ConfigRecord | None = None,
    evaluate_fn=None,
) -> Result:
    """Drop-in for `strategy.start(grid=grid, initial_arrays=..., ...)`: fedsweep runs the rounds when it hosts the app.

    Returns Flower's `Result`. After a resume it holds the rounds run in this
    process (the checkpoint's metrics history has them all).
    """
    run = running_here(grid)
    if run is None:
        return strategy.start(
            grid=grid,
            initial_arrays=initial_arrays,
            num_rounds=num_rounds,
            timeout=timeout,
            train_config=train_config,
            evaluate_config=evaluate_config,
            evaluate_fn=evaluate_fn,
        )
    return run_rounds(
        run,
        strategy,
        initial_arrays,
        num_rounds,
        timeout,
        ConfigRecord() if train_config is None else train_config,
        ConfigRecord() if evaluate_config is None else evaluate_config,
        evaluate_fn,
    )


def running_here(grid):
    """The fedsweep run (runner.RunInProgress) whose ServerApp runs on `grid` now; None under any other engine."""
    return getattr(grid, "run_in_progress", None)


@contextmanager
def strategy_start_runs_here():
    """Within the block, Flower's `Strategy.start` on fedsweep's grid runs this loop, as `fl_core.start` does.

    Every strategy of Flower inherits `start` from its base class, so the
    ServerApp's `strategy.start(grid=grid, ...)` lands here, and so does a
    subclass's own `start` that calls `super().start(...)`. With any other grid
    (and outside the block) Flower's `start` runs as written.
    """
    flower_start = Strategy.start

    def start_here(
        self,
        grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn=None,
    ) -> Result:
        if running_here(grid) is None:
            return flower_start(
                self, grid, initial_arrays, num_rounds, timeout, train_config, evaluate_config, evaluate_fn
            )
        return start(self, grid, initial_arrays, num_rounds, timeout, train_config, evaluate_config, evaluate_fn)

    start_here.__doc__, start_here.__wrapped__ = flower_start.__doc__, flower_start
    Strategy.start = start_here
    try:
        yield
    finally:
        Strategy.start = flower_start


def check_same_model(saved: ArrayRecord, initial: ArrayRecord) -> None:
    """CheckpointError unless the checkpoint's arrays have the names and shapes of the app's initial arrays.

    (Not the dtypes: strategies may change them; Flower's FedAdam returns float64.)
    """

    def layout(record: ArrayRecord) -> list:
        return [(k, tuple(a.shape)) for k, a in record.items()]

    if layout(saved) != layout(initial):
        raise CheckpointError(
            "the checkpoint holds another model than the app builds (array names or shapes "
            "differ): resume it with the code that made it"
        )


def latest_central(history: list[dict], initial: MetricRecord | None) -> dict:
    """The central metrics (with central_round) of the latest round evaluated: the history's last, else round 0's.

    (A checkpoint of a fedsweep before central_eval_every has no central_round: its rounds were all evaluated.)
    """
    row = history[-1] if history else {}
    values = {k: v for k, v in row.items() if k.startswith("central_") and k not in (CENTRAL_ROUND, "central_seconds")}
    if values:
        return {**values, CENTRAL_ROUND: row.get(CENTRAL_ROUND, row["round"])}
    return {} if initial is None else {**prefixed("central_", initial), CENTRAL_ROUND: 0}


def run_rounds(
    run,
    strategy,
    initial_arrays: ArrayRecord,
    num_rounds: int,
    timeout: float,
    train_config: ConfigRecord,
    evaluate_config: ConfigRecord,
    evaluate_fn,
) -> Result:
    """The resumable loop over `strategy`'s rounds on `run`'s grid (see the module doc)."""
    if run.rounds_started:
        raise RuntimeError(
            "the ServerApp started its rounds twice (strategy.start or fl_core.start): fedsweep runs "
            "(and resumes) one start per run"
        )
    run.rounds_started = True
    run.observer.active = False  # the loop reports the rounds itself
    grid = run.grid
    result = Result()
    if run.resume is not None:
        saved = run.resume
        check_same_model(saved.arrays, initial_arrays)
        if saved.strategy != type(strategy).__name__:
            raise CheckpointError(
                f"the checkpoint was made with strategy {saved.strategy}, the app now builds "
                f"{type(strategy).__name__}: resume it with its own settings"
            )
        restore_strategy_state(strategy, saved.strategy_state)
        arrays, first = saved.arrays, saved.round + 1
    else:
        arrays, first = initial_arrays, 1
        if evaluate_fn is not None:
            initial = central.evaluate(run, evaluate_fn, 0, arrays)
            if initial is not None:
                result.evaluate_metrics_serverapp[0] = initial
    latest = latest_central(run.history, result.evaluate_metrics_serverapp.get(0))  # what skipped rounds carry
    result.arrays = arrays
    grid.pool.wait_ready()  # worker start-up (overlapped with the ServerApp's own) is not part of round 1
    weighting_key = getattr(innermost(strategy), "weighted_by_key", "num-examples")
    epochs = float(train_config.get("local-epochs", 1))
    for server_round in range(first, num_rounds + 1):
        t0 = time.perf_counter()
        failed_before = grid.failed_attempts
        run.sampler.start_round(server_round)
        with run.seeded(server_round, seeding.TRAIN):
            messages = strategy.configure_train(server_round, arrays, train_config, grid)
        with grid.combining(mean_weighting_key(strategy, "train")):
            replies = grid.send_and_receive(messages, timeout=timeout)
        with run.seeded(server_round, seeding.AGGREGATE_TRAIN):
            new_arrays, train_metrics = strategy.aggregate_train(server_round, replies)
        t1 = time.perf_counter()
        train = Phase.of("train_", train_metrics, replies, weighting_key, t1 - t0, grid.nodes_in)
        if new_arrays is not None:
            arrays = result.arrays = new_arrays
        if train_metrics is not None:
            result.train_metrics_clientapp[server_round] = train_metrics
        with run.seeded(server_round, seeding.EVALUATE):
            messages = strategy.configure_evaluate(server_round, arrays, evaluate_config, grid)
        with grid.combining(mean_weighting_key(strategy, "evaluate")):
            replies = grid.send_and_receive(messages, timeout=timeout)
        with run.seeded(server_round, seeding.AGGREGATE_EVALUATE):
            fed_metrics = strategy.aggregate_evaluate(server_round, replies)
        if fed_metrics is not None:
            result.evaluate_metrics_clientapp[server_round] = fed_metrics
        t2 = time.perf_counter()
        fed = Phase.of("fed_", fed_metrics, replies, weighting_key, t2 - t1, grid.nodes_in)
        if evaluate_fn is not None and central.is_due(server_round, num_rounds, run.settings.central_eval_every):
            scored = central.evaluate(run, evaluate_fn, server_round, arrays)
            if scored is not None:
                result.evaluate_metrics_serverapp[server_round] = scored
                latest = {**prefixed("central_", scored), CENTRAL_ROUND: server_round}
        t3 = time.perf_counter()
        metrics = round_row(
            server_round,
            train,
            fed,
            latest,
            retries=grid.failed_attempts - failed_before,
            seconds=t3 - t0,
            epochs=epochs,
            central_seconds=t3 - t2,
        )
        run.history.append(metrics)
        state = ServerState(
            round=server_round,
            arrays=arrays,
            strategy=type(strategy).__name__,
            strategy_state=strategy_state(strategy),
            node_states=grid.node_states(),
            history=list(run.history),
            app=run.app.name,
            app_dir=run.app.directory,
            run_config=dict(run.run_config),
            settings=run.settings.to_dict(),
        )
        run.round_done(server_round, num_rounds, first, metrics, state)
    return result


def evaluate_all_nodes(
    grid,
    arrays: ArrayRecord,
    config: ConfigRecord | None = None,
    *,
    server_round: int = 0,
    weighted_by_key: str = "num-examples",
    arrayrecord_key: str = "arrays",
    configrecord_key: str = "config",
) -> dict:
    """Every node evaluates `arrays`; returns {"num_clients", "stats": {metric: {mean, min, p10, max}}, "per_client"}.

    `per_client` maps node ids (as strings) to each node's metrics. Nodes that
    reply with an error are left out. Works under any engine; under fedsweep the
    result also goes into the run's summary and final report.
    """
    content = ConfigRecord(dict(config or {}))
    content["server-round"] = server_round
    messages = [
        Message(RecordDict({arrayrecord_key: arrays, configrecord_key: content}), node_id, MessageType.EVALUATE)
        for node_id in grid.get_node_ids()
    ]
    run = running_here(grid)
    with run.observer.paused() if run is not None else _nothing():
        replies = grid.send_and_receive(messages)
    per_client = {}
    for reply in replies:
        if reply.has_error():
            continue
        record = next(iter(reply.content.metric_records.values()), {})
        per_client[str(reply.metadata.src_node_id)] = {
            k: float(v) for k, v in record.items() if isinstance(v, (int, float)) and k != weighted_by_key
        }
    stats = {}
    for metric in sorted({k for values in per_client.values() for k in values}):
        values = np.array([v[metric] for v in per_client.values() if metric in v])
        stats[metric] = {
            "mean": float(values.mean()),
            "min": float(values.min()),
            "p10": float(np.percentile(values, 10)),
            "max": float(values.max()),
        }
    summary = {"num_clients": len(per_client), "stats": stats, "per_client": per_client}
    if run is not None:
        run.client_evaluation = summary
    return summary


def wait_for_nodes(grid, minimum: int = 1, settle_s: float = 0.5) -> int:
    """How many nodes the run has: at once under fedsweep; under Flower's engine, once they have registered.

    Flower's engine registers its nodes while the ServerApp starts; this waits
    until at least `minimum` are there and their number held still for `settle_s`.
    """
    if running_here(grid) is not None:
        return len(grid.get_node_ids())
    count = -1
    while True:
        now = len(list(grid.get_node_ids()))
        if now >= minimum and now == count:
            return now
        count = now
        time.sleep(settle_s)


@contextmanager
def _nothing():
    yield
