"""Central evaluation: the global model scored on held-out data after a round, in the server or on the workers.

An app gives fedsweep its central evaluation as Flower's strategies take it, an
`evaluate_fn(server_round, arrays) -> MetricRecord` passed to `fl_core.start`.
fedsweep calls it after round 0 (the initial model), after every
`central_eval_every`-th round and after the last; the rounds in between carry
the latest result, with `central_round` naming the round whose model it
scored, so that every round reports the same metrics (Tune's schedulers and
searchers refuse a report without the sweep's metric).

A plain evaluate_fn runs in the server process: serial work while every client
worker waits. An app whose evaluation splits into independent shards says so
with `ShardedEvaluation`; fedsweep then runs the shards on the run's client
workers side by side (contiguous groups of shards, one call per worker) and
combines their results in shard order. The app fixes the shards, not the number
of workers, so the metrics are the same whatever the number of workers, and the
same as the shards run one after another in the server
(`--central-eval-on server`) with the same thread count and device. Anywhere
else (Flower's own engine) a ShardedEvaluation is an ordinary evaluate_fn that
runs every shard in turn.
"""

from __future__ import annotations

from collections.abc import Callable

from flwr.app import ArrayRecord, MetricRecord

from fl_core import seeding
from fl_core.failures import FailureReporter, raise_first_failure


class ShardedEvaluation:
    """A central evaluation in fixed shards, which fedsweep spreads over the client workers."""

    def __init__(
        self,
        evaluate_shard: Callable[[int, ArrayRecord, int], dict],
        num_shards: int,
        combine: Callable[[list[dict]], MetricRecord],
    ) -> None:
        """`evaluate_shard(server_round, arrays, shard)` scores shard 0 .. num_shards-1 of the model `arrays` and
        returns plain numbers (sums, counts).

        It runs in the client workers, so it must pickle by reference: a
        module-level function of the app, or a functools.partial of one with
        small arguments (data comes from the app's @shared functions there).
        `combine(results)` gets the results in shard order and returns the
        metrics; summing them in that order keeps them independent of the workers.
        """
        if num_shards < 1:
            raise ValueError(f"a ShardedEvaluation needs at least one shard, got {num_shards}")
        self.evaluate_shard, self.num_shards, self.combine = evaluate_shard, num_shards, combine

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord:
        """Every shard in turn, in this process, combined: the evaluate_fn Flower's engine calls."""
        return self.combine([self.evaluate_shard(server_round, arrays, shard) for shard in range(self.num_shards)])


def is_due(server_round: int, num_rounds: int, every: int) -> bool:
    """Whether central evaluation runs after `server_round`: every `every`-th round, and the last."""
    return server_round % every == 0 or server_round == num_rounds


def run_shards(evaluate_shard, server_round: int, arrays: ArrayRecord, shards: list[int], seeds: list[int]) -> list:
    """`evaluate_shard` on each of `shards` in this process, the global generators seeded with its seed first."""
    return [
        seeding.seeded_call(seed, evaluate_shard, server_round, arrays, shard) for shard, seed in zip(shards, seeds)
    ]


def place(settings, workers: int, server_threads: int) -> str:
    """Where a ShardedEvaluation's shards run: "workers" or "server", resolving --central-eval-on auto.

    auto takes the workers when they hold more CPUs than the server process has
    threads (a Tune trial's 1-CPU server bundle, a driver on a cluster), or GPUs
    while the server has none; otherwise the server, which then has as much
    compute without a call per worker (bench/README.md has the figures).
    """
    if settings.central_eval_on != "auto":
        return settings.central_eval_on
    if settings.num_client_gpus > 0 and settings.server_gpus == 0:
        return "workers"
    return "workers" if workers * settings.num_client_cpus > server_threads else "server"


def evaluate(run, evaluate_fn, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
    """The app's central evaluation of `arrays` after `server_round` (0: the initial model), where the run says."""
    if not isinstance(evaluate_fn, ShardedEvaluation):
        with run.seeded(server_round, seeding.CENTRAL):
            return evaluate_fn(server_round, arrays)
    seeds = [
        seeding.derive_seed(run.settings.seed, server_round, seeding.CENTRAL, shard)
        for shard in range(evaluate_fn.num_shards)
    ]
    if run.central_on == "server":
        results = run_shards(
            evaluate_fn.evaluate_shard, server_round, arrays, list(range(evaluate_fn.num_shards)), seeds
        )
    else:
        results = _on_workers(run.grid, evaluate_fn, arrays, seeds, server_round)
    return evaluate_fn.combine(results)


def _on_workers(grid, sharded: ShardedEvaluation, arrays: ArrayRecord, seeds: list[int], server_round: int) -> list:
    """The shards' results, in shard order, computed by the pool's live workers side by side (contiguous groups)."""
    name = f"shard {{}} of {sharded.num_shards}, round {server_round}".format
    report = FailureReporter("central evaluation", name, grid.pool.retries, "the run stops after {attempts} attempt(s)")
    results = grid.pool.run(
        list(zip(range(sharded.num_shards), seeds)),
        report,
        method="apply",
        common=(sharded.evaluate_shard, server_round, arrays),
    )
    return raise_first_failure(results, lambda shard: f"central evaluation of {name(shard)}")
