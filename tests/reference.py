"""Small random transformers Qwen3 / Qwen3-MoE models: the reference every parity test
compares against."""

import torch
from transformers import (
    Qwen3Config,
    Qwen3ForCausalLM,
    Qwen3MoeConfig,
    Qwen3MoeForCausalLM,
)


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Weights with std 0.1 (and norm gains around 1) so that every layer matters in the
    comparison."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            noise = torch.randn(p.shape, generator=g) * 0.1
            p.copy_(noise + 1.0 if p.dim() == 1 else noise)
    return model.eval()


def hf_moe(
    num_experts=5,
    num_experts_per_tok=2,
    hidden=64,
    heads=4,
    kv_heads=2,
    head_dim=24,
    layers=2,
    vocab=97,
    tie=False,
    seed=0,
):
    config = Qwen3MoeConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=3 * hidden,
        moe_intermediate_size=48,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        num_experts=num_experts,
        num_experts_per_tok=num_experts_per_tok,
        norm_topk_prob=True,
        max_position_embeddings=128,
        output_router_logits=True,
        tie_word_embeddings=tie,
        router_aux_loss_coef=0.01,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
    )
    return randomize(Qwen3MoeForCausalLM(config), seed)


def hf_dense(
    hidden=64, heads=4, kv_heads=2, head_dim=24, layers=2, vocab=97, tie=True, seed=0
):
    config = Qwen3Config(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=96,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        max_position_embeddings=128,
        tie_word_embeddings=tie,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
    )
    return randomize(Qwen3ForCausalLM(config), seed)
