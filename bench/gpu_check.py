"""fedsweep's GPU paths on a real GPU: workers per GPU, GPU memory per worker, none left holding memory.

    python bench/gpu_check.py --out gpu_check.json     # on a CUDA machine (bench/run_gpu.sh runs it)

Two `python -m fl_core` runs on a small synthetic set, nvidia-smi polled every 0.2 s: --num-client-gpus 0.25
(central evaluation on the GPU workers), and with --server-gpus 0.25 and central evaluation in the server.
Checks: exactly as many client workers on cuda as the shares allow (4, or 3 with the server's share), each with
a CUDA_VISIBLE_DEVICES from Ray (cifar10_app's device line); GPU memory in the server only with a share; 10 s
after the run no process of it holds GPU memory and the device's memory is back within 64 MiB. Writes the
figures and verdicts to --out; exit status 1 if a check fails.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import threading
import time

from common import child_env, run_cli, versions, write_results

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


def run_config(flags: dict, args) -> dict:
    """One fl_core run under the poller; its figures and checks (None: not observable, nvidia-smi lists no pids)."""
    before = used_mib()
    poller = Poller()
    flags = {"dataset": "synthetic", "synthetic-size": 20000, "pool-size": 40, "fraction-train": 0.5, **flags}
    poller.start()
    try:  # every worker's device line, not Ray's "repeated 3x across cluster" in their place
        run = run_cli(
            {**flags, "num-server-rounds": args.rounds}, timeout=args.timeout, env=child_env(RAY_DEDUP_LOGS="0")
        )
        returncode = 0
    except RuntimeError as failed:  # the run's failure is a check's verdict, not the end of the check
        run, returncode = {"lines": [(0, str(failed))], "wall_s": None, "pid": None}, 1
    finally:
        poller.done.set()
        poller.join()
    output = "\n".join(line for _, line in run["lines"])
    print(output[-4000:], flush=True)
    server = run["pid"]  # the server (and central evaluation in it) runs in the fl_core process itself
    lines = {int(p): (dev, vis) for p, dev, vis in DEVICE_LINE.findall(output)}
    workers = {pid: vis for pid, (dev, vis) in lines.items() if pid != server and dev.startswith("cuda")}
    time.sleep(10)
    left = {int(p): int(m) for p, m in smi("compute-apps=pid,used_memory") if p.isdigit() and m.isdigit()}
    after = used_mib()
    seen = poller.per_pid or None  # gVisor-like sandboxes may list no processes
    server_share = flags["server-gpus"] > 0
    expected = 3 if server_share else 4
    checks = {
        "run_succeeded": returncode == 0,
        "client_workers_on_cuda": len(workers) == expected,
        "each_worker_has_CUDA_VISIBLE_DEVICES": bool(workers) and all(v != "unset" for v in workers.values()),
        "server_on_gpu_only_with_a_share": None if seen is None else (server in seen) == server_share,
        "no_process_of_the_run_left_on_gpu": None if seen is None else not (set(left) & (set(workers) | {server})),
        "memory_back_within_64_MiB": after - before <= 64,
    }
    return {
        "flags": flags,
        "wall_s": run["wall_s"],
        "returncode": returncode,
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
        result = run_config(flags, args)
        payload["configs"][name] = result
        write_results(args.out, payload)
        ok &= all(v is not False for v in result["checks"].values())
        print(
            f"gpu_check {name}: {result['wall_s'] or 0:.1f} s; MiB per process {result['gpu_mib_per_process']}; "
            f"device used {result['used_mib_before']} -> peak {result['used_mib_peak']} -> "
            f"{result['used_mib_after']} MiB; checks {result['checks']}",
            flush=True,
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
