"""qwen_minimal against transformers' Qwen3 and Qwen3-MoE, built from small random
configs."""

import pytest
import torch
from reference import hf_dense, hf_moe
from transformers.models.qwen3_moe.modeling_qwen3_moe import load_balancing_loss_func

import qwen_minimal
from qwen_minimal.model.moe import load_balancing_loss

MOE_SHAPES = {  # head_dim differs from hidden / heads in all of them
    "5 experts top-2": dict(num_experts=5, num_experts_per_tok=2),
    "7 experts top-1": dict(
        num_experts=7, num_experts_per_tok=1, heads=6, kv_heads=3, head_dim=16
    ),
    "top-k = E = 3": dict(
        num_experts=3, num_experts_per_tok=3, heads=8, kv_heads=1, head_dim=8
    ),
    "tied, 3 layers": dict(
        num_experts=4, num_experts_per_tok=2, layers=3, tie=True, hidden=48, head_dim=32
    ),
}
DENSE_SHAPES = {
    "tied": dict(),
    "untied, MQA": dict(tie=False, heads=4, kv_heads=1, head_dim=40),
}


def tokens(batch=2, length=19, vocab=97, seed=1):
    return torch.randint(
        0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed)
    )


def capture_hf_routing(hf):
    """Forward hooks on transformers' routers: their (logits, weights, indices) per
    layer."""
    captured = []
    for layer in hf.model.layers:
        layer.mlp.gate.register_forward_hook(lambda mod, inp, out: captured.append(out))
    return captured


@pytest.mark.parametrize("shape", MOE_SHAPES.values(), ids=MOE_SHAPES.keys())
def test_moe_logits_routing_and_aux_loss_match_transformers(shape):
    hf = hf_moe(**shape)
    ours = qwen_minimal.from_transformers(hf).eval()
    x = tokens()
    hf_routing = capture_hf_routing(hf)
    with torch.no_grad():
        expected = hf(x, labels=x)
        got = ours(x[:, :-1], targets=x[:, 1:])
        got_full = ours(x)
    torch.testing.assert_close(got_full.logits, expected.logits, atol=1e-5, rtol=0)
    for (hf_logits, hf_weights, hf_indices), r in zip(hf_routing, got_full.routing):
        torch.testing.assert_close(r.router_logits, hf_logits, atol=1e-6, rtol=0)
        assert torch.equal(r.expert_indices, hf_indices)
        torch.testing.assert_close(r.expert_weights, hf_weights, atol=1e-6, rtol=0)
    torch.testing.assert_close(got_full.aux_loss, expected.aux_loss, atol=1e-6, rtol=0)
    # transformers shifts labels inside; we pass shifted targets. Same loss, aux loss
    # included.
    hf_aux_on_shifted = load_balancing_loss_func(
        tuple(r.router_logits for r in got.routing),
        shape["num_experts"],
        shape["num_experts_per_tok"],
    )
    torch.testing.assert_close(got.aux_loss, hf_aux_on_shifted, atol=1e-6, rtol=0)
    lm_loss = expected.loss - hf.config.router_aux_loss_coef * expected.aux_loss
    torch.testing.assert_close(got.lm_loss, lm_loss, atol=1e-5, rtol=0)


@pytest.mark.parametrize("shape", DENSE_SHAPES.values(), ids=DENSE_SHAPES.keys())
def test_dense_logits_match_transformers(shape):
    hf = hf_dense(**shape)
    ours = qwen_minimal.from_transformers(hf).eval()
    x = tokens()
    with torch.no_grad():
        torch.testing.assert_close(ours(x).logits, hf(x).logits, atol=1e-5, rtol=0)
        assert ours(x).aux_loss is None


def test_aux_loss_convention_and_uniform_value():
    """One loss over all layers' tokens concatenated (transformers' convention); k under
    uniform routing."""
    layers = [torch.randn(30, 6), torch.randn(30, 6) * 3]
    expected = load_balancing_loss_func(tuple(layers), 6, 2)
    torch.testing.assert_close(
        load_balancing_loss(layers, num_experts_per_tok=2), expected
    )
    torch.testing.assert_close(
        load_balancing_loss(torch.cat(layers), num_experts_per_tok=2), expected
    )
    mean_of_layers = (
        sum(load_balancing_loss(x, num_experts_per_tok=2) for x in layers) / 2
    )
    assert not torch.allclose(mean_of_layers, expected), (
        "the two conventions should differ on skewed routing"
    )
    for k in (1, 2, 3):
        assert load_balancing_loss(
            torch.zeros(40, 6), num_experts_per_tok=k
        ).item() == pytest.approx(k)


@pytest.mark.parametrize(
    "make_hf",
    [lambda: hf_moe(num_experts=3, num_experts_per_tok=3), lambda: hf_dense()],
    ids=["moe top-k = E", "dense"],
)
def test_bf16_forward_within_bf16_tolerance(make_hf):
    """In bf16 a token whose top-k choice is a near tie can pick another expert in
    either implementation (our router runs in fp32, transformers' in bf16), which moves
    its logits by far more than rounding. With k = E no discrete choice is left, so the
    comparison measures rounding alone."""
    hf = make_hf()
    x = tokens()
    with torch.no_grad():
        reference_fp32 = hf(x).logits
        hf = hf.to(torch.bfloat16)
        ours = qwen_minimal.from_transformers(hf).eval()
        got, expected = ours(x).logits, hf(x).logits
    assert got.dtype == ours.lm_head.weight.dtype == torch.bfloat16
    # bf16 keeps 8 significant bits (relative step 2^-8 ~ 0.4 %); after a few layers
    # errors of a few percent of the logit scale are normal, and ours must be as close
    # to the fp32 result as transformers' is.
    scale = reference_fp32.abs().max()
    ours_error = (got.float() - reference_fp32).abs()
    hf_error = (expected.float() - reference_fp32).abs()
    assert (got.float() - expected.float()).abs().max() <= 0.03 * scale
    assert ours_error.max() <= 0.03 * scale
    assert ours_error.mean() <= 1.5 * hf_error.mean()


@pytest.mark.parametrize(
    "make_hf",
    [lambda: hf_moe(num_experts=5, num_experts_per_tok=2), lambda: hf_dense()],
    ids=["moe", "dense"],
)
def test_greedy_generate_matches_transformers(make_hf):
    hf = make_hf()
    ours = qwen_minimal.from_transformers(hf).eval()
    prompt = tokens(batch=2, length=6)
    expected = hf.generate(
        prompt,
        max_new_tokens=24,
        do_sample=False,
        attention_mask=torch.ones_like(prompt),
        pad_token_id=0,
    )
    assert torch.equal(
        ours.generate(prompt, 24, temperature=0, use_cache=True), expected
    )
    assert torch.equal(
        ours.generate(prompt, 24, temperature=0, use_cache=False), expected
    )


def test_from_transformers_rejects_mismatches():
    hf = hf_moe()
    state = hf.state_dict()
    config = qwen_minimal.config_from_transformers(hf.config)
    bad = dict(state)
    bad["model.layers.0.self_attn.q_proj.weight"] = bad[
        "model.layers.0.self_attn.q_proj.weight"
    ][:-1]
    with pytest.raises(
        ValueError, match="shape mismatch for blocks.0.attn.q_proj.weight"
    ):
        qwen_minimal.interop.convert_state_dict(bad, config)
    missing = {k: v for k, v in state.items() if k != "model.norm.weight"}
    with pytest.raises(ValueError, match="model.norm.weight"):
        qwen_minimal.interop.convert_state_dict(missing, config)
    extra = {**state, "model.layers.0.mlp.shared_expert.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match="not used by qwen_minimal"):
        qwen_minimal.interop.convert_state_dict(extra, config)
    with pytest.raises(ValueError, match="model_type"):
        qwen_minimal.config_from_transformers({"model_type": "llama"})


def test_load_pretrained_folder_roundtrip(tmp_path):
    """save_pretrained writes what a hub checkpoint folder holds: config.json +
    safetensors."""
    hf = hf_moe(num_experts=4, num_experts_per_tok=2)
    hf.save_pretrained(tmp_path)
    ours = qwen_minimal.load_pretrained(tmp_path, dtype=torch.float32).eval()
    x = tokens()
    with torch.no_grad():
        torch.testing.assert_close(ours(x).logits, hf(x).logits, atol=1e-5, rtol=0)
    with pytest.raises(FileNotFoundError, match="config.json"):
        qwen_minimal.load_pretrained(tmp_path / "nowhere")


def test_from_transformers_copies_the_weights():
    hf = hf_dense()
    ours = qwen_minimal.from_transformers(hf)
    with torch.no_grad():
        ours.embed.weight.zero_()
    assert hf.model.embed_tokens.weight.abs().sum() > 0
