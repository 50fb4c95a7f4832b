"""Checkpoint files: round trip of every kind of state, safety, refusal of corrupt, malformed or incompatible ones."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from fl_core.checkpoint import CHECKPOINT_FILE, CheckpointError, check_resume, load_checkpoint, save_checkpoint
from fl_core.strategies import StrategyState
from tests.conftest import checkpoint_state, same_arrays, tiny_run


def test_round_trip(tmp_path):
    saved = checkpoint_state()
    path = save_checkpoint(saved, str(tmp_path))
    assert os.path.basename(path) == CHECKPOINT_FILE
    assert [p for p in os.listdir(tmp_path) if p != CHECKPOINT_FILE] == [], "temp file left behind"
    for where in (str(tmp_path), path):
        loaded = load_checkpoint(where)
        assert loaded.round == 2 and loaded.history[0]["fed_accuracy"] is None
        assert same_arrays(loaded.arrays, saved.arrays) and loaded.arrays["1"].dtype == "float64"
        state = loaded.strategy_state
        assert same_arrays(state["current_arrays"], saved.arrays) and np.array_equal(state["m_t"]["w"], np.full(3, 0.5))
        assert state["eta"] == 0.1 and state["name"] == "s" and state["pair"] == (1, 2.5) and state["nothing"] is None
        inner = state["strategy"]
        assert isinstance(inner, StrategyState) and inner["keys"] == {"a": 1, 2: None}
        assert inner["clipping_norm"] == np.float32(0.25) and inner["clipping_norm"].dtype == np.float32
        node = loaded.node_states[1001]
        assert np.array_equal(node["control"]["0"].numpy(), np.full(2, 7.0)) and node["seen"]["rounds"] == 3
        assert node["tag"]["raw"] == b"\x00\x01" and node["tag"]["flags"] == [True, False]
        assert loaded.run_config == saved.run_config and loaded.settings == saved.settings


def test_overwrite_keeps_a_valid_file(tmp_path):
    save_checkpoint(checkpoint_state(1), str(tmp_path))
    save_checkpoint(checkpoint_state(2), str(tmp_path))
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
    path = save_checkpoint(checkpoint_state(), str(tmp_path))
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


@pytest.mark.parametrize(
    "change",
    [
        {"settings": {"pool_size": 8}},
        {"partition": "dirichlet"},
        {"strategy": "fedadam"},
        {"lr": 0.5},
        {"settings": {"seed": 3}},
    ],
)
def test_incompatible_run_is_refused(change):
    saved = checkpoint_state()
    app, run_config, settings = tiny_run(**change)
    with pytest.raises(CheckpointError, match="other settings"):
        check_resume(saved, app, run_config, settings)


def test_more_rounds_and_other_resources_are_allowed_with_a_note_on_threads():
    app, run_config, settings = tiny_run(
        settings={"num_client_cpus": 2.0, "max_parallel_clients": 1}, num_server_rounds=10
    )
    notes = check_resume(checkpoint_state(), app, run_config, settings)
    assert len(notes) == 1 and "num_client_cpus" in notes[0] and "not bit-identical" in notes[0]
    app, run_config, settings = tiny_run(num_server_rounds=10)
    assert check_resume(checkpoint_state(), app, run_config, settings) == []


def test_another_app_is_refused():
    saved = checkpoint_state()
    saved.app = "someone-elses-app"
    with pytest.raises(CheckpointError, match="is of app 'someone-elses-app'"):
        check_resume(saved, *tiny_run())


def _rewrite_meta(path: str, edit) -> None:
    """Rewrite the JSON part of a checkpoint file with `edit(meta)` applied (valid JSON, maybe wrong content)."""
    with np.load(path, allow_pickle=False) as npz:
        entries = {k: npz[k] for k in npz.files}
    meta = json.loads(bytes(entries["meta"]).decode())
    edit(meta)
    entries["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    with open(path, "wb") as f:
        np.savez(f, **entries)


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m.pop("history"),
        lambda m: m.update(round="three"),
        lambda m: m.update(history={"round": 1}),
        lambda m: m.update(history=[1, 2]),
        lambda m: m.update(arrays={"ArrayRecord": [["w", "a999999"]]}),
        lambda m: m.update(arrays={"ndarray": "a000000"}),
        lambda m: m.update(strategy_state={"Pickle": []}),
        lambda m: m.update(strategy_state=[1, 2]),
        lambda m: m.update(node_states=[[1001, {"list": []}]]),
        lambda m: m.update(node_states={"1001": 5}),
        lambda m: m.update(run_config=None),
        lambda m: m.update(version=1),
        lambda m: m.update(format="something-else"),
    ],
)
def test_valid_json_with_wrong_fields_is_refused(tmp_path, edit):
    path = save_checkpoint(checkpoint_state(), str(tmp_path))
    _rewrite_meta(path, edit)
    with pytest.raises(CheckpointError, match="corrupt or not a fedsweep checkpoint"):
        load_checkpoint(path)


def test_plain_npy_is_refused(tmp_path):
    with open(tmp_path / CHECKPOINT_FILE, "wb") as f:
        np.save(f, np.zeros(3))
    with pytest.raises(CheckpointError):
        load_checkpoint(str(tmp_path))


def test_stale_temp_files_of_a_killed_writer_are_removed(tmp_path):
    """What write_atomically leaves when its process is killed mid-write goes before a resumed run writes again."""
    from fl_core.checkpoint import remove_stale_temp_files

    path = save_checkpoint(checkpoint_state(), str(tmp_path))
    (tmp_path / ".tmp-abc123.part").write_bytes(b"half a checkpoint")
    (tmp_path / "notes.part").write_text("not ours")
    remove_stale_temp_files(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fl_checkpoint.npz", "notes.part"]
    assert load_checkpoint(path).round == checkpoint_state().round
    remove_stale_temp_files(str(tmp_path / "missing"))  # no folder yet: nothing to do
