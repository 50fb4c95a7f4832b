"""fedsweep's engine: any Flower app (Message API) run on a Ray worker pool, resumable round by round.

In an app (these work under Flower's own engine too)::

    import fl_core
    strategy.start(grid=grid, initial_arrays=..., evaluate_fn=...)  # unchanged: under fedsweep its loop runs it
    fl_core.start(strategy, grid, initial_arrays=..., num_rounds=..., evaluate_fn=...)   # the same, spelled out
    fl_core.evaluate_all_nodes(grid, arrays, config)                                     # every node scores the model
    fl_core.wait_for_nodes(grid)                     # the number of nodes (Flower's engine registers them late)
    fl_core.ShardedEvaluation(evaluate_shard, num_shards, combine)  # an evaluate_fn whose shards run on the workers

    @fl_core.shared                                  # loaded once per run, read from Ray's object store
    def load_data(run_config, num_partitions): ...

    @fl_core.cohort(app, "train")                    # several nodes' messages in one call (fedsweep only)
    def train_cohort(messages, contexts): ...        # their replies (or, while fl_core.cohorts.folding(), their mean)

Library use (what `python -m fl_core` and each Tune trial do)::

    from fl_core import RunSettings, load_app_folder, fuse_run_config, run_app
    app = load_app_folder(None)                      # None: the built-in CIFAR-10 app (apps/cifar10)
    end = run_app(app, fuse_run_config(app, {"num-server-rounds": 3}), RunSettings(pool_size=10), callbacks=[...])

Modules, one role each: settings (the engine's settings), apps (loading app
folders and run configs), shared_data (the @shared decorator: data in the
object store), cohorts (an app's cohort functions: several nodes in one
call), seeding (randomness per round, node and phase), failures (failed
calls and their reports), pool (Ray workers hosting the ClientApp), grid (the
Flower Grid over the pool, nodes' Contexts), strategies (Flower strategies by
name, their state), metrics (the names of what a round reports, and its row),
loop (the round loop, start, evaluate_all_nodes), observer (rounds of a
strategy with its own loop), central (central evaluation: when, and where:
server or workers), checkpoint (safe .npz checkpoints), callbacks (progress,
checkpoints, metrics files), plots (metrics.png; partitions.csv/.png from an
app's `[tool.fedsweep] partitioner` hook), partitions (a partitioner's row
indices and label counts without a data set per partition), tracking (MLflow
and W&B), logs (the `fedsweep` logger), runner (one run), flower_engine (the
same app on Flower's simulation engine, for comparison), cli (the command
line).

A run is one federated job: one call of the app's ServerApp. Its names:
RunSettings (the engine's settings: pool size, resources, seed, faults),
run_config (the app's own settings, Flower's run config), runner.RunInProgress
(what the round loop and the observer share while it runs, found on the grid
as `grid.run_in_progress`), RunEnd (what callbacks learn once it is over), and
Flower's `Run` (the run id and status record Flower's Grid API carries).
"""

from fl_core.apps import BUILTIN_APP_DIR, FlowerApp, fuse_run_config, load_app_folder, parse_run_config
from fl_core.callbacks import Callback, RoundEnd, RunEnd
from fl_core.central import ShardedEvaluation
from fl_core.checkpoint import ServerState, load_checkpoint, save_checkpoint
from fl_core.cohorts import cohort
from fl_core.loop import evaluate_all_nodes, start, wait_for_nodes
from fl_core.runner import run_app
from fl_core.settings import ConfigError, RunSettings
from fl_core.shared_data import shared

__all__ = [
    "BUILTIN_APP_DIR",
    "Callback",
    "ConfigError",
    "FlowerApp",
    "RoundEnd",
    "RunEnd",
    "RunSettings",
    "ServerState",
    "ShardedEvaluation",
    "cohort",
    "evaluate_all_nodes",
    "fuse_run_config",
    "load_app_folder",
    "load_checkpoint",
    "parse_run_config",
    "run_app",
    "save_checkpoint",
    "shared",
    "start",
    "wait_for_nodes",
]
