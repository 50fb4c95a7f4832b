"""All settings of one simulation in one place, with their defaults and checks.

`SimConfig` is what the command line, the Tune trainable and the checkpoint all
speak. `validate()` catches bad input before any data is read or Ray is started.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, fields

PARTITIONS = ("iid", "dirichlet", "pathological")
STRATEGIES = ("fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi")
DATASETS = ("cifar10", "synthetic")
AUGMENTS = ("none", "crop-flip")

# Settings that fix the data each client holds and the model's shape: a
# checkpoint can only be resumed under the same values.
DATA_AND_MODEL_KEYS = (
    "dataset",
    "synthetic_size",
    "model",
    "pool_size",
    "partition",
    "alpha",
    "classes_per_client",
    "val_ratio",
    "seed",
)
# Settings that change how every round trains or aggregates: resuming under
# other values would not continue the same run.
TRAINING_KEYS = (
    "fraction_fit",
    "fraction_evaluate",
    "min_fit_clients",
    "min_evaluate_clients",
    "local_epochs",
    "batch_size",
    "lr",
    "momentum",
    "weight_decay",
    "augment",
    "strategy",
    "proximal_mu",
    "server_lr",
    "server_momentum",
)
# Everything else (rounds, resources, paths) may change on resume.


def setting_type(name: str) -> tuple[type, bool]:
    """(int, float or str; whether None is allowed) of SimConfig setting `name`, read from its annotation."""
    annotation = str(next(f.type for f in fields(SimConfig) if f.name == name))  # a string: postponed annotations
    return {"int": int, "float": float, "str": str}[annotation.split(" ")[0]], "None" in annotation


def local_resources() -> tuple[int, int]:
    """(CPUs, GPUs) of this machine, as a local Ray started here would see them."""
    import torch  # here, not at module level: config stays importable without torch

    return os.cpu_count() or 1, torch.cuda.device_count()


class ConfigError(ValueError):
    """Bad user input; the message says what is wrong and how to fix it."""


@dataclass
class SimConfig:
    """One federated simulation: data, clients, local training, aggregation, resources."""

    # Data and partitioning
    dataset: str = "cifar10"
    data_dir: str | None = None
    synthetic_size: int = 6000
    pool_size: int = 100
    partition: str = "iid"
    alpha: float = 0.5
    classes_per_client: int = 2
    val_ratio: float = 0.1
    # Model
    model: str = "cnn"
    # Rounds and client sampling
    num_rounds: int = 10
    fraction_fit: float = 0.1
    fraction_evaluate: float = 0.1
    min_fit_clients: int = 2
    min_evaluate_clients: int = 2
    # Local training
    local_epochs: int = 1
    batch_size: int = 32
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    augment: str = "none"
    eval_batch_size: int = 500  # 1000 ran 40% slower on CPU (cache), 500 as fast as 128-256
    # Aggregation
    strategy: str = "fedavg"
    proximal_mu: float = 0.01
    server_lr: float | None = None  # None: the strategy's own default
    server_momentum: float = 0.9
    # Resources
    num_client_cpus: float = 1.0
    num_client_gpus: float = 0.0
    server_cpus: int | None = None  # None: what the server owns (see server.server_threads)
    max_parallel_clients: int | None = None
    # Reproducibility
    seed: int = 0

    def clients_per_round(self) -> int:
        """Clients sampled for training each round, as Flower's strategies count them."""
        return max(int(self.pool_size * self.fraction_fit), self.min_fit_clients)

    def clients_per_evaluation(self) -> int:
        """Clients sampled for federated evaluation each round (0 when disabled)."""
        if self.fraction_evaluate == 0:
            return 0
        return max(int(self.pool_size * self.fraction_evaluate), self.min_evaluate_clients)

    def to_dict(self) -> dict:
        """Plain dict of every setting (JSON-ready)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "SimConfig":
        """Build from a dict, refusing keys that are not settings."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                f"unknown setting(s) {', '.join(unknown)}; known settings: {', '.join(sorted(known))}"
            )
        return cls(**values)

    def validate(self, local_cpus: int | None = None, local_gpus: int | None = None) -> "SimConfig":
        """Raise ConfigError on the first bad value; return self when all is well.

        `local_cpus`/`local_gpus` are the resources of the local Ray cluster about
        to be started (None when joining an existing cluster, checked later).
        """
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ConfigError(message)

        need(self.dataset in DATASETS, f"--dataset must be one of {', '.join(DATASETS)}, got {self.dataset!r}")
        need(self.partition in PARTITIONS, f"--partition must be one of {', '.join(PARTITIONS)}, got {self.partition!r}")
        need(self.strategy in STRATEGIES, f"--strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        need(self.augment in AUGMENTS, f"--augment must be one of {', '.join(AUGMENTS)}, got {self.augment!r}")
        from fl_core.models import MODELS  # local import: keeps config free of torch at import time

        need(self.model in MODELS, f"--model must be one of {', '.join(MODELS)}, got {self.model!r}")
        need(self.pool_size >= 1, f"--pool-size must be at least 1, got {self.pool_size}")
        need(self.num_rounds >= 1, f"--num-rounds must be at least 1, got {self.num_rounds}")
        need(0 < self.fraction_fit <= 1, f"--fraction-fit must be in (0, 1], got {self.fraction_fit}")
        need(0 <= self.fraction_evaluate <= 1, f"--fraction-evaluate must be in [0, 1], got {self.fraction_evaluate}")
        need(self.min_fit_clients >= 1, f"--min-fit-clients must be at least 1, got {self.min_fit_clients}")
        need(
            self.pool_size >= self.min_fit_clients,
            f"--pool-size {self.pool_size} is smaller than --min-fit-clients {self.min_fit_clients}: "
            "raise the pool size or lower --min-fit-clients",
        )
        need(
            self.fraction_evaluate == 0 or self.pool_size >= self.min_evaluate_clients,
            f"--pool-size {self.pool_size} is smaller than --min-evaluate-clients {self.min_evaluate_clients}: "
            "raise the pool size or lower --min-evaluate-clients",
        )
        need(self.alpha > 0 and math.isfinite(self.alpha), f"--alpha must be a positive number, got {self.alpha}")
        need(self.classes_per_client >= 1, f"--classes-per-client must be at least 1, got {self.classes_per_client}")
        need(0 <= self.val_ratio < 1, f"--val-ratio must be in [0, 1), got {self.val_ratio}")
        need(self.local_epochs >= 1, f"--local-epochs must be at least 1, got {self.local_epochs}")
        need(self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}")
        need(self.eval_batch_size >= 1, f"--eval-batch-size must be at least 1, got {self.eval_batch_size}")
        need(self.lr > 0, f"--lr must be positive, got {self.lr}")
        need(self.momentum >= 0, f"--momentum must be >= 0, got {self.momentum}")
        need(self.weight_decay >= 0, f"--weight-decay must be >= 0, got {self.weight_decay}")
        need(self.proximal_mu >= 0, f"--proximal-mu must be >= 0, got {self.proximal_mu}")
        need(self.server_lr is None or self.server_lr > 0, f"--server-lr must be positive, got {self.server_lr}")
        need(0 <= self.server_momentum < 1, f"--server-momentum must be in [0, 1), got {self.server_momentum}")
        need(self.synthetic_size >= 10, f"--synthetic-size must be at least 10, got {self.synthetic_size}")
        need(self.num_client_cpus > 0, f"--num-client-cpus must be positive, got {self.num_client_cpus}")
        need(self.num_client_gpus >= 0, f"--num-client-gpus must be >= 0, got {self.num_client_gpus}")
        need(self.server_cpus is None or self.server_cpus >= 1, f"--server-cpus must be at least 1, got {self.server_cpus}")
        need(
            self.max_parallel_clients is None or self.max_parallel_clients >= 1,
            f"--max-parallel-clients must be at least 1, got {self.max_parallel_clients}",
        )
        if local_cpus is not None:
            need(
                self.num_client_cpus <= local_cpus,
                f"--num-client-cpus {self.num_client_cpus} is more than this machine's {local_cpus} CPUs: "
                "lower it, or join a larger cluster with --address",
            )
        if local_gpus is not None and self.num_client_gpus > 0:
            need(
                self.num_client_gpus <= local_gpus,
                f"--num-client-gpus {self.num_client_gpus} asks for more GPUs than this machine's {local_gpus}: "
                "use --num-client-gpus 0 or join a cluster with GPUs via --address",
            )
        if self.data_dir is not None:
            need(
                os.path.isdir(self.data_dir),
                f"--data-dir {self.data_dir} does not exist: create it or point it at the folder holding cifar-10-batches-py",
            )
        return self


def incompatible_keys(saved: dict, current: SimConfig) -> list[str]:
    """Settings that differ between a checkpoint's config and `current` and forbid resuming."""
    now = current.to_dict()
    return [k for k in DATA_AND_MODEL_KEYS + TRAINING_KEYS if saved.get(k) != now.get(k)]
