#!/usr/bin/env bash
# The GPU checks and benchmarks as one prepared command for the H100/H200 device machine.
#   RUN=check (default): bench/gpu_check.py (the GPU paths on real CUDA), then bench_pfl.py --device cuda
#     --synthetic (arguments go to it). Out: gpu_check.json/.log, pfl_gpu.json/.log, nvidia-smi.txt.
#   RUN=sharing: bench_engine.py --against gpu (2/4/8 workers sharing the GPU, 80 and 10 clients a round; arguments
#     go to it), then bench_kernels.py on the GPU for KERNELS_S s (default 60). Out: gpu.json/.log, kernels.json/.log.
#     `RUN=sharing WHEELS=DIR bash bench/run_gpu.sh --device cpu --smoke` checks it on a CPU machine.
# Before, here in the repo root: the Python 3.12 wheels of Ray, Flower, Flower Datasets, pfl and what that
# machine's image lacks (on 2026-12-04 Flower's config import failed there on tomli) into .whl/:
#   DEST=.whl bash ../shared/device/make-wheels.sh tomli tomli-w grpcio-health-checking==1.81.1 \
#       pydantic==2.14.4 pydantic-core==2.50.5 typing-inspection annotated-types wcwidth \
#       pfl==0.6.0 dp-accounting==0.5.1 prv-accountant==0.2.0
# Then the device tool's `run` with carry [".whl"], `bash bench/run_gpu.sh`, timeout_s about 540. Every step
# is stopped by `timeout` within BUDGET_S seconds (default 480).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/bench-gpu-out}
RUN=${RUN:-check}
BUDGET_S=${BUDGET_S:-480}
KERNELS_S=${KERNELS_S:-60}
WHEELS=${WHEELS:-.whl}
START=$(date +%s)
mkdir -p "$OUT"

if ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    echo "run_gpu.sh: no wheels in $WHEELS/: run DEST=.whl bash ../shared/device/make-wheels.sh here and carry .whl" >&2
    exit 2
fi
# make-wheels.sh's install line; fl_core and the built-in app (cifar10_app) from the checkout, uninstalled.
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$WHEELS"/*.whl || {
    echo "run_gpu.sh: installing the wheels failed" >&2
    exit 3
}
export PYTHONPATH=/tmp/site:$PWD:$PWD/apps/cifar10 PYTHONUNBUFFERED=1
nvidia-smi -L 2>&1 | tee "$OUT/nvidia-smi.txt"
left() { echo $((BUDGET_S - ($(date +%s) - START) - ${1:-0})); }  # seconds of the budget left, less $1

if [ "$RUN" = check ]; then
    timeout --kill-after=10 "${CHECK_S:-150}" python3 bench/gpu_check.py --out "$OUT/gpu_check.json" 2>&1 |
        tee "$OUT/gpu_check.log"
    check=${PIPESTATUS[0]}
    echo "run_gpu.sh: gpu_check.py exit status ${check}; bench_pfl.py gets $(left 10) s"
    timeout --kill-after=10 "$(left 10)" python3 bench/bench_pfl.py --device cuda --synthetic --data-dir /tmp/pfl-data \
        --pfl-python python3 --repeats 2 --out "$OUT/pfl_gpu.json" "$@" 2>&1 | tee "$OUT/pfl_gpu.log"
    status=${PIPESTATUS[0]}
    echo "run_gpu.sh: bench_pfl.py exit status ${status}; total $(($(date +%s) - START)) s; results in $OUT"
    [ "$check" -ne 0 ] && exit "$check"
    exit "$status"
fi

engine_s=$(left $((15 + KERNELS_S)))  # no new configuration after engine_s - 100 (one takes well under 100 s)
timeout --kill-after=10 "$engine_s" python3 bench/bench_engine.py --against gpu --fraction-train 0.8 0.1 \
    --time-budget $((engine_s > 160 ? engine_s - 100 : 60)) --out "$OUT/gpu.json" "$@" 2>&1 | tee "$OUT/gpu.log"
status=${PIPESTATUS[0]}
device=cuda
[ "${1:-}" = "--device" ] && device=${2:-cuda} # the CPU smoke check passes --device cpu first
timeout --kill-after=5 "$KERNELS_S" python3 bench/bench_kernels.py --device "$device" --vmap-clients 1 8 64 \
    --cohort-clients 1 8 64 \
    --repeats 3 --out "$OUT/kernels.json" 2>&1 | tee "$OUT/kernels.log"
echo "run_gpu.sh: bench_engine.py exit status ${status}; total $(($(date +%s) - START)) s; results in $OUT"
exit "$status"
