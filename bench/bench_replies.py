"""What a worker's reply costs on its way to the driver: Ray's object store against inline, by reply size.

    python bench/bench_replies.py --out replies.json     # 250 KB to 16 MB, 3 alternating pairs
    python bench/bench_replies.py --smoke                # one pair, two sizes

An actor yields N replies of S bytes from a streaming generator (as a worker
yields a group's replies) and the driver gets each one. Measured per reply: the
wall time and the CPU time of every process on the machine (driver, worker,
raylet, GCS: they share the cores with the clients' training). Each side runs
in its own process with its own local Ray: "store" with Ray's defaults
(replies over 100 KiB go through the raylet's object store), "inline" with
fl_core.settings.RAY_SYSTEM_CONFIG (replies up to 1 MiB travel inside the
reply message). The sides alternate; the best of 3 passes per size is kept.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from common import REPO, child_env, versions, write_results

SIZES = (250_000, 1_000_000, 4_000_000, 16_000_000)
BYTES_A_PHASE = 50 * 250_000  # replies per size: what 50 replies of the CIFAR CNN carry, at least 10


def measure(side: str, sizes: list[int]) -> dict:
    """In this process: start local Ray for `side`, time the replies of each size; {size: (wall s, cpu s)}."""
    import numpy as np
    import psutil
    import ray

    from fl_core.settings import RAY_SYSTEM_CONFIG

    options = {"_system_config": RAY_SYSTEM_CONFIG} if side == "inline" else {}
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", **options)

    @ray.remote
    class Replier:
        def replies(self, n: int, size: int):
            payload = np.random.default_rng(0).bytes(size)
            for i in range(n):
                yield {"node": i, "arrays": payload}

    def cpu_s() -> float:
        total = 0.0
        for process in psutil.process_iter():
            try:
                times = process.cpu_times()
            except (psutil.Error, OSError):
                continue
            total += times.user + times.system
        return total

    actor = Replier.remote()
    out = {}
    for size in sizes:
        n = max(10, BYTES_A_PHASE // size)
        for ref in actor.replies.remote(n, size):  # warm-up
            ray.get(ref)
        best = None
        for _ in range(3):
            cpu0, t0 = cpu_s(), time.perf_counter()
            for ref in actor.replies.remote(n, size):
                ray.get(ref)
            wall, cpu = time.perf_counter() - t0, cpu_s() - cpu0
            best = min(best or (wall, cpu), (wall, cpu))
        out[size] = (best[0] / n, best[1] / n)
    ray.shutdown()
    return out


def main(argv: list[str] | None = None) -> int:
    """Alternate the two sides in child processes; print and write per-reply figures."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3, help="pairs of runs, store and inline alternating")
    p.add_argument("--smoke", action="store_true", help="one pair, two sizes")
    p.add_argument("--child", choices=("store", "inline"), help=argparse.SUPPRESS)
    p.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="reply sizes in bytes")
    p.add_argument("--out", default="replies.json")
    args = p.parse_args(argv)
    if args.smoke:
        args.repeats, args.sizes = 1, args.sizes[:2]
    if args.child:
        print(json.dumps(measure(args.child, args.sizes)))
        return 0
    runs = []
    for repeat in range(args.repeats):
        for side in ("store", "inline"):
            cmd = [sys.executable, __file__, "--child", side, "--sizes", *map(str, args.sizes)]
            done = subprocess.run(cmd, cwd=REPO, env=child_env(), capture_output=True, text=True, check=True)
            figures = json.loads(done.stdout.strip().splitlines()[-1])
            runs.append({"repeat": repeat + 1, "side": side, "per_reply": figures})
            for size, (wall, cpu) in figures.items():
                print(
                    f"run {repeat + 1} {side:6s} {int(size):>10,} bytes: {wall * 1e3:6.2f} ms wall, "
                    f"{cpu * 1e3:6.2f} ms CPU a reply",
                    flush=True,
                )
    write_results(args.out, {"versions": versions(), "args": vars(args), "runs": runs})
    print(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
