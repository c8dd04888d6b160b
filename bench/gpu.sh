#!/usr/bin/env bash
# The GPU benchmark run, as one script for a lent GPU machine: LLaVA-1.5-7B's shape (CLIP ViT-L/14@336 + Llama-2-7B)
# with random fp16 weights, built once on the GPU into a temp folder, then bench/speed.py (every method at keep
# 1 / 0.25 / 0.1) and bench/decode.py (the KV-cache methods, 3 frames, 256 new tokens), each through the app's runner
# with CUDA-synchronised clocks and the CUDA allocator's peak. Tables land in bench/results/ (and in $OUT if set).
#
#     bash bench/gpu.sh            # wheels in .whl/ (transformers as pinned) are installed first when present
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 VLM_THREADS=${VLM_THREADS:-4}
PY=${PYTHON:-python3}
if compgen -G ".whl/*.whl" > /dev/null; then  # the pinned transformers where the machine's image has another
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
$PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__,
      torch.cuda.get_device_name(0))"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv || true
model=$(mktemp -d /tmp/llava7b-XXXX)
start=$(date +%s)
$PY bench/speed.py --shape llava-1.5-7b --dtype float16 --repeats 3 --model-dir "$model"
echo "speed: $(( $(date +%s) - start )) s"
$PY bench/decode.py --shape llava-1.5-7b --dtype float16 --frames 3 --tokens 256 --repeats 3 --model-dir "$model"
echo "speed + decode: $(( $(date +%s) - start )) s"
if [ -n "${OUT:-}" ]; then cp bench/results/*llava-1.5-7b* "$OUT"/; fi
