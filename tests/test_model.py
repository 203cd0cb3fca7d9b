"""Properties of qwen_minimal's layers that hold whatever the weights: causality, RoPE,
the cache, the MoE."""

import math

import pytest
import torch
import torch.nn.functional as F

from qwen_minimal import KVCache, ModelConfig, QwenLM
from qwen_minimal.model.attention import Attention
from qwen_minimal.model.decoder import compiled_decoding_step
from qwen_minimal.model.moe import MoE, capacity_mask, count_per_expert, expert_capacity
from qwen_minimal.model.rmsnorm import RMSNorm
from qwen_minimal.model.rope import RotaryEmbedding, apply_rope


def tiny(**overrides) -> ModelConfig:
    fields = dict(
        vocab_size=101,
        hidden_size=48,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=16,
        max_seq_len=96,
        num_experts=5,
        num_experts_per_tok=2,
        expert_intermediate_size=32,
        intermediate_size=64,
        init_std=0.1,
    )
    return ModelConfig(**{**fields, **overrides})


def model(**overrides) -> QwenLM:
    torch.manual_seed(0)
    return QwenLM(tiny(**overrides)).eval()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rmsnorm_equals_transformers_bit_for_bit(dtype):
    from transformers.models.qwen3.modeling_qwen3 import Qwen3RMSNorm

    ours, theirs = RMSNorm(32, eps=1e-6).to(dtype), Qwen3RMSNorm(32, eps=1e-6).to(dtype)
    with torch.no_grad():
        ours.weight.normal_()
        theirs.weight.copy_(ours.weight)
    x = (torch.randn(3, 7, 32) * 5).to(dtype)
    assert torch.equal(ours(x), theirs(x))


def test_rmsnorm_keeps_bf16_input_dtype_with_fp32_gain():
    norm = RMSNorm(16)  # fp32 gain, as in mixed-precision training
    assert norm(torch.randn(2, 16, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_rope_scores_depend_only_on_relative_position():
    rope = RotaryEmbedding(head_dim=32, max_seq_len=64, theta=10_000.0)
    q, k = torch.randn(32), torch.randn(32)
    cos, sin = rope(0, 64)

    def score(m, n):
        return apply_rope(q, cos[m], sin[m]) @ apply_rope(k, cos[n], sin[n])

    for offset in (0, 3, 17):
        torch.testing.assert_close(
            score(5 + offset, 2 + offset), score(5, 2), atol=1e-5, rtol=1e-5
        )
    # a different distance gives a different score
    assert not torch.allclose(score(5, 2), score(5, 3))
    rotated = apply_rope(q, cos[9], sin[9])
    torch.testing.assert_close(rotated.norm(), q.norm())  # a rotation keeps the length


# The dense model is causal bit for bit. In the MoE model a future token can change how
# many rows each expert's matrix multiply receives, and the math library may then round
# an earlier row differently (as in transformers): earlier logits may move by float
# rounding, never by more.
@pytest.mark.parametrize(
    "use_moe, atol", [(True, 1e-6), (False, 0.0)], ids=["moe", "dense"]
)
def test_changing_a_future_token_never_changes_earlier_logits(use_moe, atol):
    m = model(use_moe=use_moe)
    x = torch.randint(0, 101, (2, 20))
    for t in (1, 10, 19):
        y = x.clone()
        y[:, t] = (y[:, t] + 1) % 101
        with torch.no_grad():
            a, b = m(x).logits, m(y).logits
        torch.testing.assert_close(a[:, :t], b[:, :t], atol=atol, rtol=0)
        assert (
            a[:, t] - b[:, t]
        ).abs().max() > 1e-2  # the changed position itself does change


def test_attention_math_path_equals_sdpa_path():
    config = tiny()
    attn = Attention(config, layer_idx=0)
    x = torch.randn(2, 11, config.hidden_size)
    cos, sin = RotaryEmbedding(config.head_dim, 32, config.rope_theta)(0, 11)
    fast = attn(x, cos, sin)
    attn.use_sdpa = False
    torch.testing.assert_close(attn(x, cos, sin), fast, atol=1e-6, rtol=1e-5)


# Batch 1 also takes the MoE's single-token path (a decoding step routes one token,
# without sorting).
@pytest.mark.parametrize("batch", [1, 2])
def test_cached_and_uncached_logits_agree_over_prompt_and_50_steps(batch):
    m = model()
    sequence = torch.randint(0, 101, (batch, 62))  # 12 prompt tokens + 50 decoded ones
    cache = KVCache.for_model(m, batch_size=batch)
    with torch.no_grad():
        full = m(sequence).logits
        steps = [m(sequence[:, :12], cache=cache).logits]
        steps += [m(sequence[:, t : t + 1], cache=cache).logits for t in range(12, 62)]
    assert cache.length == 62
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


def test_cache_is_preallocated_and_written_in_place():
    m = model()
    cache = KVCache.for_model(m, batch_size=1, max_len=16)
    storage = [t.data_ptr() for t in cache.k + cache.v]
    with torch.no_grad():
        m(torch.randint(0, 101, (1, 5)), cache=cache)
        m(torch.randint(0, 101, (1, 1)), cache=cache)
    assert [t.data_ptr() for t in cache.k + cache.v] == storage
    for t in cache.k + cache.v:
        assert (
            t.shape[2] == 16
            and t[:, :, :6].abs().sum() > 0
            and t[:, :, 6:].abs().sum() == 0
        )


def test_sequence_longer_than_cache_or_model_raises():
    m = model()
    cache = KVCache.for_model(m, batch_size=1, max_len=8)
    with torch.no_grad():
        m(torch.zeros(1, 6, dtype=torch.long), cache=cache)
        with pytest.raises(ValueError, match="exceeds the KV cache length 8"):
            m(torch.zeros(1, 3, dtype=torch.long), cache=cache)
        with pytest.raises(ValueError, match="max_seq_len=96"):
            m(torch.zeros(1, 97, dtype=torch.long))
    with pytest.raises(ValueError, match="exceeds max_seq_len"):
        m.generate(torch.zeros(1, 90, dtype=torch.long), max_new_tokens=10)


def test_generate_returns_prompt_then_new_tokens_and_is_seeded():
    m = model()
    prompt = torch.randint(0, 101, (3, 4))
    out = m.generate(prompt, 7, temperature=0.8, top_k=20, top_p=0.9, seed=1)
    assert out.shape == (3, 11) and torch.equal(out[:, :4], prompt)
    assert torch.equal(
        out, m.generate(prompt, 7, temperature=0.8, top_k=20, top_p=0.9, seed=1)
    )
    assert torch.equal(
        m.generate(prompt, 7, temperature=0),
        m.generate(prompt, 7, temperature=0, use_cache=False),
    )


def test_generated_tokens_can_feed_a_training_step():
    # generate runs under inference_mode; its result must still be an ordinary tensor.
    m = model()
    m.train()
    out = m.generate(torch.randint(0, 101, (1, 3)), 5, temperature=0)
    assert not out.is_inference()
    m(out[:, :-1], targets=out[:, 1:]).loss.backward()
    assert m.embed.weight.grad is not None


def test_generate_stops_rows_at_eos():
    m = model()
    prompt = torch.randint(0, 101, (2, 3))
    greedy = m.generate(prompt, 10, temperature=0)
    eos = greedy[0, 5].item()  # the third token row 0 generates
    out = m.generate(prompt, 10, temperature=0, eos_token_id=eos)
    first = (out[0, 3:] == eos).nonzero()[0].item() + 3
    assert (out[0, first:] == eos).all()  # after eos, a row keeps emitting eos


@pytest.mark.parametrize(
    "use_moe, batch",
    [(True, 1), (True, 2), (False, 1)],
    ids=["moe-1", "moe-2", "dense-1"],
)
def test_compiled_decoding_gives_the_eager_logits_and_tokens(use_moe, batch):
    # generate(compile=True) runs its one-token steps through torch.compile's default
    # backend (inductor: generated C++, tens of seconds to compile on a CPU). With batch
    # 1 the MoE takes its one-token path, with batch 2 the sorted one.
    m = model(use_moe=use_moe)
    prompt = torch.randint(0, 101, (batch, 5))
    with torch.inference_mode():
        caches = [KVCache.for_model(m, batch, 12) for _ in range(2)]
        for cache in caches:
            m.next_token_logits(prompt, cache)
        step, token = compiled_decoding_step(m), torch.randint(0, 101, (batch, 1))
        for position in range(5, 8):
            # The first call compiles; later positions and caches of other lengths must
            # reuse that compilation.
            with torch.compiler.set_stance(
                "fail_on_recompile" if position > 5 else "default"
            ):
                torch.testing.assert_close(
                    step(token, caches[0]),
                    m.next_token_logits(token, caches[1]),
                    atol=1e-5,
                    rtol=1e-5,
                )
    streamed = []
    with torch.compiler.set_stance("fail_on_recompile"):
        out = m.generate(
            prompt, 12, temperature=0, compile=True, on_token=streamed.append
        )
    assert torch.equal(out, m.generate(prompt, 12, temperature=0))
    assert torch.equal(torch.cat(streamed, dim=1), out[:, 5:])
    with pytest.raises(ValueError, match="use_cache=True"):
        m.generate(prompt, 3, compile=True, use_cache=False)


def moe_layer(**overrides) -> MoE:
    torch.manual_seed(0)
    layer = MoE(tiny(**overrides))
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(std=0.2)
    return layer


def test_moe_with_all_experts_is_router_weighted_sum_of_every_expert():
    layer = moe_layer(num_experts=5, num_experts_per_tok=5)
    x = torch.randn(2, 9, 48)
    y, routing = layer(x)
    probs = torch.softmax(x.reshape(-1, 48) @ layer.router.weight.T, dim=-1)
    expected = sum(
        probs[:, e : e + 1] * layer.experts.expert(e, x.reshape(-1, 48))
        for e in range(5)
    )
    torch.testing.assert_close(y.reshape(-1, 48), expected, atol=1e-5, rtol=1e-5)


def test_one_token_alone_gets_the_same_output_as_within_a_batch():
    # A single token takes a direct path through its k experts; the batched path sorts
    # and groups rows.
    layer = moe_layer(num_experts=5, num_experts_per_tok=2)
    x = torch.randn(9, 48)
    batched, routing = layer(x)
    for i in range(9):
        alone, alone_routing = layer(x[i : i + 1])
        assert torch.equal(
            alone_routing.expert_indices, routing.expert_indices[i : i + 1]
        )
        torch.testing.assert_close(alone, batched[i : i + 1], atol=1e-6, rtol=1e-5)


def test_standalone_moe_is_initialised_from_init_std():
    layer = MoE(tiny(init_std=0.05))
    for w in (layer.experts.gate_proj, layer.experts.up_proj, layer.experts.down_proj):
        assert torch.isfinite(w).all() and abs(w.std().item() - 0.05) < 0.005


def test_tokens_per_expert_sum_to_tokens_times_k():
    m = model(num_experts=7, num_experts_per_tok=3)
    out = m(torch.randint(0, 101, (2, 13)))
    counts = out.tokens_per_expert
    assert counts.shape == (2, 7)
    assert (counts.sum(dim=1) == 2 * 13 * 3).all()


def test_count_per_expert_equals_bincount():
    g = torch.Generator().manual_seed(0)
    for num_experts, shape in [(5, (40, 2)), (8, (1, 2)), (3, (7, 3)), (16, (0, 2))]:
        indices = torch.randint(0, num_experts, shape, generator=g)
        counts = count_per_expert(indices, num_experts)
        assert torch.equal(
            counts, torch.bincount(indices.flatten(), minlength=num_experts)
        )


@pytest.mark.parametrize("use_moe", [True, False], ids=["moe", "dense"])
def test_compiled_model_gives_the_eager_loss_and_gradients(use_moe):
    # torch.compile traces the training forward (the train script compiles it); the
    # aot_eager backend runs the traced graphs without generating code, so this checks
    # the tracing in seconds.
    m = model(use_moe=use_moe).train()
    x, targets = torch.randint(0, 101, (2, 24)), torch.randint(0, 101, (2, 24))
    eager = m(x, targets=targets)
    eager.loss.backward()
    expected = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    compiled = torch.compile(m, backend="aot_eager")(x, targets=targets)
    compiled.loss.backward()
    torch.testing.assert_close(compiled.loss, eager.loss, atol=1e-6, rtol=1e-6)
    for name, p in m.named_parameters():
        torch.testing.assert_close(
            p.grad, expected[name], atol=1e-6, rtol=1e-5, msg=name
        )
    if use_moe:
        assert torch.equal(compiled.tokens_per_expert, eager.tokens_per_expert)


def reference_capacity_mask(
    indices: torch.Tensor, num_experts: int, capacity: int
) -> torch.Tensor:
    """The stated order, as a plain loop: all first choices (token order), then all
    second choices, ..."""
    used, kept = [0] * num_experts, torch.zeros_like(indices, dtype=torch.bool)
    for rank in range(indices.shape[1]):
        for token in range(indices.shape[0]):
            e = indices[token, rank].item()
            if used[e] < capacity:
                used[e] += 1
                kept[token, rank] = True
    return kept


def test_capacity_drops_exactly_the_overflow_in_service_order():
    indices = torch.tensor([[0, 1], [0, 2], [0, 1], [1, 0], [2, 0]])
    kept = capacity_mask(indices, num_experts=3, capacity=2)
    # Expert 0: first choices of tokens 0 and 1 fill it; token 2's first choice and the
    # second choices of tokens 3 and 4 overflow. Expert 1: token 3 (first choice), then
    # token 0's second choice; token 2's drops.
    expected = torch.tensor(
        [[True, True], [True, True], [False, False], [True, False], [True, False]]
    )
    assert torch.equal(kept, expected)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        random_indices = torch.stack(
            [torch.randperm(6, generator=g)[:3] for _ in range(17)]
        )
        assert torch.equal(
            capacity_mask(random_indices, 6, 5),
            reference_capacity_mask(random_indices, 6, 5),
        )


def test_capacity_in_the_layer_zeroes_dropped_assignments():
    layer = moe_layer(num_experts=4, num_experts_per_tok=2, capacity_factor=0.5)
    x = torch.randn(1, 16, 48)
    y, routing = layer(x)
    capacity = expert_capacity(16, 4, 2, 0.5)
    assert capacity == math.ceil(0.5 * 16 * 2 / 4)
    kept_per_expert = torch.bincount(routing.expert_indices[routing.kept], minlength=4)
    assert (kept_per_expert <= capacity).all() and (~routing.kept).any()
    flat = x.reshape(-1, 48)
    expected = torch.zeros_like(flat)
    for t in range(16):
        for j in range(2):
            if routing.kept[t, j]:
                e = routing.expert_indices[t, j].item()
                expected[t] += (
                    routing.expert_weights[t, j]
                    * layer.experts.expert(e, flat[t : t + 1])[0]
                )
    torch.testing.assert_close(y.reshape(-1, 48), expected, atol=1e-5, rtol=1e-5)
    dropless, _ = moe_layer(num_experts=4, num_experts_per_tok=2)(x)
    assert not torch.allclose(dropless, y)


def test_parameter_counts():
    m = model(tie_embeddings=True)
    c = m.config
    expert = 3 * c.hidden_size * c.expert_intermediate_size
    assert m.num_parameters() == sum(p.numel() for p in m.parameters())
    assert (
        m.num_parameters() - m.num_parameters(active=True)
        == c.num_layers * (c.num_experts - c.num_experts_per_tok) * expert
    )


@pytest.mark.parametrize(
    "fields, fix",
    [
        (
            dict(hidden_size=50, num_heads=4, head_dim=None),
            "not divisible by num_heads",
        ),
        (dict(num_heads=6, num_kv_heads=4), "divisors of num_heads"),
        (dict(num_experts=4, num_experts_per_tok=5), "fewer experts or add experts"),
        (dict(head_dim=15), "must be even"),
        (dict(capacity_factor=0.0), "None for dropless"),
        (dict(num_layers=0), "num_layers must be at least 1"),
    ],
)
def test_bad_configs_raise_value_error_naming_the_fix(fields, fix):
    with pytest.raises(ValueError, match=fix):
        tiny(**fields)


def test_presets_and_unknown_fields():
    big = ModelConfig.preset("wikitext103")
    assert (
        big.num_layers,
        big.hidden_size,
        big.num_heads,
        big.num_kv_heads,
        big.head_dim,
    ) == (6, 768, 16, 4, 48)
    assert (
        big.num_experts,
        big.num_experts_per_tok,
        big.expert_intermediate_size,
        big.vocab_size,
    ) == (8, 2, 3072, 50257)
    assert not big.tie_embeddings and big.max_seq_len == 256
    assert ModelConfig.preset("cpu-tiny", num_layers=3).num_layers == 3
    with pytest.raises(ValueError, match="unknown model preset"):
        ModelConfig.preset("gpt5")
    with pytest.raises(ValueError, match="unknown ModelConfig field"):
        ModelConfig.from_dict({"hidden": 3})


def test_loss_and_gradients_equal_plain_cross_entropy():
    """Whatever the model does to compute its loss faster, loss and gradients are those
    of F.cross_entropy."""
    m = model(tie_embeddings=False)
    m.train()
    x, targets = torch.randint(0, 101, (3, 17)), torch.randint(0, 101, (3, 17))
    targets[0, :4] = -100  # ignored positions
    out = m(x, targets=targets)
    out.loss.backward()
    fast = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    logits = m(x).logits
    lm_loss = F.cross_entropy(
        logits.flatten(0, 1), targets.flatten(), ignore_index=-100
    )
    torch.testing.assert_close(out.lm_loss, lm_loss)
    (lm_loss + m.config.router_aux_loss_coef * m(x).aux_loss).backward()
    for name, p in m.named_parameters():
        torch.testing.assert_close(fast[name], p.grad, atol=1e-6, rtol=1e-4, msg=name)
