#!/usr/bin/env bash
# Issue 7's GPU measurements in one command, for a session that is lent a GPU (the `device` tool):
#
#   bash bench/gpu_report.sh [quick|compile|cudagraphs]   # writes $OUT/gpu_report_<part>.txt (default OUT: ./gpu_report)
#
# quick   (~6 min on an H100): versions, the CUDA kernel test and the kernel-vs-reference tests, then
#         bench/step_time.py (--profile; and --canonical-dtype float32), step_time_muon.py,
#         step_time_jax.py (fp32 and --x64) and memory.py on CUDA.
# compile (~up to 10 min):     bench/step_time.py --device cuda --compile --kernels reference (Inductor fuses the
#                              reference path's torch operations into its own Triton kernels; first call untimed).
# cudagraphs (~up to 10 min):  the same with --compile-mode reduce-overhead --nonfinite unchecked
#                              (one graph, no host sync: CUDA graphs remove the launch overhead).
#
# The device machine has no network: this installs gaugemath itself only (--no-deps), against the
# image's torch, triton, jax, optax, sympy, hypothesis and mpmath. Each command has its own time limit,
# and a failing one does not stop the others (its exit status is printed).
set -u
part="${1:-quick}"
out="${OUT:-gpu_report}"
mkdir -p "$out"
log="$out/gpu_report_${part}.txt"
py="${PYTHON:-python3}"

run() {  # run LIMIT_SECONDS CMD... : print the command, run it with a limit, print its status
    local limit="$1"; shift
    echo; echo "\$ $*"
    timeout "$limit" "$@"
    echo "[exit $?]"
}

{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    "$py" -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -2
    "$py" -c "import torch, triton, jax, optax, sympy; print('torch', torch.__version__, 'triton', triton.__version__, 'jax', jax.__version__, 'optax', optax.__version__, 'sympy', sympy.__version__)"
    if [ "$part" = "compile" ]; then
        run 570 "$py" bench/step_time.py --device cuda --compile --kernels reference --steps 50
    elif [ "$part" = "cudagraphs" ]; then
        run 570 "$py" bench/step_time.py --device cuda --compile --compile-mode reduce-overhead --nonfinite unchecked \
            --kernels reference --steps 50
    else
        run 150 "$py" -m pytest -q -x -p no:cacheprovider tests/test_kernels.py
        run 60 "$py" bench/step_time.py --device cuda --profile
        run 45 "$py" bench/step_time.py --device cuda --canonical-dtype float32
        run 45 "$py" bench/step_time_muon.py --device cuda
        run 60 "$py" bench/step_time_jax.py --model gpt2
        run 60 "$py" bench/step_time_jax.py --model gpt2 --x64
        run 45 "$py" bench/memory.py --device cuda
    fi
    date -u
} 2>&1 | tee "$log"
