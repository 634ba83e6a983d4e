#!/usr/bin/env bash
# The one call of a short GPU session (BENCHMARKS.md, "Checking the kernels on a GPU"), with
# ../shared/gpu-check.sh and the wheels copied to the checkout's .gpu/ (ignored by git):
#   1. the tests that need a GPU, first (the `gpu` mark), then the others of the GPU-facing files
#      while the bound allows;
#   2. the kernel benchmark groups (`-m kernels`) and their report;
#   3. both tuning tools, each then benchmarking its fastest variant, and the decoder's kernels by
#      GPU time.
# Each step has a time bound: 515 s together with about 20 s of installing, up to 20 s more where
# gpu-check.sh kills a step (run the call with a 560 s limit). Results go to $OUT (a path without
# spaces: gpu-check.sh splits the commands below into words), 7 files: gpu.txt, tests.log,
# bench.json, report.md, bench-decoder-tuned.json, bench-seed_mask-tuned.json, tune.txt.
set -uo pipefail
: "${OUT:?set OUT to the folder the results go to}"
cd "$(dirname "$0")/.."  # the checkout's root
GPU_CHECK=${GPU_CHECK:-.gpu/gpu-check.sh}  # another for tests/test_gpu_session.py's dry run

# tests/kernels/test_gpu_compilation.py and test_gpu_dispatch.py compile for sm_90 and trace the GPU
# dispatch without a GPU: CI runs them; here they would take about a minute
export PYTHONUNBUFFERED=1 TEST_S=160 BENCH_S=120 RESTR_BENCH_BUDGET_S=105 \
  TEST_CMD="python3 -m pytest tests/kernels tests/models tests/test_predictor.py tests/test_cuda_graphs.py
    tests/test_attention.py tests/test_devices.py -q -p no:cacheprovider -rs
    --ignore=tests/kernels/test_gpu_compilation.py --ignore=tests/kernels/test_gpu_dispatch.py" \
  BENCH_CMD="python3 -m pytest benchmarks/ -m kernels --benchmark-only -q -p no:cacheprovider
    --benchmark-json=$OUT/bench.json" \
  REPORT_CMD="timeout 15 python3 -m benchmarks.report $OUT/bench.json --out /tmp/charts"
bash "$GPU_CHECK"
rm -f "$OUT/bench.log"  # pytest's console output, whose tail gpu-check.sh printed: the device tool brings back 8 files

# the packages gpu-check.sh installed from the wheels
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} \
  LD_LIBRARY_PATH=/tmp/site/nvidia/cuda_runtime/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
{
  timeout 100 python3 -m benchmarks.tune_decoder --then-benchmark "$OUT/bench-decoder-tuned.json" \
    --benchmark-timeout 50 --time-limit 100
  timeout 70 python3 -m benchmarks.tune_seed_mask --then-benchmark "$OUT/bench-seed_mask-tuned.json" \
    --benchmark-timeout 35 --time-limit 70
  timeout 30 python3 -m benchmarks.profile_step --decoder
} > "$OUT/tune.txt" 2>&1
