"""The hybrids against transformers: Qwen3NextForCausalLM, Qwen3_5ForCausalLM and
Qwen3_5MoeForCausalLM, small and random, give the same fp32 logits and greedy tokens as
qwen_minimal after from_transformers; qwen_minimal's save_pretrained folder loads in
AutoModelForCausalLM as the same class with the same logits, and back with
load_pretrained, also in the layout of the released checkpoints (multimodal Qwen3.5
names, multi-token-prediction tensors); what a family cannot hold is refused."""

import dataclasses
import json

import pytest
import torch
from reference import hf_hybrid
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from qwen_minimal import (
    InputError,
    ModelConfig,
    QwenLM,
    from_transformers,
    load_pretrained,
    save_pretrained,
    to_transformers,
)
from qwen_minimal.data import load_tokenizer
from qwen_minimal.interop import (
    TOKENIZER_CHECK_TEXT,
    config_from_transformers,
    llama_cpp_caveats,
    tokenizer_mismatch,
)

TOL = 1e-5
# Per family: the default small shape (linear, attention, linear layers; 3 attention
# heads over 1 KV head; 3 linear key heads, 6 value heads of other dims) and one that
# differs in every way it can.
SHAPES = {
    "qwen3_next": {
        "dense middle layer": dict(mlp_only_layers=[1]),
        "attention first, tied, top-1, not renormed, every 2nd layer MoE": dict(
            layer_types=["full_attention", "linear_attention"] * 2,
            heads=6,
            kv_heads=3,
            head_dim=12,
            partial_rotary_factor=0.5,
            linear_num_key_heads=1,
            linear_num_value_heads=3,
            linear_key_head_dim=6,
            linear_value_head_dim=10,
            num_experts=7,
            num_experts_per_tok=1,
            norm_topk_prob=False,
            decoder_sparse_step=2,
            tie=True,
        ),
    },
    "qwen3_5": {
        "default": dict(),
        "tied, full rotation, 2 value heads per key head": dict(
            layer_types=["linear_attention"] * 3 + ["full_attention"],
            partial_rotary_factor=1.0,
            linear_num_key_heads=2,
            linear_num_value_heads=4,
            tie=True,
        ),
    },
    "qwen3_5_moe": {
        "default": dict(),
        "7 experts top-3, tied, two attention layers": dict(
            layer_types=["full_attention", "linear_attention", "full_attention"],
            num_experts=7,
            num_experts_per_tok=3,
            tie=True,
        ),
    },
}
CASES = [
    pytest.param(family, shape, id=f"{family}: {name}")
    for family, shapes in SHAPES.items()
    for name, shape in shapes.items()
]
CLASS_NAMES = {
    "qwen3_next": "Qwen3NextForCausalLM",
    "qwen3_5": "Qwen3_5ForCausalLM",
    "qwen3_5_moe": "Qwen3_5MoeForCausalLM",
}


def tokens(length=70, batch=2, seed=1):
    """70 tokens: longer than one chunk (64) of the chunked delta rule."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 97, (batch, length), generator=gen)


def max_diff(a, b):
    return (a - b).abs().max().item()


@pytest.mark.parametrize("family, shape", CASES)
def test_logits_match_transformers_both_ways(family, shape, tmp_path):
    hf = hf_hybrid(family, **shape)
    ours = from_transformers(hf).eval()
    x = tokens()
    with torch.no_grad():
        expected = hf(x).logits
        assert expected.std() > 0.1
        assert max_diff(ours(x).logits, expected) < TOL
    save_pretrained(ours, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == [
        CLASS_NAMES[family]
    ]
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    assert type(theirs).__name__ == CLASS_NAMES[family]
    back = load_pretrained(tmp_path, dtype=torch.float32).eval()
    assert back.config == ours.config
    with torch.no_grad():
        assert max_diff(theirs.eval()(x).logits, expected) < TOL
        assert torch.equal(back(x).logits, ours(x).logits)
    # in memory too, into the same class
    assert type(to_transformers(ours)).__name__ == CLASS_NAMES[family]


@pytest.mark.parametrize("family", list(SHAPES))
@pytest.mark.parametrize("prompt", [5, 70])
def test_greedy_tokens_match_transformers_generate(family, prompt):
    hf = hf_hybrid(family, seed=prompt)
    ours = from_transformers(hf).eval()
    x = tokens(prompt)
    expected = hf.generate(
        x, attention_mask=torch.ones_like(x), max_new_tokens=8, do_sample=False
    )
    assert torch.equal(ours.generate(x, 8, temperature=0), expected)
    assert torch.equal(ours.generate(x, 8, temperature=0, use_cache=False), expected)


def test_qwen3_next_fused_projections_round_trip_exactly():
    hf = hf_hybrid("qwen3_next")
    ours = from_transformers(hf)
    back = to_transformers(ours).state_dict()
    for name, tensor in hf.state_dict().items():
        assert torch.equal(back[name], tensor), name


def test_released_checkpoint_layout_loads(tmp_path):
    """Qwen3.5's released checkpoints are multimodal: text_config in config.json,
    tensors under model.language_model., a vision tower; they and Qwen3-Next's carry a
    multi-token-prediction head (mtp.*). The language model is read, the rest
    skipped."""
    hf = hf_hybrid("qwen3_5_moe")
    ours = from_transformers(hf).eval()
    save_pretrained(ours, tmp_path / "text")
    text_config = json.loads((tmp_path / "text" / "config.json").read_text())
    state = load_file(tmp_path / "text" / "model.safetensors")
    released = tmp_path / "released"
    released.mkdir()
    renamed = {
        k.replace("model.", "model.language_model.", 1): v for k, v in state.items()
    }
    renamed["mtp.fc.weight"] = torch.zeros(4, 4)
    renamed["model.visual.patch_embed.proj.weight"] = torch.zeros(4, 4)
    save_file(renamed, released / "model.safetensors")
    (released / "config.json").write_text(
        json.dumps({"model_type": "qwen3_5_moe", "text_config": text_config})
    )
    loaded = load_pretrained(released, dtype=torch.float32).eval()
    x = tokens(9)
    with torch.no_grad():
        # (equal up to rounding: the experts' weights are views of transformers'
        # fused tensors in `ours`, contiguous in `loaded`, which changes the kernels)
        assert max_diff(loaded(x).logits, ours(x).logits) < 1e-6
    assert loaded.config == ours.config


def test_config_defaults_of_a_bare_config_json():
    """A config.json with full_attention_interval instead of layer_types and no
    partial_rotary_factor reads as transformers reads it: every 4th layer attends, a
    quarter of each head rotates."""
    hf = hf_hybrid("qwen3_next").config.to_dict()
    del hf["layer_types"]
    hf["num_hidden_layers"] = 8
    hf["rope_parameters"] = {"rope_type": "default", "rope_theta": 1e6}
    config = config_from_transformers(hf)
    assert config.full_attention_layers == [3, 7]
    assert config.partial_rotary_factor == 0.25 and config.rope_theta == 1e6
    assert config.architecture == "qwen3_next" and config.attn_output_gate


def test_a_checkpoint_of_another_architecture_is_refused(tmp_path):
    ours = from_transformers(hf_hybrid("qwen3_next"))
    save_pretrained(ours, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    # Qwen3-Next's fused projections where Qwen3.5's separate ones are expected
    config["model_type"] = "qwen3_5_moe_text"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match="in_proj_qkv.weight"):
        load_pretrained(tmp_path)
    config["model_type"] = "mamba"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match="model_type 'mamba' is not supported"):
        load_pretrained(tmp_path)


@pytest.mark.parametrize(
    "family, change, refusal",
    [
        ("qwen3_next", dict(architecture="qwen3"), "set architecture='qwen3_next'"),
        ("qwen3_next", dict(attn_output_gate=False), "set attn_output_gate=True"),
        ("qwen3_next", dict(zero_centered_norm=False), "zero_centered_norm=True"),
        ("qwen3_next", dict(shared_expert_intermediate_size=0), "shared_expert"),
        ("qwen3_next", dict(use_moe=False), "architecture='qwen3_5'"),
        ("qwen3_5_moe", dict(mlp_only_layers=[1]), "every Qwen3.5-MoE layer"),
        ("qwen3_5_moe", dict(norm_topk_prob=False), "always renormalises"),
        ("qwen3_5_moe", dict(load_balancing="bias"), "load_balancing='bias'"),
    ],
)
def test_what_a_family_cannot_hold_is_refused(family, change, refusal, tmp_path):
    ours = from_transformers(hf_hybrid(family))
    ours.config = dataclasses.replace(ours.config, **change)
    with pytest.raises(InputError, match=refusal):
        save_pretrained(ours, tmp_path / "out")
    assert not (tmp_path / "out").exists()


EXPORTED_CLASSES = {
    "qwen3 (MoE)": None,
    "qwen3 (dense)": None,
    **{family: family for family in CLASS_NAMES},
}


@pytest.mark.parametrize("name", EXPORTED_CLASSES)
def test_an_exported_tokenizer_loads_back_as_trained_or_the_export_says_why(
    name, tokenizer_folder, tmp_path
):
    """For every class, the saved tokenizer read back tokenizes a text with numbers as
    the training tokenizer: through AutoTokenizer, except where transformers swaps in
    its own class for the model type (Qwen3.5-MoE: Qwen3_5Tokenizer, which splits every
    digit off), and then tokenizer_mismatch, which the export prints, says so;
    PreTrainedTokenizerFast reads the saved tokenizer.json as it is for every class."""
    tokenizer = load_tokenizer(tokenizer_folder)
    family = EXPORTED_CLASSES[name]
    if family is None:
        config = ModelConfig.preset(
            "cpu-tiny",
            vocab_size=len(tokenizer),
            hidden_size=32,
            num_layers=1,
            use_moe="MoE" in name,
        )
        ours = QwenLM(config)
    else:
        ours = from_transformers(hf_hybrid(family, vocab=len(tokenizer)))
    save_pretrained(ours, tmp_path, tokenizer)
    text = TOKENIZER_CHECK_TEXT
    expected = tokenizer.encode(text)
    assert PreTrainedTokenizerFast.from_pretrained(tmp_path).encode(text) == expected
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    mismatch = tokenizer_mismatch(tmp_path, tokenizer)
    assert (loaded.encode(text) == expected) == (mismatch is None)
    if family == "qwen3_5_moe":
        assert type(loaded).__name__ == "Qwen3_5Tokenizer"
        # the GPT-2 vocabulary has tokens of several digits, which Qwen3_5Tokenizer
        # never uses
        multi_digit = any(
            len(t.strip("Ġ")) > 1 and t.strip("Ġ").isdigit()
            for t in tokenizer.convert_ids_to_tokens(expected)
        )
        assert (mismatch is not None) == multi_digit
        assert mismatch is None or "Qwen3_5Tokenizer" in mismatch
    else:
        assert mismatch is None


def test_the_settings_llama_cpp_does_not_honour_are_named():
    hybrid = ModelConfig.preset("cpu-tiny-hybrid")
    assert llama_cpp_caveats(hybrid) == []
    caveats = llama_cpp_caveats(
        dataclasses.replace(
            hybrid, norm_topk_prob=False, linear_value_head_dim=16, mlp_only_layers=[0]
        )
    )
    assert [c.split()[0] for c in caveats] == [
        "norm_topk_prob=false",
        "linear_key_head_dim=32",
        "dense",
    ]
    # Qwen3.5's MoE may hold dense layers; a dense model has no top-k to renormalise
    assert (
        llama_cpp_caveats(
            dataclasses.replace(hybrid, architecture="qwen3_5", mlp_only_layers=[0])
        )
        == []
    )
    assert (
        llama_cpp_caveats(
            dataclasses.replace(hybrid, use_moe=False, norm_topk_prob=False)
        )
        == []
    )
