"""Weights in and out of transformers: Qwen3ForCausalLM / Qwen3MoeForCausalLM and
checkpoint folders.

The mapping is explicit, name by name, one table of renames for both directions, and
every tensor's shape is checked against the model it goes into.
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
TOP_LEVEL_RENAMES = {
    "embed.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "lm_head.weight": "lm_head.weight",
}


def transformers_name(name: str) -> str:
    """qwen_minimal's tensor name -> transformers' (the experts' stacked tensors keep
    their last part: blocks.{i}.ffn.experts.gate_proj ->
    model.layers.{i}.mlp.experts.gate_proj)."""
    if not name.startswith("blocks."):
        return TOP_LEVEL_RENAMES[name]
    _, layer, rest = name.split(".", 2)
    old, new = next((a, b) for a, b in BLOCK_RENAMES if rest.startswith(a))
    return f"model.layers.{layer}.{new}{rest[len(old) :]}"


def _field(hf_config, name, default=None):
    return (
        hf_config.get(name, default)
        if isinstance(hf_config, dict)
        else getattr(hf_config, name, default)
    )


def config_from_transformers(hf_config) -> ModelConfig:
    """A ModelConfig from a transformers Qwen3Config / Qwen3MoeConfig or its config.json
    as a dict."""
    model_type = _field(hf_config, "model_type")
    if model_type not in ("qwen3", "qwen3_moe"):
        raise InputError(
            f"model_type {model_type!r} is not supported: expected 'qwen3' or "
            "'qwen3_moe'"
        )
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
    # have rope_theta and rope_scaling at the top level.
    rope = (
        _field(hf_config, "rope_parameters") or _field(hf_config, "rope_scaling") or {}
    )
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise InputError(
            f"RoPE scaling {rope} is not implemented: only the default rotary "
            "embedding is"
        )
    moe = model_type == "qwen3_moe"
    if moe and (
        _field(hf_config, "mlp_only_layers")
        or _field(hf_config, "decoder_sparse_step", 1) != 1
    ):
        raise InputError(
            "mixed dense/MoE layer stacks (mlp_only_layers, decoder_sparse_step != "
            "1) are not "
            "implemented: every layer must be a MoE layer"
        )
    fields = dict(
        vocab_size=_field(hf_config, "vocab_size"),
        hidden_size=_field(hf_config, "hidden_size"),
        num_layers=_field(hf_config, "num_hidden_layers"),
        num_heads=_field(hf_config, "num_attention_heads"),
        num_kv_heads=_field(hf_config, "num_key_value_heads"),
        head_dim=_field(hf_config, "head_dim"),
        max_seq_len=_field(hf_config, "max_position_embeddings"),
        rope_theta=float(
            rope.get("rope_theta", _field(hf_config, "rope_theta", 10000.0))
        ),
        rms_norm_eps=_field(hf_config, "rms_norm_eps"),
        attention_bias=_field(hf_config, "attention_bias", False),
        intermediate_size=_field(hf_config, "intermediate_size"),
        use_moe=moe,
        tie_embeddings=_field(hf_config, "tie_word_embeddings", False),
        init_std=_field(hf_config, "initializer_range", 0.02),
    )
    if moe:
        # save_pretrained writes num_experts under its alias num_local_experts
        num_experts = _field(hf_config, "num_experts") or _field(
            hf_config, "num_local_experts"
        )
        fields.update(
            num_experts=num_experts,
            num_experts_per_tok=_field(hf_config, "num_experts_per_tok"),
            expert_intermediate_size=_field(hf_config, "moe_intermediate_size"),
            norm_topk_prob=_field(hf_config, "norm_topk_prob"),
            router_aux_loss_coef=_field(hf_config, "router_aux_loss_coef"),
        )
    check_field_types(ModelConfig, fields)  # (a missing one is None)
    # transformers trains with the joint loss, and its routers have no selection bias.
    return ModelConfig(**fields, load_balancing="joint")


def transformers_config(config: ModelConfig):
    """The transformers config of the same architecture: Qwen3MoeConfig (or Qwen3Config
    if dense)."""
    from transformers import Qwen3Config, Qwen3MoeConfig

    if config.capacity_factor is not None:
        raise InputError(
            f"capacity_factor={config.capacity_factor}: transformers' Qwen3-MoE is "
            "dropless and has no "
            f"expert capacity; set capacity_factor=None"
        )
    if config.load_balancing == "bias":
        raise InputError(
            "load_balancing='bias': transformers' Qwen3-MoE router has no per-expert "
            "selection bias, "
            "so this model's expert choices cannot be represented there; train with "
            "another "
            "load_balancing mode to export"
        )
    common = dict(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads,
        head_dim=config.head_dim,
        max_position_embeddings=config.max_seq_len,
        rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta},
        rms_norm_eps=config.rms_norm_eps,
        attention_bias=config.attention_bias,
        tie_word_embeddings=config.tie_embeddings,
        initializer_range=config.init_std,
    )
    if not config.use_moe:
        return Qwen3Config(**common)
    return Qwen3MoeConfig(
        **common,
        num_experts=config.num_experts,
        num_experts_per_tok=config.num_experts_per_tok,
        moe_intermediate_size=config.expert_intermediate_size,
        norm_topk_prob=config.norm_topk_prob,
        router_aux_loss_coef=config.router_aux_loss_coef,
        decoder_sparse_step=1,
        mlp_only_layers=[],
    )


def transformers_class(config: ModelConfig):
    """The transformers model class of the same architecture: Qwen3MoeForCausalLM (or
    Qwen3ForCausalLM if dense)."""
    from transformers import Qwen3ForCausalLM, Qwen3MoeForCausalLM

    return Qwen3MoeForCausalLM if config.use_moe else Qwen3ForCausalLM


def same_weights_pair(
    config: ModelConfig, seed: int = 0, device="cpu", dtype=torch.float32
):
    """(qwen_minimal model, transformers model) holding identical random weights, in
    eval mode: the pair the benchmark and the GPU checks compare."""
    torch.manual_seed(seed)
    hf = (
        transformers_class(config)(transformers_config(config))
        .to(device=device, dtype=dtype)
        .eval()
    )
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


def convert_state_dict(
    hf_state: dict[str, torch.Tensor], config: ModelConfig
) -> dict[str, torch.Tensor]:
    """transformers Qwen3 / Qwen3-MoE tensor names -> qwen_minimal names, with shape
    checks."""
    hf_state = dict(hf_state)  # we pop what we use, to report what was left over
    with torch.device("meta"):  # shapes only, no memory
        expected = {k: v.shape for k, v in QwenLM(config).state_dict().items()}
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
            source = transformers_name(name)
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
    state: dict[str, torch.Tensor], per_expert: bool = False
) -> dict[str, torch.Tensor]:
    """qwen_minimal tensor names -> transformers', the inverse of convert_state_dict.
    Each layer's experts are fused as transformers 5 holds them in memory (gate_up_proj
    [E, 2 I, H], gate half first; down_proj [E, H, I]) or, with per_expert=True, split
    as checkpoint files on the hub store them
    (model.layers.{i}.mlp.experts.{e}.gate_proj.weight [I, H], ...). Tensors may share
    memory with `state`."""
    hf_state = {}
    for name, tensor in state.items():
        hf_name = transformers_name(name)
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
    model.rope = RotaryEmbedding(config.head_dim, config.max_seq_len, config.rope_theta)
    return model


def from_transformers(hf_model) -> QwenLM:
    """The qwen_minimal model with the same weights as a transformers Qwen3ForCausalLM
    or Qwen3MoeForCausalLM, in its dtype, on the CPU (move it with .to())."""
    config = config_from_transformers(hf_model.config)
    # Copies, not views: training one model must not change the other.
    state = {
        k: v.detach().to("cpu", copy=True) for k, v in hf_model.state_dict().items()
    }
    return _build(
        config, convert_state_dict(state, config), next(hf_model.parameters()).dtype
    )


def to_transformers(model: QwenLM):
    """The transformers Qwen3ForCausalLM or Qwen3MoeForCausalLM with the same weights
    (copies), in the model's dtype, on the CPU, in eval mode: the inverse of
    from_transformers."""
    # refuses what transformers cannot represent
    config = transformers_config(model.config)
    hf = transformers_class(model.config)(config).to(next(model.parameters()).dtype)
    # copies into hf's own tensors
    hf.load_state_dict(transformers_state_dict(model.state_dict()), strict=True)
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
        for name, tensor in transformers_state_dict(state, per_expert=True).items()
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
    """Load a Qwen3 / Qwen3-MoE checkpoint folder (config.json + *.safetensors), e.g.
    one downloaded with huggingface_hub.snapshot_download("Qwen/Qwen3-0.6B").
    max_seq_len shortens the RoPE tables."""
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
