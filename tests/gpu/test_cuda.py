"""qwen_minimal on CUDA: the same logits as transformers in fp32, and under bf16
autocast the grouped expert path (one F.grouped_mm per projection) as close to fp32 as
the one-expert-at-a-time loop."""

import torch

from qwen_minimal import ModelConfig
from qwen_minimal.interop import same_weights_pair
from qwen_minimal.model.moe import grouped_mm_dtype

CONFIG = ModelConfig(
    vocab_size=1000,
    hidden_size=256,
    num_layers=2,
    num_heads=8,
    num_kv_heads=2,
    head_dim=32,
    max_seq_len=128,
    num_experts=8,
    num_experts_per_tok=2,
    expert_intermediate_size=512,
)


def test_fp32_logits_equal_transformers_on_cuda(cuda):
    ours, hf = same_weights_pair(CONFIG, seed=0, device=cuda)
    x = torch.randint(0, CONFIG.vocab_size, (4, 64), device=cuda)
    with torch.no_grad():
        diff = (ours(x).logits - hf(x).logits).abs().max().item()
    print(
        "fp32 logits, qwen_minimal vs transformers on "
        f"{torch.cuda.get_device_name(cuda)}: max |diff| = {diff:.2e}"
    )
    assert diff < 1e-4


def test_grouped_experts_are_as_close_to_fp32_as_the_loop(cuda):
    ours, _ = same_weights_pair(CONFIG, seed=0, device=cuda)
    ours.train()
    x = torch.randint(0, CONFIG.vocab_size, (4, 64), device=cuda)

    def loss_and_grads(path, autocast=True):
        for block in ours.blocks:
            block.ffn.experts.path = path
        ours.zero_grad()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            loss = ours(x, targets=x.roll(-1, dims=1)).loss
        loss.backward()
        return loss.item(), torch.cat(
            [p.grad.flatten().float() for p in ours.parameters()]
        )

    with torch.autocast("cuda", dtype=torch.bfloat16):
        assert grouped_mm_dtype(torch.empty(1, device=cuda)) == torch.bfloat16, (
            "needs an Ampere or newer GPU"
        )
    fp32, grouped, looped = (
        loss_and_grads("loop", autocast=False),
        loss_and_grads("grouped"),
        loss_and_grads("loop"),
    )

    def error(run):  # loss difference and gradient relative error against fp32
        return abs(run[0] - fp32[0]), (
            (run[1] - fp32[1]).norm() / fp32[1].norm()
        ).item()

    (loss_g, grad_g), (loss_l, grad_l) = error(grouped), error(looped)
    print(
        f"bf16 autocast against fp32: grouped experts loss {loss_g:.1e}, gradients "
        f"{grad_g:.2e}; "
        f"one at a time loss {loss_l:.1e}, gradients {grad_l:.2e}"
    )
    assert grad_g < 2 * grad_l + 1e-3 and loss_g < 2 * loss_l + 1e-3, (
        "the grouped path is further from fp32"
    )
