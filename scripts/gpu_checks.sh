#!/usr/bin/env bash
# The GPU checks of the full run, in one short script (about 6 minutes on one H200):
#   1. qwen_minimal against transformers on CUDA (fp32 logits), and the MoE's grouped bf16 expert path
#      against its one-expert-at-a-time path (loss and gradients under bf16 autocast);
#   2. a few hundred steps of the wikitext103 preset (bf16 autocast, torch.compile, fused AdamW):
#      tokens/s, MFU, peak memory, graph breaks;
#   3. the latency benchmark on CUDA (python -m qwen_minimal.bench), eager, then compiled.
# Every stage has a time limit and the next one runs even if it fails. Logs and figures go to OUT_DIR.
#
#   scripts/gpu_checks.sh OUT_DIR [STEPS]      (data: $QWEN_MINIMAL_DATA / $QWEN_MINIMAL_TOKENIZER, or the hub)
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
timeout 90 $python - <<'EOF' 2>&1 | tee -a "$out/parity.log"
import torch
from qwen_minimal import ModelConfig, moe
from qwen_minimal.bench import same_weights_pair

device = "cuda" if torch.cuda.is_available() else "cpu"
config = ModelConfig(vocab_size=1000, hidden_size=256, num_layers=2, num_heads=8, num_kv_heads=2, head_dim=32,
                     max_seq_len=128, num_experts=8, top_k=2, expert_intermediate_size=512)
ours, hf = same_weights_pair(config, seed=0, device=device)
x = torch.randint(0, config.vocab_size, (4, 64), device=device)
with torch.no_grad():
    diff = (ours(x).logits - hf(x).logits).abs().max().item()
print(f"fp32 logits, qwen_minimal vs transformers on {device}: max |diff| = {diff:.2e}")
assert diff < 1e-4, "fp32 logits differ from transformers"

ours.train()
def loss_and_grads(autocast=True):
    ours.zero_grad()
    with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
        loss = ours(x, targets=x.roll(-1, dims=1)).loss
    loss.backward()
    return loss.item(), torch.cat([p.grad.flatten().float() for p in ours.parameters()])
with torch.autocast(device, dtype=torch.bfloat16):
    path = moe.grouped_dtype(torch.empty(1, device=device))
print(f"expert path under bf16 autocast on {device}: " + (f"F.grouped_mm in {path}" if path else "one expert at a time"))
fp32, grouped = loss_and_grads(autocast=False), loss_and_grads()
moe.grouped_dtype = lambda x: None  # force the one-expert-at-a-time path
looped = loss_and_grads()
def error(run):  # loss difference and gradient relative error against fp32
    return abs(run[0] - fp32[0]), ((run[1] - fp32[1]).norm() / fp32[1].norm()).item()
(loss_g, grad_g), (loss_l, grad_l) = error(grouped), error(looped)
print(f"bf16 autocast against fp32: grouped experts loss {loss_g:.1e}, gradients {grad_g:.2e}; "
      f"one at a time loss {loss_l:.1e}, gradients {grad_l:.2e}")
assert grad_g < 2 * grad_l + 1e-3 and loss_g < 2 * loss_l + 1e-3, "the grouped path is further from fp32"
print("parity OK")
EOF

echo "== 2. wikitext103 preset, $steps steps" | tee "$out/train.log"
# TORCH_LOGS=graph_breaks prints every place where torch.compile had to split the model.
TORCH_LOGS=graph_breaks timeout 300 $python -m qwen_minimal.train --preset wikitext103 --max_steps "$steps" \
    --eval_interval 100 --checkpoint_interval 100000 --log_interval 20 --progress false \
    --out_dir "$run_dir/wikitext103" ${TRAIN_ARGS:-} 2>&1 | tee -a "$out/train.log"
cp "$run_dir/wikitext103/metrics.jsonl" "$out/" 2>/dev/null
tar -czf "$out/train_analytics.tar.gz" -C "$run_dir/wikitext103" analytics 2>/dev/null

echo "== 3. latency benchmark" | tee "$out/bench.log"
timeout 100 $python -m qwen_minimal.bench --device cuda --out_dir "$out/bench" ${BENCH_ARGS:-} 2>&1 | tee -a "$out/bench.log"
echo "== 3b. latency benchmark, compiled" | tee -a "$out/bench.log"
timeout 80 $python -m qwen_minimal.bench --device cuda --compile --skip_train --out_dir "$out/bench_compiled" \
    ${BENCH_ARGS:-} 2>&1 | tee -a "$out/bench.log"
rm -rf "$run_dir"
