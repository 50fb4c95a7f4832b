#!/usr/bin/env bash
# The GPU checks and benchmarks as one prepared command for the H100/H200 device machine.
# By default (RUN=check): bench/gpu_check.py (fedsweep's GPU paths on real CUDA: client workers per GPU,
# GPU memory per worker, the server's share, no process left holding memory) and then bench_pfl.py
# --device cuda (fedsweep against pfl-research 0.6.0 on the GPU, both shapes of its CPU benchmark,
# alternating, on a CIFAR-shaped synthetic set: CIFAR-10 cannot be carried beside the wheels).
# RUN=sharing: bench_gpu.py (2/4/8 client workers sharing the GPU against a tight loop) and
# bench_kernels.py (the app's kernels). RUN=scaling: bench_scaling.py (below).
#
# Before (here, in the repo root, once):
#   DEST=.whl bash ../shared/device/make-wheels.sh tomli tomli-w grpcio-health-checking==1.81.1 \
#       pydantic==2.14.4 pydantic-core==2.50.5 typing-inspection annotated-types wcwidth \
#       pfl==0.6.0 dp-accounting==0.5.1 prv-accountant==0.2.0
#   (fills .whl/ with the Python 3.12 wheels of Ray, Flower, Flower Datasets and the dependencies
#   that machine's image lacks: on 2026-12-04 without the names after make-wheels.sh, Flower's config
#   import failed there on tomli; pfl and its two accountants for bench_pfl.py, the image holding
#   scipy and absl-py; 60 MB in all; .whl/ is git-ignored).
# Then call the device tool's `run` with carry [".whl"] and the command
#   bash bench/run_gpu.sh
# and a timeout_s of about 540. RUN=check writes to $OUT: gpu_check.json and .log, pfl_gpu.json and
# .log (bench_pfl.py: 2 runs per side and shape, fewer when the budget runs out: each run's results
# are written as it ends; arguments are passed on to it), nvidia-smi.txt. It needs a GPU.
# RUN=sharing: arguments go to bench_gpu.py (`RUN=sharing bash bench/run_gpu.sh --device cpu --smoke`
# checks the script on a CPU machine; WHEELS=DIR takes the wheels from DIR instead of .whl, e.g. a
# stand-in wheel for that check). It writes gpu.json (results, rewritten after every configuration),
# gpu.log (console), nvidia-smi.txt, and kernels.json/kernels.log from bench_kernels.py on the GPU
# (memory layouts and vmap cohorts; given KERNELS_S seconds, default 60, out of the budget).
#
# The whole script keeps to BUDGET_S seconds (default 480, i.e. 8 minutes):
# each step is stopped outright by `timeout` before the budget ends (bench_gpu.py also starts no new
# configuration after its --time-budget).
#
# RUN=scaling bash bench/run_gpu.sh   runs bench_scaling.py instead (and neither bench_gpu.py nor
# bench_kernels.py): the round-time model of K CPU workers, checked against engine runs at
# K = 1,2,4,8,14 (SCALING_MEASURE) on the machine's CPU cores, the GPU hidden
# (CUDA_VISIBLE_DEVICES empty), in the configurations SCALING_CONFIGS (default: Dirichlet and IID,
# each with central evaluation in the server and message order, and on the workers with LPT; the
# copy there has no git history, so no run of the committed engine). Data: CIFAR-10 when SCALING_DATA_DIR names a folder holding
# cifar-10-batches-py, or when shared/datasets/make_cifar10.py or ../shared/datasets/make_cifar10.py is
# there to write it (about 10 s; ../shared does not travel to the device machine, and its 55 MB
# source with the wheels is over what a call may carry); else, as bench_gpu.py, a CIFAR-shaped
# synthetic set of CIFAR-10's sizes (50,000 training and 10,000 test images: same shapes, so the
# same costs; its Dirichlet split differs a little from CIFAR-10's). No new engine run starts later than
# 60 s before the budget's end. Out: scaling.json (rewritten after every engine run), scaling.png,
# scaling.log, nvidia-smi.txt. Arguments are passed on to bench_scaling.py (after the script's own:
# `RUN=scaling bash bench/run_gpu.sh --quick --measure 1` is the CPU smoke check).
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
# The install line of make-wheels.sh's header; fl_core from the repository root and the built-in
# app's package (cifar10_app) from its folder, as nothing is pip-installed there.
SITEPATH=/tmp/site:$PWD:$PWD/apps/cifar10
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$WHEELS"/*.whl && export PYTHONPATH=$SITEPATH
if [ "${PYTHONPATH:-}" != "$SITEPATH" ]; then
    echo "run_gpu.sh: installing the wheels failed" >&2
    exit 3
fi
export PYTHONUNBUFFERED=1

nvidia-smi -L 2>&1 | tee "$OUT/nvidia-smi.txt"

if [ "$RUN" = scaling ]; then
    export CUDA_VISIBLE_DEVICES=  # CPU workers only: the scaling model is about CPU cores
    data_dir=${SCALING_DATA_DIR:-}
    if [ -z "$data_dir" ]; then
        for maker in shared/datasets/make_cifar10.py ../shared/datasets/make_cifar10.py; do
            if [ -f "$maker" ] && python3 "$maker" /tmp/scaling-cifar >/dev/null; then
                data_dir=/tmp/scaling-cifar
                break
            fi
        done
    fi
    if [ -n "$data_dir" ]; then
        data_args=(--data-dir "$data_dir")
    else
        data_args=(--dataset synthetic --synthetic-size 50000)
    fi
    elapsed=$(( $(date +%s) - START ))
    left=$(( BUDGET_S - elapsed - 10 ))  # seconds bench_scaling.py may run at most
    runs_budget=$(( left - 60 ))          # no new engine run after this (one takes well under 60 s)
    [ "$runs_budget" -lt 60 ] && runs_budget=60
    echo "run_gpu.sh: RUN=scaling, ${elapsed} s spent on setup; bench_scaling.py gets ${left} s; data: ${data_args[*]}"
    timeout --kill-after=10 "$left" python3 bench/bench_scaling.py "${data_args[@]}" \
        --measure "${SCALING_MEASURE:-1,2,4,8,14}" \
        --measure-configs "${SCALING_CONFIGS:-dirichlet:server:message,dirichlet:workers:lpt,iid:server:message,iid:workers:lpt}" \
        --time-budget "$runs_budget" \
        --out "$OUT/scaling.json" --plot "$OUT/scaling.png" "$@" 2>&1 | tee "$OUT/scaling.log"
    status=${PIPESTATUS[0]}
    echo "run_gpu.sh: bench_scaling.py exit status ${status}; total $(( $(date +%s) - START )) s; results in $OUT"
    exit "$status"
fi

if [ "$RUN" = check ]; then
    timeout --kill-after=10 "${CHECK_S:-150}" python3 bench/gpu_check.py --out "$OUT/gpu_check.json" 2>&1 \
        | tee "$OUT/gpu_check.log"
    check=${PIPESTATUS[0]}
    left=$(( BUDGET_S - ($(date +%s) - START) - 10 ))
    echo "run_gpu.sh: gpu_check.py exit status ${check}; bench_pfl.py gets ${left} s"
    timeout --kill-after=10 "$left" python3 bench/bench_pfl.py --device cuda --synthetic --data-dir /tmp/pfl-data \
        --pfl-python python3 --repeats 2 --out "$OUT/pfl_gpu.json" "$@" 2>&1 | tee "$OUT/pfl_gpu.log"
    status=${PIPESTATUS[0]}
    echo "run_gpu.sh: bench_pfl.py exit status ${status}; total $(( $(date +%s) - START )) s; results in $OUT"
    [ "$check" -ne 0 ] && exit "$check"
    exit "$status"
fi

elapsed=$(( $(date +%s) - START ))
left=$(( BUDGET_S - elapsed - 15 - KERNELS_S ))  # seconds bench_gpu.py may run at most
config_budget=$(( left - 100 ))             # no new configuration after this (one takes well under 100 s)
[ "$config_budget" -lt 60 ] && config_budget=60
echo "run_gpu.sh: ${elapsed} s spent on setup; bench_gpu.py gets ${left} s"
timeout --kill-after=10 "$left" python3 bench/bench_gpu.py \
    --fraction-train 0.8 0.1 \
    --time-budget "$config_budget" \
    --out "$OUT/gpu.json" "$@" 2>&1 | tee "$OUT/gpu.log"
status=$?
echo "run_gpu.sh: bench_gpu.py exit status ${status}; $(( $(date +%s) - START )) s so far"
device=cuda
[ "${1:-}" = "--device" ] && device=${2:-cuda}       # the CPU smoke check passes --device cpu first
timeout --kill-after=5 "$KERNELS_S" python3 bench/bench_kernels.py --device "$device" --vmap-clients 1 8 64 \
    --repeats 3 --out "$OUT/kernels.json" 2>&1 | tee "$OUT/kernels.log"
echo "run_gpu.sh: bench_kernels.py exit status ${PIPESTATUS[0]}; total $(( $(date +%s) - START )) s; results in $OUT"
exit "$status"
