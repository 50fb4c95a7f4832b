"""What a benchmark figure was measured with (versions, machine, commit), writing the results file, and a
median timer.

Shared by the bench scripts.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def git_commit() -> str | None:
    """The repository's commit, with "+dirty" when tracked files differ from it; None without git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def versions() -> dict:
    """Library versions, machine, date and commit of this run."""
    import flwr
    import ray
    import torch

    return {
        "python": platform.python_version(),
        "flwr": flwr.__version__,
        "ray": ray.__version__,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "git_commit": git_commit(),
    }


def write_results(path: str, payload: dict) -> None:
    """Write a results file atomically, creating its folder: a run cut short leaves the last whole file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1)
    os.replace(tmp, path)


def median_time(fn, repeats: int) -> float:
    """Median wall seconds of `repeats` calls of fn()."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
