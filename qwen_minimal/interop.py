"""Weights in and out of transformers: Qwen3ForCausalLM / Qwen3MoeForCausalLM, the
hybrids Qwen3NextForCausalLM, Qwen3_5ForCausalLM and Qwen3_5MoeForCausalLM, and
checkpoint folders.

The mapping is explicit, name by name, one table of renames for both directions, and
every tensor's shape is checked against the model it goes into. ModelConfig.architecture
says which family a model is exported as (the layers compute the same in each family;
the checkpoint's layout differs).
"""

import copy
import json
from pathlib import Path

import torch

from .errors import InputError, MissingInputError, check_field_types
from .model.config import ModelConfig
from .model.decoder import QwenLM
from .model.rope import RotaryEmbedding

# Our name (inside blocks.{i}.) -> transformers' name (inside model.layers.{i}.).
# Longest prefix first.
BLOCK_RENAMES = [
    ("attn_norm.", "input_layernorm."),
    ("ffn_norm.", "post_attention_layernorm."),
    ("attn.", "self_attn."),
    ("ffn.router.", "mlp.gate."),
    ("ffn.", "mlp."),
]
# A Gated DeltaNet layer is blocks.{i}.attn. here, as every token mixer is, and
# model.layers.{i}.linear_attn. in transformers.
LINEAR_ATTENTION_RENAME = ("attn.", "linear_attn.")
TOP_LEVEL_RENAMES = {
    "embed.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "lm_head.weight": "lm_head.weight",
}


def transformers_name(name: str, config: ModelConfig) -> str:
    """qwen_minimal's tensor name -> transformers' (the experts' stacked tensors keep
    their last part: blocks.{i}.ffn.experts.gate_proj ->
    model.layers.{i}.mlp.experts.gate_proj)."""
    if not name.startswith("blocks."):
        return TOP_LEVEL_RENAMES[name]
    _, layer, rest = name.split(".", 2)
    renames = BLOCK_RENAMES
    if int(layer) in config.linear_attention_layers:
        renames = [LINEAR_ATTENTION_RENAME, *BLOCK_RENAMES]
    old, new = next((a, b) for a, b in renames if rest.startswith(a))
    return f"model.layers.{layer}.{new}{rest[len(old) :]}"


def _field(hf_config, name, default=None):
    return (
        hf_config.get(name, default)
        if isinstance(hf_config, dict)
        else getattr(hf_config, name, default)
    )


# transformers' model_type -> ModelConfig.architecture
ARCHITECTURE_OF = {
    "qwen3": "qwen3",
    "qwen3_moe": "qwen3",
    "qwen3_next": "qwen3_next",
    "qwen3_5_text": "qwen3_5",
    "qwen3_5_moe_text": "qwen3_5",
}
MOE_MODEL_TYPES = ("qwen3_moe", "qwen3_next", "qwen3_5_moe_text")
# Qwen3.5's released checkpoints are multimodal: their config.json holds the language
# model's config under text_config.
MULTIMODAL_MODEL_TYPES = ("qwen3_5", "qwen3_5_moe")


def _language_model_config(hf_config):
    """The config of the language model: hf_config, or its text_config in a
    multimodal Qwen3.5 config."""
    if _field(hf_config, "model_type") in MULTIMODAL_MODEL_TYPES:
        return _field(hf_config, "text_config")
    return hf_config


def _dense_layers(hf_config, num_layers: int) -> list[int]:
    """The layers of a Qwen3-MoE or Qwen3-Next config that have a dense MLP: those in
    mlp_only_layers and, with decoder_sparse_step = s, those whose number (1-based) is
    not a multiple of s."""
    step = _field(hf_config, "decoder_sparse_step", 1) or 1
    listed = set(_field(hf_config, "mlp_only_layers") or [])
    if not isinstance(num_layers, int):  # ModelConfig says what is wrong with it
        return sorted(listed)
    return sorted(listed | {i for i in range(num_layers) if (i + 1) % step})


def config_from_transformers(hf_config) -> ModelConfig:
    """A ModelConfig from a transformers config (Qwen3Config, Qwen3MoeConfig,
    Qwen3NextConfig, Qwen3_5TextConfig, Qwen3_5MoeTextConfig, or a multimodal Qwen3.5
    config, whose language model is read) or its config.json as a dict."""
    hf_config = _language_model_config(hf_config)
    model_type = _field(hf_config, "model_type")
    if model_type not in ARCHITECTURE_OF:
        raise InputError(
            f"model_type {model_type!r} is not supported: expected one of "
            f"{', '.join(repr(t) for t in ARCHITECTURE_OF)}"
        )
    architecture = ARCHITECTURE_OF[model_type]
    hybrid = architecture != "qwen3"
    if _field(hf_config, "hidden_act", "silu") != "silu":
        raise InputError(
            f"hidden_act={_field(hf_config, 'hidden_act')!r}: only SwiGLU (silu) is "
            "implemented"
        )
    if _field(hf_config, "use_sliding_window", False):
        raise InputError(
            "use_sliding_window=True is not implemented: Qwen3 checkpoints use full "
            "attention"
        )
    # transformers 5.x keeps rope_theta in rope_parameters; config.json files on the hub
    # have rope_theta and rope_scaling at the top level. (Qwen3.5's multimodal RoPE,
    # mrope_section, gives text tokens the same position on its three axes: plain RoPE.)
    rope = (
        _field(hf_config, "rope_parameters") or _field(hf_config, "rope_scaling") or {}
    )
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise InputError(
            f"RoPE scaling {rope} is not implemented: only the default rotary "
            "embedding is"
        )
    num_layers = _field(hf_config, "num_hidden_layers")
    num_experts = _field(hf_config, "num_experts") or _field(
        hf_config, "num_local_experts"
    )  # save_pretrained writes num_experts under its alias num_local_experts
    if model_type == "qwen3_next" and not num_experts:
        raise InputError(
            "a Qwen3-Next config without experts (num_experts=0) is not supported: "
            "a dense hybrid is Qwen3.5's (model_type 'qwen3_5_text')"
        )
    moe = model_type in MOE_MODEL_TYPES
    fields = dict(
        vocab_size=_field(hf_config, "vocab_size"),
        hidden_size=_field(hf_config, "hidden_size"),
        num_layers=num_layers,
        num_heads=_field(hf_config, "num_attention_heads"),
        num_kv_heads=_field(hf_config, "num_key_value_heads"),
        head_dim=_field(hf_config, "head_dim"),
        max_seq_len=_field(hf_config, "max_position_embeddings"),
        rope_theta=float(
            rope.get("rope_theta", _field(hf_config, "rope_theta", 10000.0))
        ),
        rms_norm_eps=_field(hf_config, "rms_norm_eps"),
        attention_bias=_field(hf_config, "attention_bias", False),
        use_moe=moe,
        tie_embeddings=_field(hf_config, "tie_word_embeddings", False),
        init_std=_field(hf_config, "initializer_range", 0.02),
        architecture=architecture,
    )
    # Qwen3.5-MoE has no dense MLP, hence no intermediate_size: ModelConfig's default.
    if _field(hf_config, "intermediate_size") is not None:
        fields["intermediate_size"] = _field(hf_config, "intermediate_size")
    if moe:
        fields.update(
            num_experts=num_experts,
            num_experts_per_tok=_field(hf_config, "num_experts_per_tok"),
            expert_intermediate_size=_field(hf_config, "moe_intermediate_size"),
            # Qwen3.5-MoE always renormalises (its config has no such field)
            norm_topk_prob=_field(hf_config, "norm_topk_prob", True),
            router_aux_loss_coef=_field(hf_config, "router_aux_loss_coef"),
            mlp_only_layers=_dense_layers(hf_config, num_layers),
            shared_expert_intermediate_size=_field(
                hf_config, "shared_expert_intermediate_size", 0
            ),
        )
    if hybrid:
        # transformers' hybrids always gate attention's output and centre their norms
        # on 1; they rotate a quarter of each head unless told otherwise. Without
        # layer_types, every full_attention_interval-th layer attends.
        interval = _field(hf_config, "full_attention_interval", 4)
        layer_types = _field(hf_config, "layer_types") or [
            "full_attention" if (i + 1) % interval == 0 else "linear_attention"
            for i in range(num_layers)
        ]
        fields.update(
            layer_types=list(layer_types),
            partial_rotary_factor=rope.get(
                "partial_rotary_factor",
                _field(hf_config, "partial_rotary_factor", 0.25),
            ),
            attn_output_gate=True,
            zero_centered_norm=True,
            **{
                name: _field(hf_config, name)
                for name in (
                    "linear_num_key_heads",
                    "linear_num_value_heads",
                    "linear_key_head_dim",
                    "linear_value_head_dim",
                    "linear_conv_kernel_dim",
                )
            },
        )
    check_field_types(ModelConfig, fields)  # (a missing one is None)
    # transformers trains with the joint loss, and its routers have no selection bias.
    return ModelConfig(**fields, load_balancing="joint")


def _refuse(problem: str, fix: str) -> None:
    raise InputError(f"{problem}: {fix}")


def _check_representable(config: ModelConfig) -> None:
    """InputError for what config.architecture's transformers classes cannot hold."""
    if config.capacity_factor is not None:
        _refuse(
            f"capacity_factor={config.capacity_factor}: transformers' MoE layers are "
            "dropless and have no expert capacity",
            "set capacity_factor=None",
        )
    if config.load_balancing == "bias":
        _refuse(
            "load_balancing='bias': transformers' routers have no per-expert "
            "selection bias, so this model's expert choices cannot be represented "
            "there",
            "train with another load_balancing mode to export",
        )
    hybrid_settings = {
        "layer_types with linear_attention": bool(config.linear_attention_layers),
        "attn_output_gate=True": config.attn_output_gate,
        "zero_centered_norm=True": config.zero_centered_norm,
        f"partial_rotary_factor={config.partial_rotary_factor}": (
            config.partial_rotary_factor != 1.0
        ),
        "a shared expert": config.use_moe and config.shared_expert_intermediate_size,
    }
    if config.architecture == "qwen3":
        used = [name for name, on in hybrid_settings.items() if on]
        if used:
            _refuse(
                f"{', '.join(used)}: transformers' Qwen3 / Qwen3-MoE have no such "
                "setting",
                "set architecture='qwen3_next' or 'qwen3_5' to export a hybrid",
            )
        return
    if not (config.attn_output_gate and config.zero_centered_norm):
        _refuse(
            f"architecture={config.architecture!r} always gates attention's output "
            "and centres its norms on 1",
            "set attn_output_gate=True and zero_centered_norm=True",
        )
    if config.architecture == "qwen3_next" and not config.use_moe:
        _refuse(
            "architecture='qwen3_next' with use_moe=False: the released Qwen3-Next is "
            "a MoE",
            "export a dense hybrid as architecture='qwen3_5'",
        )
    if config.use_moe and not config.shared_expert_intermediate_size:
        _refuse(
            f"architecture={config.architecture!r} MoE layers always have a shared "
            "expert",
            "set shared_expert_intermediate_size > 0",
        )
    if config.architecture == "qwen3_5" and config.use_moe:
        if config.mlp_only_layers:
            _refuse(
                f"mlp_only_layers={config.mlp_only_layers}: every Qwen3.5-MoE layer "
                "is a MoE layer",
                "export as architecture='qwen3_next', which has dense layers",
            )
        if not config.norm_topk_prob:
            _refuse(
                "norm_topk_prob=False: Qwen3.5-MoE always renormalises the chosen "
                "experts' weights",
                "export as architecture='qwen3_next', which has the setting",
            )


def transformers_config(config: ModelConfig):
    """The transformers config of the same architecture (see transformers_class),
    or InputError for what that family cannot represent."""
    from transformers import (
        Qwen3_5MoeTextConfig,
        Qwen3_5TextConfig,
        Qwen3Config,
        Qwen3MoeConfig,
        Qwen3NextConfig,
    )

    _check_representable(config)
    rope = {"rope_type": "default", "rope_theta": config.rope_theta}
    if config.architecture != "qwen3":
        rope["partial_rotary_factor"] = config.partial_rotary_factor
    common = dict(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads,
        head_dim=config.head_dim,
        max_position_embeddings=config.max_seq_len,
        rope_parameters=rope,
        rms_norm_eps=config.rms_norm_eps,
        attention_bias=config.attention_bias,
        tie_word_embeddings=config.tie_embeddings,
        initializer_range=config.init_std,
    )
    dense = dict(intermediate_size=config.intermediate_size)
    moe = dict(
        num_experts=config.num_experts,
        num_experts_per_tok=config.num_experts_per_tok,
        moe_intermediate_size=config.expert_intermediate_size,
        router_aux_loss_coef=config.router_aux_loss_coef,
    )
    # what Qwen3-MoE and Qwen3-Next have beyond Qwen3.5-MoE
    sparse_steps = dict(
        norm_topk_prob=config.norm_topk_prob,
        decoder_sparse_step=1,
        mlp_only_layers=config.mlp_only_layers,
    )
    if config.architecture == "qwen3":
        if not config.use_moe:
            return Qwen3Config(**common, **dense)
        return Qwen3MoeConfig(**common, **dense, **moe, **sparse_steps)
    hybrid = dict(
        layer_types=config.layer_kinds,
        linear_num_key_heads=config.linear_num_key_heads,
        linear_num_value_heads=config.linear_num_value_heads,
        linear_key_head_dim=config.linear_key_head_dim,
        linear_value_head_dim=config.linear_value_head_dim,
        linear_conv_kernel_dim=config.linear_conv_kernel_dim,
    )
    shared = dict(
        shared_expert_intermediate_size=config.shared_expert_intermediate_size
    )
    if config.architecture == "qwen3_next":
        return Qwen3NextConfig(
            **common, **hybrid, **dense, **moe, **shared, **sparse_steps
        )
    if not config.use_moe:
        return Qwen3_5TextConfig(**common, **hybrid, **dense)
    return Qwen3_5MoeTextConfig(**common, **hybrid, **moe, **shared)


def transformers_class(config: ModelConfig):
    """The transformers model class of the same architecture: Qwen3ForCausalLM or
    Qwen3MoeForCausalLM (architecture "qwen3"), Qwen3NextForCausalLM ("qwen3_next"),
    Qwen3_5ForCausalLM or Qwen3_5MoeForCausalLM ("qwen3_5"), dense or MoE as
    use_moe says; InputError for what that family cannot represent."""
    import transformers

    _check_representable(config)
    dense, moe = {
        "qwen3": ("Qwen3ForCausalLM", "Qwen3MoeForCausalLM"),
        "qwen3_next": (None, "Qwen3NextForCausalLM"),
        "qwen3_5": ("Qwen3_5ForCausalLM", "Qwen3_5MoeForCausalLM"),
    }[config.architecture]
    return getattr(transformers, moe if config.use_moe else dense)


def same_weights_pair(
    config: ModelConfig, seed: int = 0, device="cpu", dtype=torch.float32
):
    """(qwen_minimal model, transformers model) holding identical random weights, in
    eval mode: the pair the benchmark and the GPU checks compare."""
    torch.manual_seed(seed)
    hf_config = transformers_config(config)  # refuses what transformers cannot hold
    hf = transformers_class(config)(hf_config).to(device=device, dtype=dtype).eval()
    # A copy: each model gets its own weights and, in the benchmark, its own optimizer.
    ours = from_transformers(copy.deepcopy(hf)).to(device).eval()
    return ours, hf


def _expert_weights(
    hf_state: dict, layer: str, config: ModelConfig
) -> dict[str, torch.Tensor]:
    """gate/up/down stacked [E, out, in] from transformers 5.x fused tensors or
    per-expert checkpoint tensors."""
    prefix = f"model.layers.{layer}.mlp.experts."
    # in-memory transformers 5.x: gate half first
    if prefix + "gate_up_proj" in hf_state:
        gate, up = hf_state.pop(prefix + "gate_up_proj").chunk(2, dim=1)
        return {
            "gate_proj": gate,
            "up_proj": up,
            "down_proj": hf_state.pop(prefix + "down_proj"),
        }
    # Checkpoint files on the hub: model.layers.{i}.mlp.experts.{e}.gate_proj.weight,
    # ...
    try:
        return {
            name: torch.stack(
                [
                    hf_state.pop(f"{prefix}{e}.{name}.weight")
                    for e in range(config.num_experts)
                ]
            )
            for name in ("gate_proj", "up_proj", "down_proj")
        }
    except KeyError as err:
        raise InputError(
            f"expert weights for layer {layer} not found: expected "
            f"{prefix}gate_up_proj or "
            f"{prefix}<e>.gate_proj.weight, missing {err}"
        ) from None


def _layout(config: ModelConfig) -> QwenLM:
    """The model of `config` on the meta device: its tensors' names and shapes, and its
    layers' regrouping methods, with no memory."""
    with torch.device("meta"):
        return QwenLM(config)


# Tensors of transformers checkpoints that this model has no use for: the
# multi-token-prediction head of Qwen3-Next and Qwen3.5, and Qwen3.5's vision tower.
SKIPPED_PREFIXES = ("mtp.", "model.visual.")
# Qwen3.5's multimodal checkpoints keep the language model under this prefix, where
# Qwen3_5ForCausalLM has model.
LANGUAGE_MODEL_PREFIX = "model.language_model."
QWEN3_NEXT_FUSED = ("in_proj_qkvz.weight", "in_proj_ba.weight")
QWEN3_5_PROJECTIONS = tuple(f"in_proj_{x}.weight" for x in ("qkv", "z", "b", "a"))


def _language_model_tensors(hf_state: dict) -> dict:
    """The language model's tensors under Qwen3_5ForCausalLM's names: the skipped
    prefixes dropped, model.language_model. renamed to model.."""
    return {
        "model." + name.removeprefix(LANGUAGE_MODEL_PREFIX)
        if name.startswith(LANGUAGE_MODEL_PREFIX)
        else name: tensor
        for name, tensor in hf_state.items()
        if not name.startswith(SKIPPED_PREFIXES)
    }


def _regroup_linear_attention(
    hf_state: dict, layout: QwenLM, to_qwen3_next: bool
) -> None:
    """In place: every Gated DeltaNet layer's projections from Qwen3-Next's fused
    in_proj_qkvz and in_proj_ba to Qwen3.5's four (this model's), or back."""
    source, convert = QWEN3_NEXT_FUSED, "projections_from_qwen3_next"
    if to_qwen3_next:
        source, convert = QWEN3_5_PROJECTIONS, "projections_to_qwen3_next"
    for layer in layout.config.linear_attention_layers:
        prefix = f"model.layers.{layer}.linear_attn."
        missing = [prefix + name for name in source if prefix + name not in hf_state]
        if missing:
            raise InputError(
                f"checkpoint has no tensor {missing[0]!r} (Gated DeltaNet layer "
                f"{layer} of a {layout.config.architecture} model)"
            )
        weights = {name: hf_state.pop(prefix + name) for name in source}
        method = getattr(layout.blocks[layer].attn, convert)
        regrouped = method(weights) if to_qwen3_next else method(*weights.values())
        hf_state.update({prefix + name: w for name, w in regrouped.items()})


def convert_state_dict(
    hf_state: dict[str, torch.Tensor], config: ModelConfig
) -> dict[str, torch.Tensor]:
    """transformers tensor names (any family of transformers_class, or a multimodal
    Qwen3.5 checkpoint's language model) -> qwen_minimal names, with shape checks.
    Multi-token-prediction and vision tensors are skipped."""
    # a copy: we pop what we use, to report what was left over
    hf_state = _language_model_tensors(hf_state)
    layout = _layout(config)
    if config.architecture == "qwen3_next":
        _regroup_linear_attention(hf_state, layout, to_qwen3_next=False)
    expected = {k: v.shape for k, v in layout.state_dict().items()}
    ours, experts_by_layer = {}, {}
    for name, shape in expected.items():
        if name == "lm_head.weight" and config.tie_embeddings:
            # tied: it is the embedding, loaded under embed.weight
            hf_state.pop("lm_head.weight", None)
            continue
        if ".experts." in name:  # blocks.{i}.ffn.experts.{gate,up,down}_proj
            layer, part = name.split(".")[1], name.rsplit(".", 1)[1]
            if layer not in experts_by_layer:
                experts_by_layer[layer] = _expert_weights(hf_state, layer, config)
            tensor = experts_by_layer[layer][part]
        else:
            source = transformers_name(name, config)
            if source not in hf_state:
                raise InputError(
                    f"checkpoint has no tensor {source!r} (for qwen_minimal's {name!r})"
                )
            tensor = hf_state.pop(source)
        if tensor.shape != shape:
            raise InputError(
                f"shape mismatch for {name}: checkpoint has {tuple(tensor.shape)}, "
                f"the config expects {tuple(shape)}"
            )
        ours[name] = tensor
    leftover = sorted(k for k in hf_state if not k.endswith("rotary_emb.inv_freq"))
    if leftover:
        raise InputError(
            f"checkpoint tensors not used by qwen_minimal: {leftover[:8]}"
            f"{' ...' if len(leftover) > 8 else ''}"
        )
    return ours


def transformers_state_dict(
    state: dict[str, torch.Tensor], config: ModelConfig, per_expert: bool = False
) -> dict[str, torch.Tensor]:
    """qwen_minimal tensor names -> transformers', the inverse of convert_state_dict
    (Qwen3-Next's linear-attention projections fused as it fuses them).
    Each layer's experts are fused as transformers 5 holds them in memory (gate_up_proj
    [E, 2 I, H], gate half first; down_proj [E, H, I]) or, with per_expert=True, split
    as checkpoint files on the hub store them
    (model.layers.{i}.mlp.experts.{e}.gate_proj.weight [I, H], ...). Tensors may share
    memory with `state`."""
    hf_state = {}
    for name, tensor in state.items():
        hf_name = transformers_name(name, config)
        if ".experts." not in name:
            hf_state[hf_name] = tensor
        elif per_expert:
            prefix, part = hf_name.rsplit(".", 1)
            hf_state.update(
                {
                    f"{prefix}.{e}.{part}.weight": w
                    for e, w in enumerate(tensor.unbind(0))
                }
            )
        elif name.endswith(".gate_proj"):
            up = state[name.removesuffix("gate_proj") + "up_proj"]
            hf_state[hf_name.removesuffix("gate_proj") + "gate_up_proj"] = torch.cat(
                [tensor, up], dim=1
            )
        elif not name.endswith(".up_proj"):  # down_proj (up_proj is in gate_up_proj)
            hf_state[hf_name] = tensor
    if config.architecture == "qwen3_next":
        _regroup_linear_attention(hf_state, _layout(config), to_qwen3_next=True)
    return hf_state


def _build(
    config: ModelConfig, state: dict[str, torch.Tensor], dtype: torch.dtype
) -> QwenLM:
    """Instantiate without allocating random weights (meta device), then adopt the given
    tensors."""
    with torch.device("meta"):
        model = QwenLM(config)
    model.load_state_dict(
        {k: v.to(dtype) for k, v in state.items()},
        strict=not config.tie_embeddings,
        assign=True,
    )
    if config.tie_embeddings:
        model.lm_head.weight = model.embed.weight
    # not in checkpoints
    model.rope = RotaryEmbedding(
        config.rotary_dim, config.max_seq_len, config.rope_theta
    )
    return model


def from_transformers(hf_model) -> QwenLM:
    """The qwen_minimal model with the same weights as a transformers model of a class
    that transformers_class names, in its dtype, on the CPU (move it with .to())."""
    config = config_from_transformers(hf_model.config)
    # Copies, not views: training one model must not change the other.
    state = {
        k: v.detach().to("cpu", copy=True) for k, v in hf_model.state_dict().items()
    }
    return _build(
        config, convert_state_dict(state, config), next(hf_model.parameters()).dtype
    )


def to_transformers(model: QwenLM):
    """The transformers model (of transformers_class) with the same weights (copies),
    in the model's dtype, on the CPU, in eval mode: the inverse of from_transformers."""
    # refuses what transformers cannot represent
    config = transformers_config(model.config)
    hf = transformers_class(model.config)(config).to(next(model.parameters()).dtype)
    # copies into hf's own tensors
    hf.load_state_dict(
        transformers_state_dict(model.state_dict(), model.config), strict=True
    )
    return hf.eval()


# A key of the config.json that save_pretrained writes: a folder holding it is an
# export, which a later export may replace (transformers keeps unknown keys as
# attributes of the config, harmlessly).
EXPORT_MARKER = "exported_by"


def _config_json(config) -> str:
    """config.json as transformers 5 writes it, plus the names the released Qwen3 files
    use (num_experts, rope_theta, torch_dtype), which transformers 4 and tools that
    parse config.json themselves look for, and EXPORT_MARKER."""
    values = config.to_diff_dict()  # what config.save_pretrained writes
    values.update(
        rope_theta=values["rope_parameters"]["rope_theta"],
        torch_dtype=values["dtype"],
        **{EXPORT_MARKER: "qwen_minimal"},
    )
    if "num_local_experts" in values:
        values["num_experts"] = values["num_local_experts"]
    return json.dumps(values, indent=2, sort_keys=True) + "\n"


def save_pretrained(
    model: QwenLM,
    folder: str | Path,
    tokenizer=None,
    dtype: torch.dtype | None = None,
    max_shard_size: int | str = "5GB",
) -> Path:
    """Write `model` (and `tokenizer`, if given) as a transformers checkpoint folder,
    weights in `dtype` (default: the model's), split into shards of at most
    max_shard_size (bytes, or a string like "5GB"). Returns the folder.
    AutoModelForCausalLM.from_pretrained, AutoTokenizer.from_pretrained and
    load_pretrained read it."""
    from huggingface_hub import save_torch_state_dict
    from transformers import GenerationConfig

    # refuses what transformers cannot represent, before any writing
    config = transformers_config(model.config)
    if tokenizer is not None and len(tokenizer) > model.config.vocab_size:
        raise InputError(
            f"the tokenizer has {len(tokenizer)} tokens but the model only "
            f"{model.config.vocab_size} "
            f"embeddings: pass the tokenizer the model was trained with"
        )
    dtype = dtype or next(model.parameters()).dtype
    special = {
        name: getattr(tokenizer, name, None)
        for name in ("bos_token_id", "eos_token_id", "pad_token_id")
    }
    config.update(
        dict(
            architectures=[transformers_class(model.config).__name__],
            dtype=dtype,
            **special,
        )
    )
    state = model.state_dict()
    if model.config.tie_embeddings:
        # it is the embedding; hub checkpoints of tied models do not store it
        del state["lm_head.weight"]
    # Copies: safetensors refuses tensors that share memory, as the experts' slices of
    # one stacked tensor do.
    weights = {
        name: tensor.detach().to(device="cpu", dtype=dtype, copy=True)
        for name, tensor in transformers_state_dict(
            state, model.config, per_expert=True
        ).items()
    }
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # Writes model.safetensors or the shards and their index, with {"format": "pt"}
    # metadata, and removes the weight files of an earlier export to the same folder.
    save_torch_state_dict(weights, folder, max_shard_size=max_shard_size)
    # readable by others, as a folder to share should be
    for file in folder.glob("model*.safetensors"):
        file.chmod(0o644)  # (safetensors writes 0600)
    (folder / "config.json").write_text(_config_json(config))
    GenerationConfig(**special).save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return folder


def load_pretrained(
    folder: str | Path,
    dtype: torch.dtype = torch.bfloat16,
    max_seq_len: int | None = None,
) -> QwenLM:
    """Load a checkpoint folder (config.json + *.safetensors) of Qwen3, Qwen3-MoE,
    Qwen3-Next or Qwen3.5 (text or multimodal: the language model is read), e.g. one
    downloaded with huggingface_hub.snapshot_download("Qwen/Qwen3-0.6B").
    Multi-token-prediction and vision tensors are skipped. max_seq_len shortens the
    RoPE tables."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise MissingInputError(
            f"{folder / 'config.json'} not found: pass a checkpoint folder holding "
            f"config.json and *.safetensors"
        )
    file = folder / "config.json"
    try:
        config = config_from_transformers(json.loads(file.read_text()))
    # ValueError: not JSON (or InputError); TypeError, AttributeError: a value of
    # another type than transformers writes (a dict that is a list, ...)
    except (ValueError, TypeError, AttributeError) as e:
        raise InputError(
            f"{file} is not a usable Qwen3 config ({e}): put back the checkpoint's "
            "own config.json"
        ) from None
    if max_seq_len is not None:
        config.max_seq_len = max_seq_len
    shards = sorted(folder.glob("*.safetensors"))
    if not shards:
        raise MissingInputError(
            f"no *.safetensors files in {folder}: pass a checkpoint folder holding "
            f"config.json and *.safetensors"
        )
    state = {}
    for shard in shards:
        state.update(load_file(shard))
    return _build(config, convert_state_dict(state, config), dtype)


# Words, numbers and punctuation, where byte-level BPE tokenizers differ most: GPT-2
# keeps a run of digits together, Qwen's tokenizers split every digit off.
TOKENIZER_CHECK_TEXT = (
    "In 1987, 12,345 people paid $3.50 each; it's 2024-01-02 at 9:30."
)


def tokenizer_mismatch(folder: str | Path, tokenizer) -> str | None:
    """None if AutoTokenizer.from_pretrained(folder) tokenizes TOKENIZER_CHECK_TEXT as
    `tokenizer` does, else why not, in one line. transformers does not always obey the
    folder's tokenizer_config.json: for some model types (qwen3_5_moe_text among them)
    it builds its own tokenizer class from the saved vocabulary and merges, with that
    class's pre-tokenizer."""
    from transformers import AutoTokenizer

    loaded = AutoTokenizer.from_pretrained(folder)
    if loaded.encode(TOKENIZER_CHECK_TEXT) == tokenizer.encode(TOKENIZER_CHECK_TEXT):
        return None
    return (
        f"AutoTokenizer.from_pretrained loads this folder's tokenizer as "
        f"{type(loaded).__name__}, which tokenizes text differently from the "
        f"training tokenizer {type(tokenizer).__name__} (e.g. numbers): load it "
        "with transformers.PreTrainedTokenizerFast.from_pretrained(folder) instead; "
        "tools that call AutoTokenizer (llama.cpp's converter) get the wrong one"
    )


def llama_cpp_caveats(config: ModelConfig) -> list[str]:
    """The settings of `config` that llama.cpp's Qwen3 / Qwen3-Next / Qwen3.5 graphs
    compute otherwise, or cannot load: their models would convert, or fail to, but not
    compute this model's function."""
    caveats = []
    if config.use_moe and not config.norm_topk_prob:
        caveats.append(
            "norm_topk_prob=false (llama.cpp always renormalises the top-k weights)"
        )
    if (
        config.linear_attention_layers
        and config.linear_key_head_dim != config.linear_value_head_dim
    ):
        caveats.append(
            f"linear_key_head_dim={config.linear_key_head_dim} != "
            f"linear_value_head_dim={config.linear_value_head_dim} (llama.cpp's "
            "Qwen3-Next takes both from one field)"
        )
    if (
        config.architecture == "qwen3_next"
        and config.use_moe
        and config.mlp_only_layers
    ):
        caveats.append(
            f"dense layers {config.mlp_only_layers} inside a Qwen3-Next MoE (llama.cpp "
            "expects a router in every layer)"
        )
    return caveats
