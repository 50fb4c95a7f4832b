"""Faults change nothing: a client that raises, a worker killed mid-fit, a hung client, a refused checkpoint write.

Each faulty run is compared with the same run without faults (tests/faults.py
injects them into the built-in app): the per-round model metrics and the final
weights must be bit-identical, with the retries counted. Only dropping a client
(--on-client-failure drop) may change results, and the metrics say so.
"""

from __future__ import annotations

import pytest

from fl_core import run_app
from fl_core.failures import ClientAppError
from tests.conftest import model_metrics, same_arrays, tiny_run
from tests.faults import faulty_app, plan, sampled_points

# The tests read the fault reports on stderr, where the command lines show the `fedsweep` logger.
pytestmark = pytest.mark.usefixtures("fedsweep_log")

ROUNDS = 3


@pytest.fixture(scope="module")
def app_dir(tmp_path_factory):
    """The built-in app with the fault injector."""
    return faulty_app(str(tmp_path_factory.mktemp("faulty_app")))


def faulty_run(app_dir, fault_dir, faults=(), callbacks=(), resume=None, **settings):
    """conftest's tiny run (4 nodes, 2 a round) of the faulty app for ROUNDS rounds, with `faults` (plan entries)."""
    app, run_config, engine = tiny_run(
        settings, app_dir, num_server_rounds=ROUNDS, fault_plan=plan(*faults), fault_dir=str(fault_dir)
    )
    return run_app(app, run_config, engine, callbacks=list(callbacks), resume=resume)


@pytest.fixture(scope="module")
def fault_free(ray_local, app_dir, tmp_path_factory):
    """The run every faulty run must equal (a round's two training clients in one cohort)."""
    return faulty_run(app_dir, tmp_path_factory.mktemp("no_faults"))


@pytest.fixture(scope="module")
def fault_free_alone(ray_local, app_dir, tmp_path_factory):
    """The same with one ClientApp call per client (--cohort-size 1)."""
    return faulty_run(app_dir, tmp_path_factory.mktemp("no_faults_alone"), cohort_size=1)


def trained(server_round: int) -> list[int]:
    """The nodes (partition-ids) the run trains in `server_round`, in message order."""
    app, run_config, engine = tiny_run()
    return [
        node
        for r, phase, node in sampled_points(engine.seed, run_config, engine.pool_size, ROUNDS)
        if (r, phase) == (server_round, "train")
    ]


def sampled(server_round: int) -> int:
    """A node (partition-id) the run trains in `server_round`: fault it and it is sure to be hit."""
    return trained(server_round)[0]


def named(nodes: list[int]) -> str:
    """How reports name the call of these nodes (partition-ids): one node, or a cohort."""
    if len(nodes) == 1:
        return f"node {1000 + nodes[0]} (partition-id {nodes[0]})"
    return f"nodes {', '.join(str(1000 + n) for n in nodes)} (partition-ids {', '.join(map(str, nodes))})"


def assert_same(run, reference):
    """Bit-identical per-round model metrics and final weights."""
    assert model_metrics(run.history) == model_metrics(reference.history)
    assert same_arrays(run.state.arrays, reference.state.arrays)


@pytest.mark.parametrize(
    "kind, settings",
    [
        # A round's two training clients are one cohort: the cohort is retried whole.
        ("raise", {}),
        ("die", {}),
        ("hang", {"client_timeout": 5}),  # 5 s a node, 10 for the cohort: a first call (imports, data) takes seconds
        # One worker, one ClientApp call per client: both clients of a round in one Ray call, the faulty one
        # retried alone, the other kept or rerun.
        ("raise", {"max_parallel_clients": 1, "cohort_size": 1}),
        ("die", {"max_parallel_clients": 1, "cohort_size": 1}),
        ("hang", {"client_timeout": 10, "max_parallel_clients": 1, "cohort_size": 1}),
    ],
)
def test_one_fault_is_retried_and_changes_nothing(
    kind, settings, app_dir, fault_free, fault_free_alone, tmp_path, capsys
):
    node = sampled(2)
    end = faulty_run(app_dir, tmp_path, [{"kind": kind, "round": 2, "node": node}], **settings)
    assert_same(end, fault_free_alone if settings.get("cohort_size") == 1 else fault_free)
    assert [row["retries"] for row in end.history] == [0, 1, 0]
    assert all(row["train_dropped"] == 0 for row in end.history)
    err = capsys.readouterr().err
    what = {"raise": "raised", "die": "worker died", "hang": "timed out"}[kind]
    call = named([node] if settings.get("cohort_size") == 1 else trained(2))
    assert f"client failed: {call}, round 2 (train): {what} on worker" in err, err
    assert "running it again (1 of 2)" in err
    if kind == "raise":
        caller = "in _run" if settings.get("cohort_size") == 1 else "in train_cohort"
        assert "RuntimeError: injected fault: round 2" in err and caller in err  # and its traceback


def test_faults_in_evaluation_and_several_at_once(app_dir, fault_free, tmp_path):
    faults = [
        {"kind": "die", "round": 1, "node": sampled(1), "delay": 0.0},
        {"kind": "raise", "round": 3, "node": sampled(3), "times": 2},
    ]
    faults += [{"kind": "raise", "round": 2, "node": node, "phase": "evaluate"} for node in range(4)]
    end = faulty_run(app_dir, tmp_path, faults)
    assert_same(end, fault_free)
    assert sum(row["retries"] for row in end.history) >= 4


def test_spent_retries_abort_with_node_round_and_traceback(app_dir, fault_free, tmp_path, capsys):
    node = sampled(2)
    with pytest.raises(ClientAppError) as error:
        faulty_run(app_dir, tmp_path, [{"kind": "raise", "round": 2, "node": node, "times": 5}], client_retries=1)
    text = str(error.value)
    assert f"the ClientApp of {named(trained(2))}, round 2 (train) failed 2 time(s) (raised" in text
    assert "RuntimeError: injected fault" in text and "in train_cohort" in text
    assert "the run stops after 2 attempt(s) (--on-client-failure abort)" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["raise", "die"])
def test_a_failed_central_evaluation_shard_is_retried_and_changes_nothing(kind, app_dir, fault_free, tmp_path, capsys):
    end = faulty_run(
        app_dir, tmp_path, [{"kind": kind, "round": 2, "node": 0, "phase": "central"}], central_eval_on="workers"
    )
    assert_same(end, fault_free)
    assert [row["retries"] for row in end.history] == [0, 1, 0]
    what = {"raise": "raised", "die": "worker died"}[kind]
    err = capsys.readouterr().err
    assert f"central evaluation failed: shard 0 of 1, round 2: {what} on worker" in err, err


def test_a_central_evaluation_shard_whose_retries_are_spent_stops_the_run(app_dir, fault_free, tmp_path):
    """Whatever --on-client-failure says: a central evaluation without a shard would be another metric."""
    with pytest.raises(
        ClientAppError, match=r"central evaluation of shard 0 of 1, round 2 failed 2 time\(s\) \(raised"
    ):
        faulty_run(
            app_dir,
            tmp_path,
            [{"kind": "raise", "round": 2, "node": 0, "phase": "central", "times": 5}],
            client_retries=1,
            on_client_failure="drop",
            central_eval_on="workers",
        )


@pytest.mark.parametrize("cohort_size", [8, 1])
def test_drop_leaves_the_client_out_of_that_round_and_says_so(
    cohort_size, app_dir, fault_free, fault_free_alone, tmp_path, capsys
):
    """In a cohort, the cohort that failed for good is run again node by node: only the failing node is dropped."""
    node = sampled(2)
    end = faulty_run(
        app_dir,
        tmp_path,
        [{"kind": "raise", "round": 2, "node": node, "times": 9}],
        on_client_failure="drop",
        client_retries=0,
        cohort_size=cohort_size,
    )
    reference = fault_free if cohort_size > 1 else fault_free_alone
    assert [row["train_dropped"] for row in end.history] == [0, 1, 0]
    assert [row["train_clients"] for row in end.history] == [2, 1, 2]
    assert model_metrics(end.history)[0] == model_metrics(reference.history)[0]  # round 1 untouched
    assert model_metrics(end.history)[1] != model_metrics(reference.history)[1]  # one client fewer
    err = capsys.readouterr().err
    if cohort_size > 1:
        assert f"client failed: {named(trained(2))}, round 2 (train): raised on worker" in err, err
        assert "its nodes run again one by one after 1 attempt(s)" in err, err
    assert f"client failed: {named([node])}, round 2 (train): raised on worker" in err, err
    assert "dropped from the round after 1 attempt(s)" in err, err


def test_too_few_replies_fail_the_round(app_dir, fault_free, tmp_path):
    faults = [{"kind": "raise", "round": 1, "node": node, "times": 9} for node in range(4)]
    with pytest.raises(ClientAppError, match=r"only 0 of 2 clients replied to round 1 \(train\).*--min-reply-share"):
        faulty_run(app_dir, tmp_path, faults, on_client_failure="drop", client_retries=0)


def test_a_refused_checkpoint_write_keeps_the_last_one_and_resume_ends_the_same(
    app_dir, fault_free, tmp_path, monkeypatch
):
    """Storage that refuses round 2's checkpoint: the run stops, round 1's file is intact, --resume ends as ever."""
    import fl_core.callbacks
    from fl_core import load_checkpoint
    from fl_core.callbacks import CheckpointWriter

    real_save = fl_core.callbacks.save_checkpoint

    def refusing_save(state, directory):
        if state.round == 2:
            raise OSError(28, "No space left on device")
        return real_save(state, directory)

    monkeypatch.setattr(fl_core.callbacks, "save_checkpoint", refusing_save)
    with pytest.raises(OSError, match="No space left"):
        faulty_run(app_dir, tmp_path / "f", callbacks=[CheckpointWriter(str(tmp_path / "run"))])
    saved = load_checkpoint(str(tmp_path / "run"))
    assert saved.round == 1
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["fl_checkpoint.npz"]  # no partial file left
    monkeypatch.setattr(fl_core.callbacks, "save_checkpoint", real_save)
    end = faulty_run(app_dir, tmp_path / "f", resume=saved)
    assert_same(end, fault_free)


def test_the_progress_line_names_a_rounds_faults():
    """The progress line of a round with faults says how many calls ran again and how many clients were dropped."""
    from fl_core.callbacks import ProgressPrinter, RoundEnd

    lines = []
    printer = ProgressPrinter(print_fn=lines.append)
    metrics = {
        "round": 2,
        "central_accuracy": 0.5,
        "seconds": 1.0,
        "samples_per_s": 100.0,
        "retries": 2,
        "train_dropped": 1,
        "fed_dropped": 0,
    }
    printer.on_round_end(RoundEnd(2, 3, 1, metrics, None))
    printer.on_round_end(RoundEnd(3, 3, 1, {**metrics, "round": 3, "retries": 0, "train_dropped": 0}, None))
    assert lines[0].endswith("(retries 2, train dropped 1)") and "retries" not in lines[1], lines
