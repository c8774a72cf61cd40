#!/usr/bin/env bash
# Every CUDA figure in one go: the CUDA tests, then the benchmarks that take --device cuda
# (fp32 and bf16 autocast, torch.compile off and on), then one table of their last
# key=value lines. Sized for one GPU in under 10 minutes: each step has its own time
# limit, and a step that fails or runs out of time shows as such in the table instead of
# stopping the rest. Logs go to $GPU_OUT (default out/gpu).
#
#     bash benchmarks/gpu.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
OUT=${GPU_OUT:-out/gpu}

"$PYTHON" - <<'EOF' || exit 2
import sys
try:
    import torch
except ImportError:
    sys.exit(f"error: {sys.executable} cannot import torch: activate the project's environment or set PYTHON")
if not torch.cuda.is_available():
    sys.exit(f"error: benchmarks/gpu.sh needs a CUDA device: torch {torch.__version__} sees none "
             "(torch.cuda.is_available() is False)")
EOF
mkdir -p "$OUT"
"$PYTHON" -c "import torch; print('GPU:', torch.cuda.get_device_name(0), '| torch', torch.__version__)"

STEPS=()
# step NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log, remember it.
step() {
    local name=$1 limit=$2
    shift 2
    echo "== $name: $*"
    local start=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local status=$?
    echo "   exit $status after $((SECONDS - start)) s"
    echo "$status" >"$OUT/$name.status"
    STEPS+=("$name")
}

BD=(benchmarks/block_diagonal.py --device cuda --rounds 1 --repeats 10 --warmup 3)
TT=(benchmarks/training_throughput.py --device cuda --rounds 3 --training-tokens 204800)
# time limits add up to 570 s
step tests_cuda 60 "$PYTHON" -m pytest -m cuda tests -q -p no:cacheprovider
# block_diagonal.py times every step in fp32 and again under bf16 autocast (its bf16 column)
step block_diagonal 140 "$PYTHON" "${BD[@]}"
step block_diagonal_compile 200 "$PYTHON" "${BD[@]}" --compile --shapes gpt2-small \
    --saes standard,block_diagonal,topk,block_diagonal_topk
step training_throughput_fp32 70 "$PYTHON" "${TT[@]}"
step training_throughput_bf16_compile 70 "$PYTHON" "${TT[@]}" --autocast --compile
step dfa 30 "$PYTHON" benchmarks/dfa.py --device cuda

echo
printf '%-34s %-8s %s\n' "step" "status" "result (last line of its log)"
for name in "${STEPS[@]}"; do
    status=$(cat "$OUT/$name.status")
    case $status in
        0) label=ok ;;
        124) label=timeout ;;
        *) label="exit $status" ;;
    esac
    printf '%-34s %-8s %s\n' "$name" "$label" "$(tail -n 1 "$OUT/$name.log")"
done
