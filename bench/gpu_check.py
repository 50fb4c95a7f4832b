"""fedsweep's GPU paths on a real GPU: workers per GPU, GPU memory per worker, none left holding memory.

    python bench/gpu_check.py --out gpu_check.json     # on a CUDA machine (bench/run_gpu.sh runs it)

Runs `python -m fl_core` with the built-in app on a small CIFAR-shaped synthetic
set in two configurations: --num-client-gpus 0.25 with the server on no GPU
(central evaluation then runs on the GPU workers), and --num-client-gpus 0.25
with --server-gpus 0.25 and central evaluation in the server. While each runs,
nvidia-smi is polled every 0.2 s: the memory each process holds and the
device's memory in use. It then checks what a user on a GPU cluster relies on:

- client workers on the GPU: exactly as many as the shares allow (4, or 3 when
  the server takes a share), each saying (cifar10_app's line) that it computes
  on cuda with a CUDA_VISIBLE_DEVICES of its own from Ray;
- the server process holds GPU memory only when --server-gpus gives it a share;
- 10 s after the run ends, no process of the run holds GPU memory and the
  device's memory in use is back where it was before (within 64 MiB).

Writes the figures and the verdicts to --out; exit status 1 if a check fails.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH_DIR)
sys.path.insert(0, BENCH_DIR)
from provenance import versions, write_results  # noqa: E402

DEVICE_LINE = re.compile(r"cifar10_app: process (\d+) computes on (\S+) \(.*CUDA_VISIBLE_DEVICES=(\S+)\)")
CONFIGS = {
    "clients-only": {"num-client-gpus": 0.25, "server-gpus": 0, "central-eval-on": "auto"},
    "server-share": {"num-client-gpus": 0.25, "server-gpus": 0.25, "central-eval-on": "server"},
}


def smi(query: str) -> list[list[str]]:
    """Rows of an nvidia-smi CSV query (no header, no units)."""
    out = subprocess.run(
        ["nvidia-smi", f"--query-{query}", "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=30
    ).stdout
    return [[c.strip() for c in line.split(",")] for line in out.splitlines() if line.strip()]


def used_mib() -> int:
    """The GPU's memory in use, MiB (the first GPU)."""
    return int(smi("gpu=memory.used")[0][0])


class Poller(threading.Thread):
    """Polls nvidia-smi: peak MiB per process id, and peak device memory in use."""

    def __init__(self):
        super().__init__(daemon=True)
        self.per_pid: dict[int, int] = {}
        self.peak_used = 0
        self.done = threading.Event()

    def run(self):
        """Poll until stopped."""
        while not self.done.is_set():
            for pid, mib in smi("compute-apps=pid,used_memory"):
                if pid.isdigit() and mib.isdigit():
                    self.per_pid[int(pid)] = max(self.per_pid.get(int(pid), 0), int(mib))
            self.peak_used = max(self.peak_used, used_mib())
            time.sleep(0.2)


def run_config(name: str, flags: dict, args) -> dict:
    """One fl_core run under the poller; its figures and checks (None: not observable, nvidia-smi lists no pids)."""
    before = used_mib()
    poller = Poller()
    with tempfile.TemporaryDirectory(prefix=f"gpu-check-{name}-") as out:
        cmd = [
            sys.executable,
            "-m",
            "fl_core",
            "--dataset",
            "synthetic",
            "--synthetic-size",
            "20000",
            "--pool-size",
            "40",
            "--fraction-train",
            "0.5",
            "--num-server-rounds",
            str(args.rounds),
            "--checkpoint-dir",
            out,
        ] + [x for k, v in flags.items() for x in (f"--{k}", str(v))]
        # Every worker's device line, not Ray's "repeated 3x across cluster" in their place.
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_AUTH_MODE": "disabled", "RAY_DEDUP_LOGS": "0"}
        poller.start()
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        output, _ = proc.communicate(timeout=args.timeout)
        wall = time.perf_counter() - start
        poller.done.set()
        poller.join()
    print(output[-4000:], flush=True)
    server = proc.pid  # the server (and central evaluation in it) runs in the fl_core process itself
    lines = {int(p): (dev, vis) for p, dev, vis in DEVICE_LINE.findall(output)}
    workers = {pid: vis for pid, (dev, vis) in lines.items() if pid != server and dev.startswith("cuda")}
    time.sleep(10)
    left = {int(p): int(m) for p, m in smi("compute-apps=pid,used_memory") if p.isdigit() and m.isdigit()}
    after = used_mib()
    seen = poller.per_pid or None  # gVisor-like sandboxes may list no processes
    server_share = flags["server-gpus"] > 0
    expected = 3 if server_share else 4
    checks = {
        "run_succeeded": proc.returncode == 0,
        "client_workers_on_cuda": len(workers) == expected,
        "each_worker_has_CUDA_VISIBLE_DEVICES": bool(workers) and all(v != "unset" for v in workers.values()),
        "server_on_gpu_only_with_a_share": None if seen is None else (server in seen) == server_share,
        "no_process_of_the_run_left_on_gpu": None if seen is None else not (set(left) & (set(workers) | {server})),
        "memory_back_within_64_MiB": after - before <= 64,
    }
    return {
        "flags": flags,
        "wall_s": wall,
        "returncode": proc.returncode,
        "server_pid": server,
        "device_lines": {str(k): v for k, v in lines.items()},
        "expected_client_workers": expected,
        "gpu_mib_per_process": {str(k): v for k, v in poller.per_pid.items()},
        "used_mib_before": before,
        "used_mib_peak": poller.peak_used,
        "used_mib_after": after,
        "processes_left": left,
        "checks": checks,
    }


def main(argv=None) -> int:
    """Run each configuration, print the verdicts, write the JSON."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--timeout", type=float, default=240, help="seconds one run may take")
    p.add_argument("--out", default="gpu_check.json")
    args = p.parse_args(argv)
    payload = {"versions": versions(), "gpu": smi("gpu=name,memory.total"), "configs": {}}
    ok = True
    for name, flags in CONFIGS.items():
        result = run_config(name, flags, args)
        payload["configs"][name] = result
        write_results(args.out, payload)
        ok &= all(v is not False for v in result["checks"].values())
        print(
            f"gpu_check {name}: {result['wall_s']:.1f} s; MiB per process {result['gpu_mib_per_process']}; "
            f"device used {result['used_mib_before']} -> peak {result['used_mib_peak']} -> "
            f"{result['used_mib_after']} MiB; checks {result['checks']}",
            flush=True,
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
