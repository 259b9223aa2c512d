#!/usr/bin/env bash
# The GPU check: on a machine with a CUDA GPU, in under 8 minutes, print what the GPU path gives.
#   1. the GPU-marked tests (tests/test_gpu.py: the splits live on the GPU, grouped steps train as
#      Lightning's step does, the default config fits through the CLI);
#   2. benchmarks/throughput.py --accelerator gpu (data on the device; (b) and (c) on the GPU);
#   3. each fast config (configs/fast/*.yaml) fitted on the GPU: its test accuracy and its fit's time.
# Needs the project installed (`make install data`); PYTHON picks another interpreter. Usage:
#   bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
MLPLAB="$(dirname "$PYTHON")/mlplab"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

"$PYTHON" -c "import sys, torch; torch.cuda.is_available() or sys.exit('gpu_check: torch sees no CUDA device'); \
print('gpu_check:', torch.cuda.get_device_name(0), '| torch', torch.__version__, '| CUDA', torch.version.cuda)"
git log -1 --format='gpu_check: commit %h %cs' 2>/dev/null || true

echo "== 1. GPU tests"
"$PYTHON" -m pytest -m gpu -q -p no:cacheprovider tests/test_gpu.py

echo "== 2. throughput on the GPU"
timeout 300 "$PYTHON" benchmarks/throughput.py --accelerator gpu --repeats 3 --epochs 4

echo "== 3. fast configs on the GPU"
for config in configs/fast/*.yaml; do
  "$MLPLAB" fit --config "$config" --trainer.accelerator=gpu --trainer.enable_progress_bar=false \
    --trainer.logger.init_args.save_dir="$scratch" 2>&1 | grep -E '^mlplab: (fit took|test/acc)' | sed "s|^|$config: |"
done
