"""fedsweep's GPU scheduling on a real Ray that declares 2 logical GPUs (no GPU needed: Ray hands out ids anyway).

A head started with `ray start --num-gpus 2` (tests/test_ray_cluster.Head: its own ports and temp dir, only
its processes stopped) runs `python -m fl_core` and `tune_search.py` through `--address`. Where each client
and the server ran is read from the runs themselves (tests/apps/gpu_probe reports each ClientApp call's
process, CUDA_VISIBLE_DEVICES and Ray GPU ids, and the server's CUDA_VISIBLE_DEVICES) and from Ray's state
API (actors' resources, placement groups and lifetimes), never from timing. The real-CUDA side of the same
paths is bench/gpu_check.py, run by bench/run_gpu.sh on a GPU machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

import pytest

from tests.support.cluster import REPO, Head, ray_env, started
from tests.support.sweeps import TINY

pytestmark = [pytest.mark.cluster]

PROBE = os.path.join(REPO, "tests", "apps", "gpu_probe")
TIMEOUT_S = 240


@pytest.fixture(scope="module")
def gpu_head():
    """A head with 8 logical CPUs and 2 logical GPUs for this module; exactly its processes are stopped after."""
    node = started(lambda: Head(num_cpus=8, env=ray_env(), num_gpus=2), "the head with 2 logical GPUs")
    try:
        yield node
    finally:
        assert node.stop() == set(), "processes of the head survived SIGKILL"


def address(head: Head) -> str:
    """The head's GCS address as clients here give it."""
    return f"127.0.0.1:{head.gcs_port}"


def run(command: list[str]) -> subprocess.CompletedProcess:
    """A command from the repository root against the head; fails the test past TIMEOUT_S."""
    return subprocess.run(command, cwd=REPO, env=ray_env(), capture_output=True, text=True, timeout=TIMEOUT_S)


def probe(head: Head, tmp_path, *flags: str) -> dict:
    """Run the probe app on 8 nodes with `flags`; its report (server_visible, clients: one per message)."""
    out = tmp_path / "where.json"
    result = run(
        [
            sys.executable,
            "-m",
            "fl_core",
            "--address",
            address(head),
            "--app",
            PROBE,
            "--pool-size",
            "8",
            "--out",
            str(out),
            "--checkpoint-dir",
            str(tmp_path / "run"),
            *flags,
        ]
    )
    assert result.returncode == 0, result.stdout + result.stderr
    with open(out) as f:
        return json.load(f)


def workers(report: dict) -> dict[str, tuple[str, str]]:
    """(CUDA_VISIBLE_DEVICES, Ray GPU ids) of each client worker process that answered."""
    seen = {}
    for client in report["clients"]:
        seen.setdefault(client["pid"], set()).add((client["visible"], client["gpu_ids"]))
    assert all(len(v) == 1 for v in seen.values()), f"a worker's GPUs changed during the run: {seen}"
    return {pid: next(iter(v)) for pid, v in seen.items()}


def test_half_a_gpu_each_gives_four_workers_two_per_gpu(gpu_head, tmp_path):
    report = probe(gpu_head, tmp_path, "--num-client-gpus", "0.5")
    found = workers(report)
    assert len(report["clients"]) == 8 and len(found) == 4, found  # 2 GPUs / 0.5: never more workers
    for visible, ids in found.values():
        assert visible == ids and visible in ("0", "1"), found  # Ray's id, and CUDA_VISIBLE_DEVICES set to it
    assert Counter(visible for visible, _ in found.values()) == {"0": 2, "1": 2}
    assert report["server_visible"] == ""  # --server-gpus 0: the server sees no GPU


def test_the_server_gets_a_gpu_of_its_own(gpu_head, tmp_path):
    report = probe(gpu_head, tmp_path, "--num-client-gpus", "0.5", "--server-gpus", "1")
    found = workers(report)
    assert len(found) == 2, found  # (2 - 1) / 0.5
    client_gpus = {visible for visible, _ in found.values()}
    assert len(client_gpus) == 1 and report["server_visible"] in ("0", "1"), report
    assert report["server_visible"] not in client_gpus, report  # the server's GPU is its own


def test_more_gpus_than_the_cluster_has_is_one_line_and_exit_2(gpu_head, tmp_path):
    result = run(
        [
            sys.executable,
            "-m",
            "fl_core",
            "--address",
            address(gpu_head),
            "--app",
            PROBE,
            "--out",
            str(tmp_path / "x.json"),
            "--checkpoint-dir",
            str(tmp_path / "run"),
            "--num-client-gpus",
            "3",
        ]
    )
    assert result.returncode == 2 and "GPU" in result.stderr and len(result.stderr.strip().splitlines()) == 1, (
        result.stderr
    )
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())
    sweep = run(
        [
            sys.executable,
            "tune_search.py",
            "--address",
            address(gpu_head),
            "--storage-path",
            str(tmp_path),
            "--name",
            "too-many",
            *TINY,
            "--set",
            "fraction-train=1",
            "--num-client-gpus",
            "1",
            "--max-parallel-clients",
            "3",
        ]
    )  # 3 client bundles of 1 GPU
    assert sweep.returncode == 2 and "GPU" in sweep.stderr and len(sweep.stderr.strip().splitlines()) == 1, sweep.stderr
    assert not (tmp_path / "too-many").exists()  # before any trial: nothing written


def client_workers(head: Head) -> list[dict]:
    """Ray's records (state API) of every client worker actor the head has seen, alive or dead."""
    actors = head.get("/api/v0/actors", detail=1, limit=10000)["data"]["result"]["result"]
    return [a for a in actors if a["class_name"] == "ClientAppWorker"]


def test_sweep_of_one_gpu_trials_runs_two_at_a_time_inside_their_bundles(gpu_head, tmp_path):
    earlier = {a["actor_id"] for a in client_workers(gpu_head)}  # the head is shared by this module's tests
    result = run(
        [
            sys.executable,
            "tune_search.py",
            "--address",
            address(gpu_head),
            "--storage-path",
            str(tmp_path),
            "--name",
            "gpus",
            *TINY,
            "--set",
            "fraction-train=1",
            "--grid",
            "lr=0.01,0.02,0.03,0.04",
            "--num-client-gpus",
            "0.5",
            "--max-parallel-clients",
            "2",
        ]
    )  # a trial: 2 x 0.5 GPU
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    groups = {
        g["placement_group_id"]: g
        for g in gpu_head.get("/api/v0/placement_groups", detail=1)["data"]["result"]["result"]
    }
    actors = [a for a in client_workers(gpu_head) if a["actor_id"] not in earlier]
    trial_bundles = [{"CPU": 1.0}, {"CPU": 1.0, "GPU": 0.5}, {"CPU": 1.0, "GPU": 0.5}]
    spans: dict[str, list[int]] = {}
    for actor in actors:
        group = groups[actor["placement_group_id"]]  # every client worker is inside a placement group ...
        assert [b["unit_resources"] for b in group["bundles"]] == trial_bundles, group  # ... a trial's: 1 GPU
        pg, needs = actor["placement_group_id"], actor["required_resources"]  # Ray's names for a bundle's share
        assert needs[f"GPU_group_{pg}"] == 0.5 and needs[f"CPU_group_{pg}"] == 1.0, needs
        bundles = [int(k.split("_")[2]) for k in needs if k.startswith("GPU_group_") and k != f"GPU_group_{pg}"]
        assert len(bundles) == 1 and bundles[0] >= 1, needs  # a client bundle (bundle 0 is the server's)
    assert len(actors) == 4 * 2, actors  # each trial starts its 2 client workers
    # Tune reuses a finished trial's actor and placement group for the next trial (reuse_actors), one trial at a
    # time in each, so trials at once are placement groups in use at once. Each group's span: its first task
    # started to its last task ended, by Ray's task records (the trial's actor in bundle 0, the client workers).
    trial_groups = {a["placement_group_id"] for a in actors}
    tasks = gpu_head.get("/api/v0/tasks", detail=1, limit=10000)["data"]["result"]["result"]
    for task in tasks:
        if task["placement_group_id"] in trial_groups and task.get("start_time_ms") and task.get("end_time_ms"):
            span = spans.setdefault(task["placement_group_id"], [task["start_time_ms"], task["end_time_ms"]])
            span[0], span[1] = min(span[0], task["start_time_ms"]), max(span[1], task["end_time_ms"])
    assert spans.keys() == trial_groups, spans
    events = sorted([(start, 1) for start, _ in spans.values()] + [(end, -1) for _, end in spans.values()])
    running, most = 0, 0
    for _, step in events:
        running += step
        most = max(most, running)
    assert most == 2, spans
