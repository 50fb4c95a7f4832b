"""Checkpoint files: round trip, safety, refusal of corrupt or incompatible ones."""

from __future__ import annotations

import os

import numpy as np
import pytest

from fl_core.checkpoint import CHECKPOINT_FILE, CheckpointError, ServerState, check_compatible, load_checkpoint, save_checkpoint
from tests.conftest import tiny_config


def _state(round_=2, cfg=None):
    cfg = cfg or tiny_config()
    return ServerState(
        round=round_,
        parameters=[np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(4, np.float32)],
        strategy_state={"m_t": [np.full(3, 0.5)], "v_t": [np.full(3, 0.25)]},
        history=[{"round": 1, "central_accuracy": 0.1, "fed_val_accuracy": None}],
        config=cfg.to_dict(),
    )


def test_round_trip(tmp_path):
    path = save_checkpoint(_state(), str(tmp_path))
    assert os.path.basename(path) == CHECKPOINT_FILE
    assert [p for p in os.listdir(tmp_path) if p != CHECKPOINT_FILE] == [], "temp file left behind"
    for where in (str(tmp_path), path):
        loaded = load_checkpoint(where)
        assert loaded.round == 2 and loaded.history[0]["fed_val_accuracy"] is None
        assert all(np.array_equal(a, b) for a, b in zip(loaded.parameters, _state().parameters))
        assert np.array_equal(loaded.strategy_state["v_t"][0], np.full(3, 0.25))
        assert loaded.config == tiny_config().to_dict()


def test_overwrite_keeps_a_valid_file(tmp_path):
    save_checkpoint(_state(1), str(tmp_path))
    save_checkpoint(_state(2), str(tmp_path))
    assert load_checkpoint(str(tmp_path)).round == 2


@pytest.mark.parametrize(
    "content",
    [b"", b"not a zip at all", b"PK\x03\x04truncated"],
)
def test_corrupt_files_are_refused(tmp_path, content):
    (tmp_path / CHECKPOINT_FILE).write_bytes(content)
    with pytest.raises(CheckpointError, match="corrupt or not a fedsweep checkpoint"):
        load_checkpoint(str(tmp_path))


def test_truncated_checkpoint_is_refused(tmp_path):
    path = save_checkpoint(_state(), str(tmp_path))
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_pickled_payload_is_never_executed(tmp_path):
    class Boom:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    np.savez(tmp_path / CHECKPOINT_FILE, meta=np.array([Boom()], dtype=object))
    with pytest.raises(CheckpointError):
        load_checkpoint(str(tmp_path))
    assert not (tmp_path / "pwned").exists()


def test_other_npz_is_refused(tmp_path):
    np.savez(tmp_path / CHECKPOINT_FILE, weights=np.zeros(3))
    with pytest.raises(CheckpointError):
        load_checkpoint(str(tmp_path))


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(str(tmp_path / "nowhere"))


@pytest.mark.parametrize("change", [{"pool_size": 8}, {"partition": "dirichlet"}, {"model": "cnn2"}, {"strategy": "fedadam"}])
def test_incompatible_config_is_refused(change):
    saved = _state()
    if "model" in change:  # an unknown model cannot even be validated; compare the dicts directly
        saved.config["model"] = "resnet"
        change = {}
    with pytest.raises(CheckpointError, match="other settings"):
        check_compatible(saved, tiny_config(**change))


def test_more_rounds_and_other_resources_are_compatible():
    check_compatible(_state(), tiny_config(num_rounds=10, num_client_cpus=2.0, max_parallel_clients=1))


def test_checkpoint_past_the_requested_rounds_is_refused():
    with pytest.raises(CheckpointError, match="past --num-rounds"):
        check_compatible(_state(round_=5), tiny_config(num_rounds=3))


def test_plain_npy_is_refused(tmp_path):
    with open(tmp_path / CHECKPOINT_FILE, "wb") as f:
        np.save(f, np.zeros(3))
    with pytest.raises(CheckpointError):
        load_checkpoint(str(tmp_path))
