"""The names of what a run reports: one list, read by the callbacks, the Tune trainable and the sweep report.

Per round (see fl_core.loop): `round`; the model's metrics, each prefixed by
where it was measured (MODEL_PREFIXES: the central evaluation, the federated
evaluation, training) unless the app's key already starts with the prefix;
counts (COUNT_KEYS), timings (TIMING_KEYS), faults (FAULT_KEYS) and which round the central metrics are of
(PROVENANCE_KEYS). At the end, the all-node
evaluation's statistics flatten to `clients_<metric>_<mean|min|p10|max>`.
"""

from __future__ import annotations

MODEL_PREFIXES = ("central_", "fed_", "train_")
CLIENTS_PREFIX = "clients_"
# Replies without error of the train and evaluate phases, the train replies' num-examples, and the replies that
# carry an error (clients dropped under --on-client-failure drop).
COUNT_KEYS = ("train_clients", "fed_clients", "train_samples", "train_dropped", "fed_dropped")
# Metrics that measure the machine, not the model: they differ run to run.
# samples_per_s: num-examples x the train config's local-epochs (1 if absent) per second of the train phase.
TIMING_KEYS = ("seconds", "train_seconds", "fed_seconds", "central_seconds", "samples_per_s")
# Client calls run again after a fault (fl_core.pool); the results do not change, this count may.
FAULT_KEYS = ("retries",)
MACHINE_KEYS = TIMING_KEYS + FAULT_KEYS  # what differs between two runs of the same settings
# The round whose model the central_* metrics scored: with --central-eval-every N the rounds between evaluations
# carry the latest ones (fl_core.central).
CENTRAL_ROUND = "central_round"
PROVENANCE_KEYS = (CENTRAL_ROUND,)


def is_model_metric(key: str) -> bool:
    """Whether a round's key is a metric of the model (not a count or a timing)."""
    return (key.startswith(MODEL_PREFIXES) and key not in COUNT_KEYS and key not in MACHINE_KEYS
            and key not in PROVENANCE_KEYS)


def scored_round(rounds, key: str):
    """The round whose model `key` describes, for one round's metrics (a dict) or a table of rounds (pandas, a
    column): `central_round` for the central metrics when it is there (rounds between central evaluations carry
    the latest), else `round`."""
    return rounds[CENTRAL_ROUND] if key.startswith("central_") and CENTRAL_ROUND in rounds else rounds["round"]


def model_metrics(metrics: dict) -> dict:
    """The metrics of a round that describe the model: central_*, then fed_*, then train_*."""
    return {k: v for prefix in MODEL_PREFIXES for k, v in metrics.items() if k.startswith(prefix) and is_model_metric(k)}


def client_evaluation_metrics(client_evaluation: dict) -> dict:
    """The all-node evaluation's statistics (fl_core.evaluate_all_nodes) as flat metrics."""
    return {f"{CLIENTS_PREFIX}{metric}_{stat}": value
            for metric, stats in client_evaluation.get("stats", {}).items() for stat, value in stats.items()}
