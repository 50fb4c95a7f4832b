"""Checks of a whole sweep before Ray starts: every grid value, the metric, the search and the resources."""

from __future__ import annotations

import importlib.util

from fl_core.apps import ROUNDS_KEY
from fl_core.metrics import MODEL_PREFIXES, is_model_metric
from fl_core.settings import SAMPLING_KEYS, ConfigError, sampled_nodes
from fl_sweep.resources import check_fits
from fl_sweep.spec import SweepSpec, trials


def validate_spec(spec: SweepSpec, local_cpus: int | None, local_gpus: int | None) -> None:
    """Raise ConfigError on anything that would fail later: settings, every grid value, metric, search, resources."""
    need_positive = {
        "--num-samples": spec.num_samples,
        "--keep-checkpoints": spec.keep_checkpoints,
        "--checkpoint-every": spec.checkpoint_every,
        "--asha-grace-rounds": spec.asha_grace_rounds,
    }
    if spec.max_concurrent_trials is not None:
        need_positive["--max-concurrent-trials"] = spec.max_concurrent_trials
    for flag, value in need_positive.items():
        if value < 1:
            raise ConfigError(f"{flag} must be at least 1, got {value}")
    if spec.max_failures < -1:
        raise ConfigError(f"--max-failures must be >= 0 (or -1 for unlimited), got {spec.max_failures}")
    if not is_model_metric(spec.metric):
        raise ConfigError(
            f"--metric must be a per-round metric of the model, starting with "
            f"{', '.join(MODEL_PREFIXES)} (e.g. central_accuracy, fed_loss), got {spec.metric!r}"
        )
    _validate_search_alg(spec)
    app = spec.app()
    plan = spec.plan()
    for combo, settings, run_config in trials(spec):
        where = f" (with {', '.join(f'{k}={v}' for k, v in combo.items())})" if combo else ""
        try:
            settings.validate(local_cpus=local_cpus, local_gpus=local_gpus)
            app.check(run_config, settings.pool_size)
            if local_cpus is not None:
                check_fits(combo, plan)
        except ConfigError as exc:
            raise ConfigError(f"{exc}{where if _mentions_any(str(exc), combo) else ''}") from None


def _mentions_any(message: str, keys) -> bool:
    """Whether a message names one of `keys` (as a key or --flag): then the swept values are worth showing."""
    return any(k in message or f"--{k.replace('_', '-')}" in message for k in keys)


def optuna_available() -> bool:
    """Whether optuna can be imported (kept in a function so tests can pretend it is missing)."""
    return importlib.util.find_spec("optuna") is not None


def _validate_search_alg(spec: SweepSpec) -> None:
    """Refuse search/scheduler combinations Tune cannot run."""
    if spec.search_alg == "optuna":
        if not optuna_available():
            raise ConfigError(
                "--search optuna needs the optuna package, which is not installed: "
                "pip install 'fedsweep[optuna]' (or optuna), or use --search grid/random"
            )
        grids = [k for k, e in spec.search.items() if e["kind"] == "grid"]
        if grids:
            raise ConfigError(
                f"--search optuna cannot take grid values (Optuna has no grid_search), found for "
                f"{', '.join(grids)}: sweep them with --choice instead"
            )
    if spec.scheduler == "asha":
        if ROUNDS_KEY not in spec.run_config:
            raise ConfigError(
                f"--scheduler asha stops trials on rounds and reads their number from the app's "
                f"run-config key {ROUNDS_KEY}, which this app does not have"
            )
        if ROUNDS_KEY in spec.search:
            raise ConfigError(f"--scheduler asha stops trials on rounds and needs one {ROUNDS_KEY}: fix it with --set")


def same_runs(spec: SweepSpec) -> list[str]:
    """Warnings for swept client fractions that sample the same number of clients: those grid points make the
    same runs (Flower's strategies sample max(int(pool x fraction), minimum) nodes, seeded by round).

    Warned about, not collapsed: fedsweep cannot know that an app uses the
    fraction for nothing else.
    """
    notes = []
    for phase, (fraction_key, minimum_key) in SAMPLING_KEYS.items():
        if fraction_key not in spec.search:
            continue
        groups: dict[str, tuple[int, int, int, set]] = {}
        for _, settings, run_config in trials(spec):
            count = sampled_nodes(run_config, settings.pool_size, phase)
            rest = {k: v for k, v in run_config.items() if k != fraction_key}
            key = repr((sorted(settings.to_dict().items()), sorted(rest.items()), count))
            groups.setdefault(key, (count, settings.pool_size, run_config.get(minimum_key, 2), set()))[3].add(
                run_config[fraction_key]
            )
        for count, pool, minimum, fractions in groups.values():
            note = (
                f"{fraction_key} values {', '.join(f'{f:g}' for f in sorted(fractions))} sample the same {count} "
                f"of {pool} clients per round ({minimum_key} {minimum}): their grid points make the same runs"
            )
            if len(fractions) > 1 and note not in notes:
                notes.append(note)
    return notes
