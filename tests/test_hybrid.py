"""The Qwen3-Next / Qwen3.5 hybrid in QwenLM: one model class whose blocks mix with
softmax attention or Gated DeltaNet as layer_types says; prefill then decoding equals
one forward pass; the cache grows only in the attention layers; generate works with and
without the cache and compiled; every balancing strategy works beside a shared expert;
bad settings say what to change; the hybrid preset trains and resumes exactly."""

import dataclasses
import math

import pytest
import torch

from qwen_minimal import InputError, KVCache, ModelConfig, QwenLM
from qwen_minimal.model.attention import Attention
from qwen_minimal.model.balancing import training_loss
from qwen_minimal.model.gated_deltanet import GatedDeltaNet, LinearAttentionState
from qwen_minimal.model.kv_cache import kv_cache_bytes
from qwen_minimal.model.moe import MoE
from qwen_minimal.model.rmsnorm import RMSNorm
from qwen_minimal.training import TrainConfig, monitoring, train

# Small, nothing a special case: odd head counts, linear key and value head dims that
# differ, a dense layer among MoE layers, attention first and last.
HYBRID = ModelConfig.preset(
    "cpu-tiny-hybrid",
    vocab_size=101,
    hidden_size=48,
    num_layers=5,
    layer_types=["full_attention"] + ["linear_attention"] * 3 + ["full_attention"],
    num_heads=3,
    num_kv_heads=1,
    head_dim=16,
    linear_num_key_heads=3,
    linear_num_value_heads=6,
    linear_key_head_dim=8,
    linear_value_head_dim=12,
    intermediate_size=40,
    num_experts=5,
    expert_intermediate_size=20,
    shared_expert_intermediate_size=28,
    mlp_only_layers=[2],
    max_seq_len=160,
)


def model(config=HYBRID, seed=0) -> QwenLM:
    """A random model whose norms, gates and decays are moved off their initial
    values, so that each of them matters."""
    torch.manual_seed(seed)
    m = QwenLM(config).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.2)
            if name.endswith("A_log"):
                p.copy_(torch.randn_like(p) * 0.5 - 2.3)  # slow decay: long memory
    return m


def tokens(length, batch=2, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, HYBRID.vocab_size, (batch, length), generator=gen)


def test_one_model_class_with_the_mixer_and_ffn_each_layer_asks_for():
    m = model()
    mixers = [type(b.attn) for b in m.blocks]
    assert mixers == [Attention, GatedDeltaNet, GatedDeltaNet, GatedDeltaNet, Attention]
    assert [isinstance(b.ffn, MoE) for b in m.blocks] == [True, True, False, True, True]
    assert all(
        b.ffn.shared_expert is not None for b in m.blocks if isinstance(b.ffn, MoE)
    )
    # the gate doubles q_proj; a quarter of each head turns
    assert m.blocks[0].attn.q_proj.out_features == 2 * 3 * 16
    assert m.rope.cos.shape[-1] == 4
    # zero-centred norms start at zero (gain 1); the gated norm inside Gated DeltaNet
    # is a plain one
    fresh = QwenLM(HYBRID)
    norms = [mod for mod in fresh.modules() if isinstance(mod, RMSNorm)]
    centred = [n for n in norms if n.zero_centered]
    assert len(centred) == 1 + 2 * 5 + 2 * 2  # final, block norms, q/k norms
    assert all(torch.equal(n.weight, torch.zeros_like(n.weight)) for n in centred)
    assert all(
        torch.equal(n.weight, torch.ones_like(n.weight))
        for n in norms
        if not n.zero_centered
    )
    decay_rates = fresh.blocks[1].attn.A_log.exp()
    assert ((decay_rates > 0.01) & (decay_rates < 16)).all()


def test_partial_rope_leaves_the_unrotated_channels_alone():
    from qwen_minimal.model.rope import apply_rope

    x = torch.randn(2, 3, 7, 16)
    cos, sin = QwenLM(HYBRID).rope(5, 7)
    out = apply_rope(x, cos, sin)
    assert torch.equal(out[..., 4:], x[..., 4:])
    assert (out[..., :4] - x[..., :4]).abs().max() > 1e-2


@pytest.mark.parametrize("prompt", [3, 70])  # within one chunk, and longer
def test_prefill_then_decode_equals_one_forward(prompt):
    m, x = model(), tokens(prompt + 6)
    cache = KVCache.for_model(m, 2, prompt + 6)
    with torch.no_grad():
        full = m(x).logits
        steps = [m(x[:, :prompt], cache=cache).logits]
        steps += [
            m(x[:, t : t + 1], cache=cache).logits for t in range(prompt, prompt + 6)
        ]
    stepped = torch.cat(steps, dim=1)
    assert cache.length == prompt + 6
    torch.testing.assert_close(stepped, full, atol=1e-5, rtol=0)


def test_linear_layers_carry_the_past_through_their_state():
    """Changing only the first token changes the last token's logits: the state of the
    Gated DeltaNet layers carries it (the attention layers are removed here)."""
    config = dataclasses.replace(HYBRID, layer_types=["linear_attention"] * 5)
    m, x = model(config), tokens(40)
    y = x.clone()
    y[:, 0] = (x[:, 0] + 1) % config.vocab_size
    with torch.no_grad():
        assert (m(x).logits[:, -1] - m(y).logits[:, -1]).abs().max() > 1e-4


def test_cache_grows_only_in_the_full_attention_layers():
    m = model()
    short, long = (KVCache.for_model(m, 2, n) for n in (50, 150))
    full = HYBRID.full_attention_layers
    assert full == [0, 4]
    assert [k is not None for k in long.k] == [True, False, False, False, True]
    assert all(
        isinstance(long.linear_states[i], LinearAttentionState) for i in [1, 2, 3]
    )
    per_token = 2 * len(full) * 2 * HYBRID.num_kv_heads * HYBRID.head_dim * 4
    assert long.nbytes() - short.nbytes() == 100 * per_token
    assert kv_cache_bytes(HYBRID, 100, 2, 4) == 100 * per_token
    # the fixed part: three layers' conv and recurrent states
    state = 2 * (
        (2 * 3 * 8 + 6 * 12) * 3 * 4  # conv: channels * (kernel - 1), fp32
        + 6 * 8 * 12 * 4  # recurrent: value heads * Dk * Dv, fp32
    )
    assert short.nbytes() == 50 * per_token + 3 * state


def test_generate_with_and_without_cache_sampling_eos_and_streaming():
    m, prompt = model(), tokens(5)
    settings = dict(temperature=0.8, top_k=20, top_p=0.9, seed=3)
    streamed = []
    cached = m.generate(prompt, 12, on_token=streamed.append, **settings)
    uncached = m.generate(prompt, 12, use_cache=False, **settings)
    assert torch.equal(cached, uncached) and cached.shape == (2, 17)
    assert torch.equal(torch.cat(streamed, dim=1), cached[:, 5:])
    eos = int(cached[0, 7])
    stopped = m.generate(prompt, 12, eos_token_id=eos, **settings)
    assert (stopped[0, 8:] == eos).all()


def test_compiled_decoding_gives_the_eager_tokens():
    # a 2-layer hybrid (one of each mixer): torch.compile takes tens of seconds here
    config = dataclasses.replace(
        HYBRID,
        num_layers=2,
        layer_types=["linear_attention", "full_attention"],
        mlp_only_layers=[],
    )
    m, prompt = model(config), tokens(4)
    eager = m.generate(prompt, 8, temperature=0)
    assert torch.equal(m.generate(prompt, 8, temperature=0, compile=True), eager)


@pytest.mark.parametrize("balancing", ["joint", "per_layer", "global_batch", "bias"])
def test_every_balancing_strategy_trains_beside_the_shared_expert(balancing):
    config = dataclasses.replace(HYBRID, load_balancing=balancing)
    m, x = model(config).train(), tokens(20)
    out = m(x[:, :-1], targets=x[:, 1:])
    # the dense layer routes nothing; the shared expert is not routed
    assert out.tokens_per_expert.shape == (4, 5)
    assert (out.tokens_per_expert.sum(-1) == 2 * 19 * 2).all()
    aux = training_loss(config, out, out.tokens_per_expert)
    assert (aux is None) == (balancing == "bias")
    out.loss.backward()
    shared = m.blocks[0].ffn
    assert shared.shared_expert.up_proj.weight.grad.abs().max() > 0
    assert shared.shared_expert_gate.weight.grad.abs().max() > 0
    assert m.blocks[1].attn.A_log.grad.abs().max() > 0


def test_flops_grow_with_the_context_only_in_attention_layers():
    m = model()
    attention = 4 * 2 * HYBRID.num_heads * HYBRID.head_dim  # two attention layers
    assert m.flops_per_token(100) - m.flops_per_token(0) == 100 * attention


def test_qwen3_configs_and_old_checkpoint_configs_are_unchanged():
    """A config.json written before the hybrid fields existed loads, and a Qwen3 model
    has the same tensors as before: no gate, no shared expert, full RoPE."""
    old = {k: v for k, v in ModelConfig.preset("cpu-tiny").to_dict().items()}
    for name in (
        "layer_types",
        "linear_num_key_heads",
        "linear_num_value_heads",
        "linear_key_head_dim",
        "linear_value_head_dim",
        "linear_conv_kernel_dim",
        "partial_rotary_factor",
        "attn_output_gate",
        "zero_centered_norm",
        "shared_expert_intermediate_size",
        "mlp_only_layers",
        "architecture",
    ):
        del old[name]
    config = ModelConfig.from_dict(old)
    assert config == ModelConfig.preset("cpu-tiny")
    shapes = {k: tuple(v.shape) for k, v in QwenLM(config).state_dict().items()}
    assert shapes["blocks.0.attn.q_proj.weight"] == (4 * 32, 128)
    assert not any("shared" in k or "linear" in k for k in shapes)
    assert len(shapes) == 1 + 4 * 12 + 2  # embedding, 4 blocks, final norm, head


@pytest.mark.parametrize(
    "fields, fix",
    [
        (dict(layer_types=["full_attention"] * 3), "give one type per layer"),
        (
            dict(layer_types=["linear_attention"] * 4 + ["sliding_attention"]),
            "unknown layer type",
        ),
        (dict(linear_num_value_heads=7), "each key head must serve a whole group"),
        (dict(linear_key_head_dim=0), "linear_key_head_dim must be at least 1"),
        (dict(partial_rotary_factor=0.1), "gives an even number of at least 2"),
        (dict(partial_rotary_factor=1.5), r"must be in \(0, 1\]"),
        (dict(mlp_only_layers=[5]), "use indices 0 .. 4"),
        (dict(shared_expert_intermediate_size=-1), "must be at least 0"),
        (dict(architecture="llama"), "choose one of qwen3, qwen3_next, qwen3_5"),
    ],
)
def test_bad_hybrid_settings_say_what_to_change(fields, fix):
    with pytest.raises(InputError, match=fix):
        dataclasses.replace(HYBRID, **fields)


@pytest.mark.usefixtures("offline_data")
def test_hybrid_preset_trains_and_resumes_exactly(tmp_path):
    """The cpu-tiny-hybrid preset shrunk to 32 wide (its full size trains in a few
    minutes here): it learns, and a run stopped and resumed ends with the same
    weights."""
    micro = dict(
        hidden_size=32,
        num_heads=2,
        num_kv_heads=1,
        head_dim=16,
        linear_num_key_heads=1,
        linear_num_value_heads=2,
        linear_key_head_dim=16,
        linear_value_head_dim=16,
        num_experts=4,
        expert_intermediate_size=32,
        shared_expert_intermediate_size=32,
        max_seq_len=32,
    )

    def config(out_dir, **overrides):
        values = dict(
            batch_size=4,
            block_size=16,
            max_steps=40,
            lr=1e-2,
            eval_interval=40,
            eval_batches=2,
            log_interval=1,
            monitor_interval=10,
            checkpoint_interval=1000,
            progress=False,
            out_dir=str(out_dir),
            model=micro,
        )
        return TrainConfig.preset("cpu-tiny-hybrid", **{**values, **overrides})

    result = train(config(tmp_path / "learns"))
    assert result.model.config.linear_attention_layers == [0, 1, 2]
    evals = monitoring.of_kind(result.history, "eval")
    assert evals[0]["val_loss"] > math.log(result.config.model.vocab_size) - 0.5
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 1.5, evals

    whole = train(config(tmp_path / "whole", max_steps=6))
    train(config(tmp_path / "split", max_steps=6), stop_at=3)
    resumed = train(config(tmp_path / "split", max_steps=6), resume=True)
    assert resumed.step == 6
    for a, b in zip(
        whole.model.state_dict().values(), resumed.model.state_dict().values()
    ):
        assert torch.equal(a, b)
