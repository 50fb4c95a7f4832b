"""The names of what a run reports: one list, read by the callbacks, the Tune trainable and the sweep report.

Per round (see fl_core.loop): `round`; the model's metrics, each prefixed by
where it was measured (MODEL_PREFIXES: the central evaluation, the federated
evaluation, training) unless the app's key already starts with the prefix;
counts (COUNT_KEYS), timings (TIMING_KEYS), faults (FAULT_KEYS) and which round the central metrics are of
(PROVENANCE_KEYS). At the end, the all-node
evaluation's statistics flatten to `clients_<metric>_<mean|min|p10|max>`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
    return (
        key.startswith(MODEL_PREFIXES)
        and key not in COUNT_KEYS
        and key not in MACHINE_KEYS
        and key not in PROVENANCE_KEYS
    )


def scored_round(rounds, key: str):
    """The round whose model `key` describes, for one round's metrics (a dict) or a table of rounds (pandas, a
    column): `central_round` for the central metrics when it is there (rounds between central evaluations carry
    the latest), else `round`."""
    return rounds[CENTRAL_ROUND] if key.startswith("central_") and CENTRAL_ROUND in rounds else rounds["round"]


def model_metrics(metrics: dict) -> dict:
    """The metrics of a round that describe the model: central_*, then fed_*, then train_*."""
    return {
        k: v for prefix in MODEL_PREFIXES for k, v in metrics.items() if k.startswith(prefix) and is_model_metric(k)
    }


def client_evaluation_metrics(client_evaluation: dict) -> dict:
    """The all-node evaluation's statistics (fl_core.evaluate_all_nodes) as flat metrics."""
    return {
        f"{CLIENTS_PREFIX}{metric}_{stat}": value
        for metric, stats in client_evaluation.get("stats", {}).items()
        for stat, value in stats.items()
    }


def prefixed(prefix: str, record) -> dict:
    """Scalar metrics of `record` (a MetricRecord or None) with `prefix`, unless a key already starts with it; lists
    are left out."""
    out = {}
    for key, value in (record or {}).items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key if key.startswith(prefix) else prefix + key] = float(value)
    return out


def reply_counts(replies: list, weighting_key: str, nodes_in=None) -> tuple[int, int | float]:
    """(nodes that replied without error, sum of their `weighting_key` metric) of a phase's reply Messages;
    `nodes_in(reply)` says how many nodes' replies one holds (a cohort's, folded: RayGrid.nodes_in)."""
    valid = [r for r in replies if not r.has_error()]
    total = 0
    for reply in valid:
        for record in reply.content.metric_records.values():
            value = record.get(weighting_key)
            total += value if isinstance(value, (int, float)) else 0
            break
    return sum(nodes_in(r) if nodes_in else 1 for r in valid), total


@dataclass
class Phase:
    """One phase of a round (training, or the federated evaluation) as its row reports it."""

    metrics: dict = field(default_factory=dict)  # the aggregated metrics, prefixed
    clients: int = 0  # replies without error
    dropped: int = 0  # replies with an error
    samples: int | float = 0  # the replies' weighting key (num-examples), summed
    seconds: float = 0.0

    @classmethod
    def of(cls, prefix: str, record, replies: list, weighting_key: str, seconds: float, nodes_in=None) -> Phase:
        """The phase whose aggregated metrics are `record` and whose replies are `replies` (see reply_counts)."""
        clients, samples = reply_counts(replies, weighting_key, nodes_in)
        return cls(prefixed(prefix, record), clients, sum(r.has_error() for r in replies), samples, seconds)


def round_row(
    server_round: int,
    train: Phase,
    fed: Phase,
    central: dict,
    *,
    retries: int,
    seconds: float,
    epochs: float,
    central_seconds: float | None = None,
) -> dict:
    """One round's metrics, as metrics.csv, the callbacks and Tune get them (central_seconds where it was timed)."""
    row = {
        "round": server_round,
        **train.metrics,
        **fed.metrics,
        **central,
        "train_clients": train.clients,
        "fed_clients": fed.clients,
        "train_samples": train.samples,
        "train_dropped": train.dropped,
        "fed_dropped": fed.dropped,
        "retries": retries,
        "seconds": seconds,
        "train_seconds": train.seconds,
        "fed_seconds": fed.seconds,
    }
    if central_seconds is not None:
        row["central_seconds"] = central_seconds
    row["samples_per_s"] = train.samples * epochs / train.seconds if train.seconds else 0.0
    return row
