"""The engine's settings for one run, the same for every app: nodes, seed, resources.

What an app computes (model, data, strategy, rounds) is its run config: the
`[tool.flwr.app.config]` table of its pyproject.toml plus overrides (see
`fl_core.apps`). These settings decide how fedsweep runs it. `validate()` catches
bad values before any data is read or Ray is started.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, fields


class ConfigError(ValueError):
    """Bad user input; the message says what is wrong and how to fix it."""


@dataclass
class RunSettings:
    """How fedsweep runs an app: how many nodes, which seed, what each worker holds."""

    pool_size: int = 100  # nodes; each gets node_config partition-id and num-partitions (Flower's num-supernodes)
    seed: int = 0  # node sampling, and the global RNGs seeded around every client and strategy call
    num_client_cpus: float = 1.0  # per client worker; also its torch thread count
    num_client_gpus: float = 0.0  # per client worker; fractions share a GPU
    server_cpus: int | None = None  # torch threads of the server process; None: what it owns (see runner)
    server_gpus: float = 0.0  # 0: the server process sees no GPU (Ray did not reserve one for it)
    max_parallel_clients: int | None = None  # cap on client workers
    nodes_per_call: int | None = None  # most messages (cohorts) one worker call carries; None: split over the workers
    cohort_size: int = 8  # most messages of a phase one cohort function call takes (fl_core.cohorts); 1: none
    # Faults (see pool.py and grid.py): none of these changes a result, but for dropping a client.
    client_retries: int = 2  # attempts after the first of a call that raised, lost its worker or timed out
    client_timeout: float | None = None  # seconds one ClientApp call may take; None: no limit
    on_client_failure: str = "abort"  # once a call's retries are spent: "abort" the run, or "drop" it for the round
    min_reply_share: float = 0.5  # with drop: a phase of a round with fewer replies per message sent fails
    # Central evaluation (the evaluate_fn an app gives fl_core.start; see fl_core.central).
    central_eval_on: str = "auto"  # a ShardedEvaluation's shards on the "workers" side by side, or in the "server"
    central_eval_every: int = 1  # rounds between central evaluations; the last round always has one

    def to_dict(self) -> dict:
        """Plain dict of every setting (JSON-ready)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "RunSettings":
        """Build from a dict, refusing keys that are not settings."""
        unknown = sorted(set(values) - set(SETTING_NAMES))
        if unknown:
            raise ConfigError(f"unknown setting(s) {', '.join(unknown)}; engine settings: {', '.join(SETTING_NAMES)}")
        return cls(**values)

    def validate(self, local_cpus: int | None = None, local_gpus: int | None = None) -> "RunSettings":
        """Raise ConfigError on the first bad value; return self when all is well.

        `local_cpus`/`local_gpus` are the resources of the local Ray cluster about
        to be started (None when joining an existing cluster, checked once joined).
        """

        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ConfigError(message)

        need(self.pool_size >= 1, f"--pool-size must be at least 1, got {self.pool_size}")
        need(self.num_client_cpus > 0, f"--num-client-cpus must be positive, got {self.num_client_cpus}")
        need(self.num_client_gpus >= 0, f"--num-client-gpus must be >= 0, got {self.num_client_gpus}")
        need(
            self.server_cpus is None or self.server_cpus >= 1,
            f"--server-cpus must be at least 1, got {self.server_cpus}",
        )
        need(
            self.server_gpus >= 0 and math.isfinite(self.server_gpus),
            f"--server-gpus must be >= 0, got {self.server_gpus}",
        )
        for flag, gpus in (("--num-client-gpus", self.num_client_gpus), ("--server-gpus", self.server_gpus)):
            need(
                gpus <= 1 or gpus == int(gpus),  # Ray's rule: a share of one GPU, or whole GPUs
                f"{flag} {gpus:g}: Ray hands out a share of one GPU (at most 1) or whole GPUs; use 1 or "
                f"{math.ceil(gpus)}",
            )
        need(
            self.max_parallel_clients is None or self.max_parallel_clients >= 1,
            f"--max-parallel-clients must be at least 1, got {self.max_parallel_clients}",
        )
        need(
            self.nodes_per_call is None or self.nodes_per_call >= 1,
            f"--nodes-per-call must be at least 1, got {self.nodes_per_call}",
        )
        need(self.cohort_size >= 1, f"--cohort-size must be at least 1, got {self.cohort_size}")
        need(self.client_retries >= 0, f"--client-retries must be 0 or more, got {self.client_retries}")
        need(
            self.client_timeout is None or (self.client_timeout > 0 and math.isfinite(self.client_timeout)),
            f"--client-timeout must be a positive number of seconds, got {self.client_timeout}",
        )
        need(
            self.on_client_failure in FAILURE_POLICIES,
            f"--on-client-failure must be one of {', '.join(FAILURE_POLICIES)}, got {self.on_client_failure!r}",
        )
        need(0 < self.min_reply_share <= 1, f"--min-reply-share must be in (0, 1], got {self.min_reply_share}")
        need(
            self.central_eval_on in CENTRAL_EVAL_PLACES,
            f"--central-eval-on must be one of {', '.join(CENTRAL_EVAL_PLACES)}, got {self.central_eval_on!r}",
        )
        need(self.central_eval_every >= 1, f"--central-eval-every must be at least 1, got {self.central_eval_every}")
        if local_cpus is not None:
            need(
                self.num_client_cpus <= local_cpus,
                f"--num-client-cpus {self.num_client_cpus} is more than this machine's {local_cpus} CPUs: "
                "lower it, or join a larger cluster with --address",
            )
        if local_gpus is not None:
            need(
                self.num_client_gpus == 0 or self.num_client_gpus <= local_gpus,
                f"--num-client-gpus {self.num_client_gpus} asks for more GPUs than this machine's {local_gpus}: "
                "use --num-client-gpus 0 or join a cluster with GPUs via --address",
            )
            need(
                self.server_gpus == 0 or self.server_gpus <= local_gpus,
                f"--server-gpus {self.server_gpus} asks for more GPUs than this machine's {local_gpus}",
            )
        return self


SETTING_NAMES = tuple(f.name for f in fields(RunSettings))
FAILURE_POLICIES = ("abort", "drop")
CENTRAL_EVAL_PLACES = ("auto", "workers", "server")
# Settings that decide the data and the sampling: a checkpoint resumes only under the same values.
RESUME_FIXED_SETTINGS = ("pool_size", "seed")
# Settings whose change on resume changes floating-point results (thread counts and cohorts change reduction order).
ROUNDING_SETTINGS = ("num_client_cpus", "server_cpus", "central_eval_on", "cohort_size")
# The Ray system config of a Ray that fedsweep starts (and of cluster.yaml's head): a result up to 1 MiB (a small
# model's reply) goes back to the driver inside the reply message instead of through the raylet's object store,
# a third of the time and CPU at 250 KB; from 1 MiB on the two cost the same (bench/README.md, "Replies inline").
RAY_SYSTEM_CONFIG = {"max_direct_call_object_size": 1 << 20}


def setting_type(name: str) -> tuple[type, bool]:
    """(int, float or str; whether None is allowed) of RunSettings field `name`, read from its annotation."""
    annotation = str(next(f.type for f in fields(RunSettings) if f.name == name))  # a string: postponed annotations
    return {"int": int, "float": float, "str": str}[annotation.split(" ")[0]], "None" in annotation


def local_resources() -> tuple[int, int]:
    """(CPUs, GPUs) of this machine, as a local Ray started here would see them.

    GPUs are counted as NVIDIA's driver lists them (CUDA_VISIBLE_DEVICES, when
    set, narrows them), without importing torch: that import costs seconds
    before Ray can start, and the checks that need the count come first.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        devices = [d.strip() for d in visible.split(",") if d.strip()]
        return os.cpu_count() or 1, len(devices[: devices.index("-1")] if "-1" in devices else devices)
    driver = "/proc/driver/nvidia/gpus"
    return os.cpu_count() or 1, len(os.listdir(driver)) if os.path.isdir(driver) else 0


def check_can_create(folder: str, flag: str) -> None:
    """ConfigError unless `folder` exists or can be made: its nearest existing parent is a writable folder."""
    parent = os.path.abspath(folder)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ConfigError(f"{flag} {folder} cannot be created: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {folder} is not writable: no permission to write in {parent}")


# Flower's template run-config keys of client sampling: phase -> (fraction key, minimum key).
SAMPLING_KEYS = {
    "train": ("fraction-train", "min-train-nodes"),
    "evaluate": ("fraction-evaluate", "min-evaluate-nodes"),
}


def sampled_nodes(run_config: dict, pool_size: int, phase: str) -> int:
    """Nodes Flower's strategies sample for `phase` ("train"/"evaluate") from the template keys (0: the phase is off).

    As `Strategy.sample_nodes` counts: max(int(pool x fraction), the minimum; Flower's default 2), at most the pool.
    """
    fraction_key, minimum_key = SAMPLING_KEYS[phase]
    fraction = float(run_config.get(fraction_key, 0.0))
    if fraction == 0:
        return 0
    return min(pool_size, max(int(pool_size * fraction), int(run_config.get(minimum_key, 2))))


def clients_per_round(run_config: dict, pool_size: int) -> int | None:
    """Most clients one round sends work to, from Flower's template run-config keys; None if the app has none.

    Reads `fraction-train`/`min-train-nodes` and `fraction-evaluate`/`min-evaluate-nodes`
    (the names Flower's templates and strategies use). Sizes the worker pool.
    """
    if "fraction-train" not in run_config:
        return None
    return max(1, max(sampled_nodes(run_config, pool_size, "train"), sampled_nodes(run_config, pool_size, "evaluate")))
