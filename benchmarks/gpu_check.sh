#!/usr/bin/env bash
# The GPU checks of the CUDA-graph training step, as one script (about 5 minutes on one H200,
# at most 8: each part has its own timeout). Run it from the repository root on a machine
# with CUDA, e.g. through the device tool of this workplace:
#
#   run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=560)
#
# 1. tests/test_graph_step.py with CUDA: graph-captured training steps against eager ones
#    from the same seed (float32 tolerance), re-capture on a new shape and after a resume,
#    train_maml with the graph against eager training; the CPU tests run too.
# 2. benchmarks/train_throughput.py --device cuda: meta-steps/s of train_maml (the graph),
#    of the eager loop, of the memory-bounded mode (maml.max_tasks_in_flight 1 and 4) and of
#    a higher training loop, 5-way 32 tasks 1 step and 20-way 16 tasks 5 steps, second
#    order; peak memory; projected wall time of 60,000 meta-steps.
#
# Writes gpu_tests.log, train_throughput.log and train_throughput.json into $OUT (the device
# tool's folder) or else benchmarks/out. Exit status 0 only if both parts succeeded.
#
# Packages the device image lacks travel as wheels in .whl/ (ignored by git); make them here
# with (Python 3.12 on the device):
#   python -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl higher==0.2.1 jsonschema==4.26.0 jsonschema-specifications==2025.9.1 \
#     referencing==0.37.0 rpds-py==2026.9.1
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-benchmarks/out}"
mkdir -p "$OUT_DIR"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS="${OMP_NUM_THREADS:-4}"

if ! "$PY" -c "import higher, jsonschema" 2>/dev/null; then
    if ls .whl/*.whl >/dev/null 2>&1; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site .whl/*.whl || exit 1
        export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
    else
        echo "missing higher/jsonschema and no .whl/ wheels (see the head of this script)" >&2
    fi
fi
if ! "$PY" -c "import mamlscope" 2>/dev/null; then
    export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA here'; \
print('torch', torch.__version__, torch.cuda.get_device_name())" || exit 1

status=0
echo "== 1. CUDA correctness: tests/test_graph_step.py"
timeout 170 "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_graph_step.py 2>&1 \
    | tee "$OUT_DIR/gpu_tests.log" || status=1
if grep -q "SKIPPED.*needs CUDA" "$OUT_DIR/gpu_tests.log"; then
    echo "ERROR: the CUDA tests were skipped" | tee -a "$OUT_DIR/gpu_tests.log"
    status=1
fi

echo "== 2. training throughput and the memory-bounded mode against higher"
timeout 300 "$PY" benchmarks/train_throughput.py --device cuda --bounded 1 4 \
    --out "$OUT_DIR/train_throughput.json" 2>&1 | tee "$OUT_DIR/train_throughput.log" || status=1

echo "== gpu_check.sh: exit status $status"
exit $status
