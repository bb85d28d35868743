#!/usr/bin/env bash
# GPU check: the CUDA tables of docs/PERFORMANCE.md and the tests that need no ROS, in one run.
#
# Run from the repository root on a machine with a CUDA GPU, python3 with torch, onnxruntime,
# opencv, PyYAML and tqdm (no rclpy, no internet needed), the published weights in
# .assets/models/ (espnet_p_2_q_8_camvid.pth, espnetv2_s_2.0_city_1024x512.pth):
#
#     bash benchmarks/gpu_check.sh [WEIGHTS_FOLDER]      (about 5 minutes at most)
#
# Prints markdown: the machine, the onnxruntime providers, engine_bench on CUDA for ESPNet and
# ESPNetv2 at 480x360 and 1280x720 (torch fp32, fp16, torch.compile; onnxruntime's CUDA and
# TensorRT providers where this onnxruntime has them, else a line saying they are absent), then
# the pytest subset that imports no rclpy. Each part has its own time limit, so one slow part
# (a torch.compile or a TensorRT engine build) cannot take the others' time; rows are printed
# as they finish.

set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WEIGHTS=${1:-.assets/models}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# Exports and TensorRT engines go to a fresh folder, removed at the end.
SEMSEG_ROS_CACHE=$(mktemp -d /tmp/semseg_gpu_check.XXXXXX)
export SEMSEG_ROS_CACHE
trap 'rm -rf "$SEMSEG_ROS_CACHE"' EXIT
START=$(date +%s)

section() { echo; echo "## $1 ($(($(date +%s) - START)) s)"; echo; }
# part SECONDS COMMAND...: run with a time limit; say so when it is cut short.
part() {
    local limit=$1; shift
    timeout --signal=INT --kill-after=10 "$limit" "$@"
    local rc=$?
    if [ $rc -eq 124 ] || [ $rc -eq 130 ] || [ $rc -eq 137 ]; then
        echo; echo "**stopped after its limit of $limit s** (rows above are complete)"
    elif [ $rc -ne 0 ]; then
        echo; echo "**exit status $rc**"
    fi
}

section 'Machine'
$PY - <<'EOF'
import platform
import torch
print(f'- python {platform.python_version()}, torch {torch.__version__} (CUDA '
      f'{torch.version.cuda}), cudnn {torch.backends.cudnn.version()}')
if torch.cuda.is_available():
    print(f'- GPU: {torch.cuda.get_device_name(0)}, {torch.cuda.device_count()} device(s)')
else:
    print('- **no CUDA device visible to torch**: the CUDA tables below cannot run')
try:
    import onnxruntime as ort
    have = ort.get_available_providers()
    print(f'- onnxruntime {ort.__version__}: providers {", ".join(have)}')
    for name in ('CUDAExecutionProvider', 'TensorrtExecutionProvider'):
        if name not in have:
            print(f'- {name}: **absent** in this onnxruntime build (rows using it say so)')
except ImportError as exc:
    print(f'- onnxruntime: **not importable** ({exc})')
try:
    import rclpy  # noqa: F401
    print('- rclpy: importable (not needed here)')
except ImportError:
    print('- rclpy: not importable (as expected: nothing below needs it)')
EOF
for f in espnet_p_2_q_8_camvid.pth espnetv2_s_2.0_city_1024x512.pth; do
    [ -f "$WEIGHTS/$f" ] || echo "- **$WEIGHTS/$f missing**: that model runs with random weights"
done

BENCH=("$PY" benchmarks/engine_bench.py --device cuda --cache "$WEIGHTS" --images road
       --outputs label+color+drivable --repeat 10)

section 'engine_bench on CUDA: torch fp32 and fp16, onnxruntime (CUDA provider)'
part 70 "${BENCH[@]}" --runtimes torch torch:fp16 onnxruntime

section 'engine_bench on CUDA: torch.compile'
part 80 "${BENCH[@]}" --runtimes torch torch:compile

section 'engine_bench on CUDA: TensorRT (onnxruntime provider), fp32 and fp16'
if $PY -c 'import onnxruntime as o, sys; sys.exit("TensorrtExecutionProvider" not in o.get_available_providers())' 2>/dev/null; then
    part 60 "${BENCH[@]}" --runtimes torch tensorrt tensorrt:fp16
else
    echo 'TensorRT: **absent** (this onnxruntime has no TensorrtExecutionProvider; install'
    echo 'onnxruntime-gpu with TensorRT for these rows). Not run.'
fi

section 'pytest: the tests that need no ROS (CUDA tests run where a GPU is visible)'
if $PY -m pytest --version >/dev/null 2>&1; then
    part 75 "$PY" -m pytest -q -p no:cacheprovider --continue-on-collection-errors -rs \
        test/test_runtimes.py test/test_engine.py test/test_upsample.py test/test_espnet.py \
        test/test_espnetv2.py test/test_pipeline.py test/test_settings.py test/test_classes.py \
        test/test_metrics.py test/test_registry.py test/test_weights.py test/test_memory.py \
        2>&1 | tail -40
else
    echo 'pytest: **not installed** for this python; tests not run (pip install pytest).'
fi

echo
echo "Total: $(($(date +%s) - START)) s"
