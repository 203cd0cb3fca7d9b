"""What the tests share besides fixtures: the micro model every training test trains,
and small random transformers models, the reference every parity test compares
against."""

import torch
from transformers import (
    Qwen3Config,
    Qwen3ForCausalLM,
    Qwen3MoeConfig,
    Qwen3MoeForCausalLM,
)

# A MoE small enough that a training step takes milliseconds: what the training,
# checkpoint and fault tests train (with the cpu-tiny preset's other settings).
MICRO_MODEL = dict(
    hidden_size=32,
    num_layers=2,
    num_heads=2,
    num_kv_heads=1,
    head_dim=16,
    intermediate_size=64,
    num_experts=4,
    num_experts_per_tok=2,
    expert_intermediate_size=32,
    max_seq_len=32,
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


HYBRID_CLASSES = {
    "qwen3_next": ("Qwen3NextConfig", "Qwen3NextForCausalLM"),
    "qwen3_5": ("Qwen3_5TextConfig", "Qwen3_5ForCausalLM"),
    "qwen3_5_moe": ("Qwen3_5MoeTextConfig", "Qwen3_5MoeForCausalLM"),
}


def hf_hybrid(
    family: str,
    layer_types=("linear_attention", "full_attention", "linear_attention"),
    hidden=48,
    heads=3,
    kv_heads=1,
    head_dim=16,
    partial_rotary_factor=0.25,
    linear_num_key_heads=3,
    linear_num_value_heads=6,
    linear_key_head_dim=8,
    linear_value_head_dim=12,
    num_experts=5,
    num_experts_per_tok=2,
    vocab=97,
    tie=False,
    seed=0,
    **extra,
):
    """A small random transformers hybrid of `family` (see HYBRID_CLASSES): odd head
    counts, linear key and value head dims that differ from each other and from the
    attention's, weights as randomize() draws them and decay rates A = exp(A_log)
    around 0.1, so that the linear-attention state remembers over many tokens (with
    A_log near 1, as randomize would leave it, every token would nearly erase it).
    The zero-centred norms (gain 1 + weight) get weights around 0, gains around 1 as
    randomize gives plain norms. extra: further config fields (mlp_only_layers,
    norm_topk_prob, ...)."""
    import transformers

    config_class, model_class = (
        getattr(transformers, name) for name in HYBRID_CLASSES[family]
    )
    moe = (
        {}
        if family == "qwen3_5"
        else dict(
            num_experts=num_experts,
            num_experts_per_tok=num_experts_per_tok,
            moe_intermediate_size=20,
            shared_expert_intermediate_size=28,
            router_aux_loss_coef=0.01,
        )
    )
    dense = {} if family == "qwen3_5_moe" else dict(intermediate_size=40)
    config = config_class(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=len(layer_types),
        layer_types=list(layer_types),
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        linear_num_key_heads=linear_num_key_heads,
        linear_num_value_heads=linear_num_value_heads,
        linear_key_head_dim=linear_key_head_dim,
        linear_value_head_dim=linear_value_head_dim,
        linear_conv_kernel_dim=4,
        max_position_embeddings=160,
        tie_word_embeddings=tie,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 10_000.0,
            "partial_rotary_factor": partial_rotary_factor,
        },
        **moe,
        **dense,
        **extra,
    )
    model = randomize(model_class(config), seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("A_log"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5 - 2.3)
            elif name.endswith("norm.weight") and "linear_attn" not in name:
                p.sub_(1.0)
    return model
