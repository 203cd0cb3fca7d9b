#!/usr/bin/env bash
# The GPU checks of the full run, in one short script (about 6 minutes on one H200):
#   1. tests/gpu: qwen_minimal against transformers on CUDA (fp32 logits), and the MoE's grouped bf16 expert
#      path against its one-expert-at-a-time path (loss and gradients under bf16 autocast);
#   2. a few hundred steps of the wikitext103 preset (bf16 autocast, torch.compile, fused AdamW):
#      tokens/s, MFU, peak memory, graph breaks;
#   3. the latency benchmark on CUDA (python -m qwen_minimal bench), eager, then compiled.
# Every stage has a time limit and the next one runs even if it fails. Logs and figures go to OUT_DIR.
#
#   scripts/gpu_checks.sh OUT_DIR [STEPS]      (from the repository's root; data: $QWEN_MINIMAL_DATA /
#                                               $QWEN_MINIMAL_TOKENIZER, or the hub)
#
# TRAIN_ARGS and BENCH_ARGS are appended to the two commands (e.g. a dry run on a CPU:
# TRAIN_ARGS="--device cpu --batch_size 2 --block_size 32 --compile false" BENCH_ARGS="--device cpu --shape tiny").
set -uo pipefail
out=${1:?usage: scripts/gpu_checks.sh OUT_DIR [STEPS]}
steps=${2:-300}
python=${PYTHON:-python3}
mkdir -p "$out"
run_dir=$(mktemp -d)  # the checkpoint (about 5 GB with the optimizer state) stays out of OUT_DIR
export PYTHONUNBUFFERED=1

{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
  $python -c "import torch, transformers; print('torch', torch.__version__, '| transformers', transformers.__version__)"
} 2>&1 | tee "$out/environment.txt"

echo "== 1. CUDA parity" | tee "$out/parity.log"
timeout 120 $python -m pytest -q -s tests/gpu 2>&1 | tee -a "$out/parity.log"

echo "== 2. wikitext103 preset, $steps steps" | tee "$out/train.log"
# TORCH_LOGS=graph_breaks prints every place where torch.compile had to split the model.
TORCH_LOGS=graph_breaks timeout 300 $python -m qwen_minimal train --preset wikitext103 --max_steps "$steps" \
    --eval_interval 100 --checkpoint_interval 100000 --log_interval 20 --progress false \
    --out_dir "$run_dir/wikitext103" ${TRAIN_ARGS:-} 2>&1 | tee -a "$out/train.log"
cp "$run_dir/wikitext103/metrics.jsonl" "$out/" 2>/dev/null
tar -czf "$out/train_analytics.tar.gz" -C "$run_dir/wikitext103" analytics 2>/dev/null

echo "== 3. latency benchmark" | tee "$out/bench.log"
timeout 100 $python -m qwen_minimal bench --device cuda --out_dir "$out/bench" ${BENCH_ARGS:-} 2>&1 | tee -a "$out/bench.log"
echo "== 3b. latency benchmark, compiled" | tee -a "$out/bench.log"
timeout 80 $python -m qwen_minimal bench --device cuda --compile --skip_train --out_dir "$out/bench_compiled" \
    ${BENCH_ARGS:-} 2>&1 | tee -a "$out/bench.log"
rm -rf "$run_dir"
