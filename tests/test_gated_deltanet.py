"""Gated DeltaNet: the chunked rule equals the token-by-token one (outputs, final state
and gradients), and the layer equals transformers' Qwen3-Next and Qwen3.5 layers, with
and without a state carried from prefill into decoding."""

import pytest
import torch
import torch.nn.functional as F
from transformers import DynamicCache, Qwen3_5TextConfig, Qwen3NextConfig
from transformers.models.qwen3_5.modeling_qwen3_5 import Qwen3_5GatedDeltaNet
from transformers.models.qwen3_next.modeling_qwen3_next import (
    Qwen3NextGatedDeltaNet,
    torch_recurrent_gated_delta_rule,
)

from qwen_minimal.errors import InputError
from qwen_minimal.model.gated_deltanet import (
    GatedDeltaNet,
    LinearAttentionState,
    chunked_gated_delta_rule,
    l2_normalize,
    recurrent_gated_delta_rule,
)

TOL = 1e-5


def rule_inputs(T, B=2, H=3, Dk=8, Dv=5, seed=0):
    """Unit q and k, decays exp(g) mostly near 1 (long memory, so the state matters),
    beta in (0, 1), and a random initial state."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen)

    q, k = l2_normalize(randn(B, T, H, Dk)), l2_normalize(randn(B, T, H, Dk))
    g, beta = F.logsigmoid(randn(B, T, H) + 2), randn(B, T, H).sigmoid()
    return q, k, randn(B, T, H, Dv), g, beta, randn(B, H, Dk, Dv)


def max_diff(a, b):
    return (a - b).abs().max().item()


@pytest.mark.parametrize("chunk_size", [8, 64])
@pytest.mark.parametrize("extra", ["C-1", "C", "C+1", "3C+5", "1"])
@pytest.mark.parametrize("with_initial_state", [False, True])
def test_chunked_equals_recurrent(chunk_size, extra, with_initial_state):
    C = chunk_size
    T = {"1": 1, "C-1": C - 1, "C": C, "C+1": C + 1, "3C+5": 3 * C + 5}[extra]
    q, k, v, g, beta, s0 = rule_inputs(T)
    s0 = s0 if with_initial_state else None
    out_r, state_r = recurrent_gated_delta_rule(q, k, v, g, beta, s0)
    out_c, state_c = chunked_gated_delta_rule(q, k, v, g, beta, C, s0)
    assert out_c.shape == v.shape and state_c.shape == (2, 3, 8, 5)
    assert max_diff(out_c, out_r) < TOL
    assert max_diff(state_c, state_r) < TOL
    # The outputs are not all alike, so equal outputs are a real agreement.
    assert out_r.std() > 1e-2


def test_rules_match_transformers_reference():
    """transformers' reference loop, given already-normalised q and k, gives our
    numbers: the same 1/sqrt(Dk) on q, decay before the update, output read after it."""
    q, k, v, g, beta, s0 = rule_inputs(19)
    theirs, their_state = torch_recurrent_gated_delta_rule(
        q, k, v, g, beta, initial_state=s0, output_final_state=True
    )
    for ours, our_state in (
        recurrent_gated_delta_rule(q, k, v, g, beta, s0),
        chunked_gated_delta_rule(q, k, v, g, beta, 8, s0),
    ):
        assert max_diff(ours, theirs) < TOL and max_diff(our_state, their_state) < TOL


def test_a_full_step_on_a_unit_key_stores_its_value():
    """beta = 1, no decay, |k| = 1: the step solves the regression, so reading the state
    with the key just written returns its value, whatever the state held before."""
    q, k, v, g, beta, s0 = rule_inputs(1)
    _, state = recurrent_gated_delta_rule(
        q, k, v, torch.zeros_like(g), torch.ones_like(beta), s0
    )
    read = torch.einsum("bhk,bhkv->bhv", k[:, 0], state)
    assert max_diff(read, v[:, 0]) < TOL


def test_chunked_gradients_equal_recurrent_gradients():
    inputs = [x.requires_grad_() for x in rule_inputs(2 * 4 + 3)]
    gen = torch.Generator().manual_seed(1)
    out_weight = torch.randn(inputs[2].shape, generator=gen)
    state_weight = torch.randn(inputs[5].shape, generator=gen)

    def grads(rule, *extra):
        q, k, v, g, beta, s0 = inputs
        out, state = rule(q, k, v, g, beta, *extra, initial_state=s0)
        loss = (out * out_weight).sum() + (state * state_weight).sum()
        return torch.autograd.grad(loss, inputs)

    names = ["q", "k", "v", "g", "beta", "initial_state"]
    for name, a, b in zip(
        names, grads(recurrent_gated_delta_rule), grads(chunked_gated_delta_rule, 4)
    ):
        assert a.abs().max() > 1e-2, name  # a gradient that is there to compare
        assert max_diff(a, b) < TOL, name


# Small layers in which nothing is a special case: odd key head counts, key and value
# head dims that differ, one, two or three value heads per key head.
SHAPES = [
    {"num_key_heads": 3, "num_value_heads": 3, "key_head_dim": 8, "value_head_dim": 6},
    {"num_key_heads": 1, "num_value_heads": 3, "key_head_dim": 6, "value_head_dim": 10},
    {"num_key_heads": 3, "num_value_heads": 6, "key_head_dim": 10, "value_head_dim": 4},
]
HIDDEN, KERNEL, EPS = 24, 4, 1e-6


CLASSES = {
    "qwen3_next": (Qwen3NextConfig, Qwen3NextGatedDeltaNet),
    "qwen3_5": (Qwen3_5TextConfig, Qwen3_5GatedDeltaNet),
}


def tiny_config(family: str, shape: dict):
    """A one-layer model of `family` whose layer is linear attention of `shape`."""
    return CLASSES[family][0](
        vocab_size=32,
        hidden_size=HIDDEN,
        intermediate_size=32,
        num_hidden_layers=1,
        layer_types=["linear_attention"],
        num_attention_heads=2,
        num_key_value_heads=1,
        linear_conv_kernel_dim=KERNEL,
        rms_norm_eps=EPS,
        **{f"linear_{name}": value for name, value in shape.items()},
    )


def transformers_layer(family: str, shape: dict, seed: int) -> torch.nn.Module:
    """transformers' layer from a tiny config of its model, with its random projections
    and with A_log, dt_bias and the norm's weight moved off their initial values."""
    torch.manual_seed(seed)
    theirs = CLASSES[family][1](tiny_config(family, shape), layer_idx=0).eval()
    with torch.no_grad():
        theirs.A_log.copy_(torch.randn_like(theirs.A_log) * 0.5 - 1)
        theirs.dt_bias.add_(torch.randn_like(theirs.dt_bias))
        theirs.norm.weight.add_(torch.randn_like(theirs.norm.weight) * 0.5)
    return theirs


def ours_from(theirs: torch.nn.Module, family: str, shape: dict) -> GatedDeltaNet:
    ours = GatedDeltaNet(
        HIDDEN, conv_kernel_size=KERNEL, rms_norm_eps=EPS, **shape
    ).eval()
    src = theirs.state_dict()
    # The same name, shape and meaning in both models.
    weights = {
        name: src[name]
        for name in (
            "conv1d.weight",
            "A_log",
            "dt_bias",
            "norm.weight",
            "out_proj.weight",
        )
    }
    if family == "qwen3_5":
        for name in ("in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a"):
            weights[f"{name}.weight"] = src[f"{name}.weight"]
    else:
        weights |= ours.projections_from_qwen3_next(
            src["in_proj_qkvz.weight"], src["in_proj_ba.weight"]
        )
    assert weights.keys() == ours.state_dict().keys()
    for name, value in weights.items():
        assert value.shape == ours.state_dict()[name].shape, name
    ours.load_state_dict(weights)
    return ours


FAMILIES = ["qwen3_next", "qwen3_5"]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("shape", SHAPES, ids=["3k3v", "1k3v", "3k6v"])
@pytest.mark.parametrize("T", [9, 70])  # shorter and longer than a chunk of 64
def test_layer_equals_transformers(family, shape, T):
    theirs = transformers_layer(family, shape, seed=T)
    ours = ours_from(theirs, family, shape)
    x = torch.randn(2, T, HIDDEN)
    with torch.no_grad():
        expected, got = theirs(x), ours(x)
    assert got.shape == expected.shape
    assert expected.std() > 1e-2
    assert max_diff(got, expected) < TOL


def test_qwen3_next_projections_are_regrouped_not_copied():
    """A wrong grouping of Qwen3-Next's fused rows (taking them in order, as if laid out
    like Qwen3.5's) gives a different layer: the parity test above can tell."""
    shape = SHAPES[2]
    theirs = transformers_layer("qwen3_next", shape, seed=0)
    ours = ours_from(theirs, "qwen3_next", shape)
    qkvz = theirs.in_proj_qkvz.weight
    with torch.no_grad():
        ours.in_proj_qkv.weight.copy_(qkvz[: ours.conv_channels])
        x = torch.randn(1, 5, HIDDEN)
        assert max_diff(ours(x), theirs(x)) > 1e-3


@pytest.mark.parametrize("family", FAMILIES)
# The prefill is shorter than the conv kernel, or longer than a chunk.
@pytest.mark.parametrize("prefill", [2, 70])
def test_prefill_then_decode_equals_full_forward_and_transformers_cache(
    family, prefill
):
    shape, decode = SHAPES[2], 5
    theirs = transformers_layer(family, shape, seed=prefill)
    ours = ours_from(theirs, family, shape)
    x = torch.randn(2, prefill + decode, HIDDEN)
    state = ours.empty_state(2)
    cache = DynamicCache(config=tiny_config(family, shape))
    with torch.no_grad():
        full = ours(x)
        steps = [ours(x[:, :prefill], state)]
        their_steps = [theirs(x[:, :prefill], cache=cache)]
        for t in range(prefill, prefill + decode):
            steps.append(ours(x[:, t : t + 1], state))
            their_steps.append(theirs(x[:, t : t + 1], cache=cache))
    stepped, their_stepped = torch.cat(steps, dim=1), torch.cat(their_steps, dim=1)
    assert max_diff(stepped, full) < TOL
    assert max_diff(stepped, their_stepped) < TOL
    # Same states: transformers keeps `kernel` columns of conv inputs, whose oldest no
    # later step reads; ours keeps the kernel - 1 that are read.
    layer = cache.layers[0]
    assert max_diff(state.recurrent_state, layer.recurrent_states[0]) < TOL
    assert max_diff(state.conv_state, layer.conv_states[0][..., 1:]) < TOL


def test_prefill_in_pieces_equals_one_prefill():
    """A state continues a sequence for T > 1 as well (prefill in pieces), and reset()
    starts a new one."""
    torch.manual_seed(0)
    ours = GatedDeltaNet(HIDDEN, chunk_size=8, **SHAPES[1]).eval()
    x = torch.randn(2, 23, HIDDEN)
    state = ours.empty_state(2)
    with torch.no_grad():
        full = ours(x)
        pieces = torch.cat(
            [ours(x[:, :3], state), ours(x[:, 3:13], state), ours(x[:, 13:], state)], 1
        )
        state.reset()
        again = ours(x[:, :3], state)
    assert max_diff(pieces, full) < TOL
    assert torch.equal(again, pieces[:, :3])


def test_bf16_layer_keeps_transformers_dtypes():
    """In bf16 the output and the conv state are bf16, the recurrent state is float32,
    and the output is transformers' up to bf16 rounding."""
    shape = SHAPES[2]
    theirs = transformers_layer("qwen3_5", shape, seed=3)
    ours = ours_from(theirs, "qwen3_5", shape)
    theirs, ours = theirs.to(torch.bfloat16), ours.to(torch.bfloat16)
    x = torch.randn(1, 12, HIDDEN, dtype=torch.bfloat16)
    state = ours.empty_state(1)
    with torch.no_grad():
        got, expected = ours(x, state), theirs(x)
    assert got.dtype == torch.bfloat16 and state.conv_state.dtype == torch.bfloat16
    assert state.recurrent_state.dtype == torch.float32
    assert (
        max_diff(got.float(), expected.float())
        < 1e-2 * expected.float().abs().max().item()
    )


def test_bad_configuration_and_inputs_say_what_to_change():
    with pytest.raises(
        InputError, match="num_value_heads=4 must be a multiple of num_key_heads=3"
    ):
        GatedDeltaNet(
            HIDDEN, num_key_heads=3, num_value_heads=4, key_head_dim=8, value_head_dim=8
        )
    with pytest.raises(InputError, match="conv_kernel_size must be at least 1, got 0"):
        GatedDeltaNet(HIDDEN, 1, 1, 8, 8, conv_kernel_size=0)
    layer = GatedDeltaNet(HIDDEN, **SHAPES[0])
    with pytest.raises(
        InputError, match=r"make the state with GatedDeltaNet.empty_state\(3\)"
    ):
        layer(torch.randn(3, 1, HIDDEN), layer.empty_state(2))
    with pytest.raises(InputError, match=f"input must be \\[batch, time, {HIDDEN}\\]"):
        layer(torch.randn(3, 1, HIDDEN + 1))
    with pytest.raises(InputError, match="this layer needs"):
        layer.projections_from_qwen3_next(
            torch.zeros(5, HIDDEN), torch.zeros(6, HIDDEN)
        )
    q, k, v, g, beta, _ = rule_inputs(4)
    with pytest.raises(InputError, match="repeat q and k heads"):
        chunked_gated_delta_rule(q, k, v[:, :, :2], g, beta)
    with pytest.raises(InputError, match="chunk_size must be at least 1"):
        chunked_gated_delta_rule(q, k, v, g, beta, chunk_size=0)
    assert isinstance(layer.empty_state(1), LinearAttentionState)
