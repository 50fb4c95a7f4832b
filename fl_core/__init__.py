"""fedsweep's federated core: Flower clients on Ray actors, Flower strategies, a resumable server.

Library use::

    from fl_core import SimConfig, run_simulation
    result = run_simulation(SimConfig(dataset="synthetic", num_rounds=3), callbacks=[...])

Modules, one role each: config (all settings), data (loading and partitioning),
models (model registry), task (train/evaluate on tensors), client (the Flower
client), pool (Ray workers and client proxies), client_manager (seeded
sampling), strategy (Flower strategies, ordered and checkpointable),
checkpoint (safe .npz checkpoints), callbacks (progress, checkpoint, metrics),
server (the round loop), cli (the command line).
"""

from fl_core.callbacks import Callback, RoundEnd, RunEnd
from fl_core.checkpoint import ServerState, load_checkpoint, save_checkpoint
from fl_core.config import ConfigError, SimConfig
from fl_core.data import FederatedData, load_federated_data
from fl_core.server import run_simulation

__all__ = [
    "Callback",
    "ConfigError",
    "FederatedData",
    "RoundEnd",
    "RunEnd",
    "ServerState",
    "SimConfig",
    "load_checkpoint",
    "load_federated_data",
    "run_simulation",
    "save_checkpoint",
]
