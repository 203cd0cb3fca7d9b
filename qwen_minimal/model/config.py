"""Model configuration: one dataclass, a few named presets, and checks that say what to
fix."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..errors import InputError, check_at_least, check_known_fields

LOAD_BALANCING = ("joint", "per_layer", "global_batch", "bias")
LAYER_TYPES = ("full_attention", "linear_attention")
# The transformers family a model is laid out as (see ModelConfig.architecture).
ARCHITECTURES = ("qwen3", "qwen3_next", "qwen3_5")


@dataclass
class ModelConfig:
    vocab_size: int = 50257  # GPT-2 BPE vocabulary (the original WikiText-103 run)
    hidden_size: int = 768  # width of the residual stream
    num_layers: int = 6  # decoder blocks
    num_heads: int = 16  # query heads
    num_kv_heads: int = (
        4  # key/value heads; num_heads // num_kv_heads queries share one (GQA)
    )
    head_dim: int | None = (
        48  # per-head width; Qwen3 sets it independently of hidden_size / num_heads
    )
    max_seq_len: int = (
        256  # longest sequence RoPE tables and the KV cache are built for
    )
    rope_theta: float = 1_000_000.0  # RoPE base; Qwen3 uses 1e6
    rms_norm_eps: float = 1e-6
    attention_bias: bool = False  # Qwen3 has no bias on q/k/v/o projections
    # Feed-forward: a Mixture of Experts (use_moe=True) or one dense SwiGLU MLP (the
    # baseline).
    use_moe: bool = True
    intermediate_size: int = 3072  # hidden width of the dense SwiGLU MLP
    num_experts: int = 8
    # experts each token is routed to, the k of top-k routing (transformers' name)
    num_experts_per_tok: int = 2
    expert_intermediate_size: int = 3072  # hidden width of one expert's SwiGLU
    norm_topk_prob: bool = (
        True  # renormalise the k chosen router probabilities to sum to 1 (Qwen3)
    )
    capacity_factor: float | None = (
        None  # None: dropless (Qwen3). Else each expert takes at most
    )
    # ceil(capacity_factor * tokens * num_experts_per_tok / num_experts) tokens.
    router_aux_loss_coef: float = (
        0.01  # weight of the load-balancing loss in the training loss
    )
    # How training keeps the experts' load even (balancing.py explains each): "joint"
    # (transformers' loss, one over all layers' tokens), "per_layer" (each layer's loss,
    # averaged), "global_batch" (Qwen3: expert frequencies counted over the whole batch
    # of an optimizer step), "bias" (DeepSeek-V3: no loss, a bias on the selection
    # scores). global_batch is the default: in the study of chapter 8 it kept every
    # layer's load even where joint left single layers unbalanced, and unlike bias it is
    # a model transformers can load.
    load_balancing: str = field(
        default="global_batch",
        metadata={
            "choices": LOAD_BALANCING,
            "help": (
                "how training evens the experts' load (qwen_minimal/balancing.py)"
            ),
        },
    )
    bias_update_rate: float = field(
        default=0.001,
        metadata={
            "help": (
                "load_balancing=bias: how far each optimizer step moves an expert's "
                "selection bias"
            )
        },
    )
    tie_embeddings: bool = False  # share the input embedding with the output projection
    init_std: float = 0.02  # std of the normal init of every weight matrix
    # The hybrids of Qwen3-Next and Qwen3.5 (transformers' names and meanings). The
    # defaults are Qwen3: every layer softmax attention, plain RMSNorm, no output gate,
    # RoPE on every channel, no shared expert.
    # Per layer "full_attention" (softmax attention with a KV cache) or
    # "linear_attention" (Gated DeltaNet, a fixed-size state); None: all full.
    layer_types: list[str] | None = None
    # The Gated DeltaNet layers' shapes (transformers' defaults, Qwen3-Next-80B's).
    linear_num_key_heads: int = 16
    linear_num_value_heads: int = 32  # a multiple of linear_num_key_heads
    linear_key_head_dim: int = 128
    linear_value_head_dim: int = 128
    linear_conv_kernel_dim: int = 4  # taps of the causal depthwise convolution
    # RoPE rotates the first partial_rotary_factor * head_dim channels of each head
    # and leaves the rest alone (the hybrids: 0.25).
    partial_rotary_factor: float = 1.0
    # q_proj also yields a per-head gate; attention's output is multiplied by
    # sigmoid(gate) before o_proj (Qwen3-Next, Qwen3.5).
    attn_output_gate: bool = False
    # RMSNorm gains stored as w and applied as 1 + w, initialised to zeros (Gemma's,
    # the hybrids'): block, final and q/k norms; not the Gated DeltaNet's gated norm.
    zero_centered_norm: bool = False
    # Width of a shared expert that every token passes through beside its routed ones,
    # scaled by sigmoid(shared_expert_gate(x)); 0: none.
    shared_expert_intermediate_size: int = 0
    # Layers (0-based) with a dense SwiGLU of intermediate_size instead of the MoE.
    mlp_only_layers: list[int] = field(default_factory=list)
    # The transformers family for export: "qwen3" (Qwen3ForCausalLM or
    # Qwen3MoeForCausalLM), "qwen3_next" (Qwen3NextForCausalLM: fused in_proj_qkvz /
    # in_proj_ba), "qwen3_5" (Qwen3_5ForCausalLM, or Qwen3_5MoeForCausalLM with MoE).
    # The layers compute the same either way; the family is the checkpoint's layout.
    architecture: str = field(default="qwen3", metadata={"choices": ARCHITECTURES})

    def __post_init__(self):
        if self.head_dim is None:
            if self.hidden_size % self.num_heads:
                raise InputError(
                    f"hidden_size={self.hidden_size} is not divisible by "
                    f"num_heads={self.num_heads}: "
                    "choose a hidden_size that is a multiple of num_heads, or set "
                    "head_dim explicitly"
                )
            self.head_dim = self.hidden_size // self.num_heads
        check_at_least(
            1,
            **{
                name: getattr(self, name)
                for name in (
                    "vocab_size",
                    "hidden_size",
                    "num_layers",
                    "num_heads",
                    "num_kv_heads",
                    "head_dim",
                    "max_seq_len",
                    "intermediate_size",
                    "num_experts",
                    "expert_intermediate_size",
                )
            },
        )
        if self.num_heads % self.num_kv_heads:
            raise InputError(
                f"num_heads={self.num_heads} is not divisible by "
                f"num_kv_heads={self.num_kv_heads}: "
                "each KV head must serve a whole group of query heads, so pick "
                "num_kv_heads among "
                f"the divisors of num_heads"
            )
        if self.head_dim % 2:
            raise InputError(
                f"head_dim={self.head_dim} is odd: RoPE rotates pairs of channels, "
                f"so head_dim must be even"
            )
        if self.use_moe and not 1 <= self.num_experts_per_tok <= self.num_experts:
            raise InputError(
                f"num_experts_per_tok={self.num_experts_per_tok} must be between 1 and "
                f"num_experts={self.num_experts}: route each token to fewer experts "
                "or add experts"
            )
        if self.load_balancing not in LOAD_BALANCING:
            raise InputError(
                f"load_balancing={self.load_balancing!r}: choose one of "
                f"{', '.join(LOAD_BALANCING)}"
            )
        if self.capacity_factor is not None and self.capacity_factor <= 0:
            raise InputError(
                f"capacity_factor={self.capacity_factor} must be positive, "
                f"or None for dropless routing"
            )
        self._check_hybrid_fields()

    def _check_hybrid_fields(self) -> None:
        """InputError for a hybrid setting that cannot build a model."""
        if self.architecture not in ARCHITECTURES:
            raise InputError(
                f"architecture={self.architecture!r}: choose one of "
                f"{', '.join(ARCHITECTURES)}"
            )
        if self.layer_types is not None:
            self.layer_types = list(self.layer_types)
            if len(self.layer_types) != self.num_layers:
                raise InputError(
                    f"layer_types has {len(self.layer_types)} entries but num_layers="
                    f"{self.num_layers}: give one type per layer"
                )
            unknown = sorted(set(self.layer_types) - set(LAYER_TYPES))
            if unknown:
                raise InputError(
                    f"unknown layer type(s) {unknown} in layer_types: use "
                    f"{' or '.join(LAYER_TYPES)}"
                )
        if self.linear_attention_layers:
            check_at_least(
                1,
                **{
                    name: getattr(self, name)
                    for name in (
                        "linear_num_key_heads",
                        "linear_num_value_heads",
                        "linear_key_head_dim",
                        "linear_value_head_dim",
                        "linear_conv_kernel_dim",
                    )
                },
            )
            if self.linear_num_value_heads % self.linear_num_key_heads:
                raise InputError(
                    f"linear_num_value_heads={self.linear_num_value_heads} is not a "
                    f"multiple of linear_num_key_heads={self.linear_num_key_heads}: "
                    "each key head must serve a whole group of value heads"
                )
        if not 0 < self.partial_rotary_factor <= 1:
            raise InputError(
                f"partial_rotary_factor={self.partial_rotary_factor} must be in "
                "(0, 1]: the share of each head's channels that RoPE rotates"
            )
        if self.rotary_dim < 2 or self.rotary_dim % 2:
            raise InputError(
                f"partial_rotary_factor={self.partial_rotary_factor} of head_dim="
                f"{self.head_dim} rotates {self.rotary_dim} channels: RoPE rotates "
                "pairs, so choose a factor that gives an even number of at least 2"
            )
        if self.shared_expert_intermediate_size < 0:
            raise InputError(
                "shared_expert_intermediate_size must be at least 0 (0: no shared "
                f"expert), got {self.shared_expert_intermediate_size}"
            )
        self.mlp_only_layers = sorted(set(self.mlp_only_layers))
        outside = [i for i in self.mlp_only_layers if not 0 <= i < self.num_layers]
        if outside:
            raise InputError(
                f"mlp_only_layers {outside} are not layers of a "
                f"{self.num_layers}-layer model: use indices 0 .. {self.num_layers - 1}"
            )

    @property
    def layer_kinds(self) -> list[str]:
        """Every layer's type: layer_types, or "full_attention" throughout if None."""
        return self.layer_types or ["full_attention"] * self.num_layers

    @property
    def full_attention_layers(self) -> list[int]:
        """The layers with softmax attention: the ones a KV cache grows in."""
        return [i for i, t in enumerate(self.layer_kinds) if t == "full_attention"]

    @property
    def linear_attention_layers(self) -> list[int]:
        """The Gated DeltaNet layers."""
        return [i for i, t in enumerate(self.layer_kinds) if t == "linear_attention"]

    @property
    def rotary_dim(self) -> int:
        """Channels per head that RoPE rotates: int(head_dim * partial_rotary_factor),
        rounded down as transformers does."""
        return int(self.head_dim * self.partial_rotary_factor)

    def is_moe_layer(self, layer: int) -> bool:
        """Whether `layer` has the MoE (else the dense SwiGLU)."""
        return self.use_moe and layer not in self.mlp_only_layers

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> ModelConfig:
        """The inverse of to_dict. Also reads the configs of older checkpoints, which
        called num_experts_per_tok `top_k`."""
        values = dict(values)
        if "top_k" in values and "num_experts_per_tok" not in values:
            values["num_experts_per_tok"] = values.pop("top_k")
        check_known_fields(cls, values)
        return cls(**values)

    @classmethod
    def preset(cls, name: str, **overrides) -> ModelConfig:
        """A named configuration from PRESETS, with any field overridden."""
        if name not in PRESETS:
            raise InputError(
                f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}"
            )
        return cls.from_dict({**PRESETS[name], **overrides})


def every_fourth_layer_attends(num_layers: int) -> list[str]:
    """The hybrids' layer_types: three Gated DeltaNet layers, then one attention layer,
    repeated (transformers' full_attention_interval=4)."""
    return [
        "full_attention" if (i + 1) % 4 == 0 else "linear_attention"
        for i in range(num_layers)
    ]


# What the Qwen3-Next and Qwen3.5 releases share in their attention layers: 16 gated
# query heads of 256, a quarter of each rotated, zero-centred norms, rope_theta 1e7.
HYBRID_ATTENTION = dict(
    num_heads=16,
    head_dim=256,
    partial_rotary_factor=0.25,
    attn_output_gate=True,
    zero_centered_norm=True,
    rope_theta=10_000_000.0,
)

PRESETS: dict[str, dict] = {
    # The original run: 6 layers, 768 wide, 16 query heads in 4 KV groups of head_dim
    # 48, 8 experts top-2 of width 3072, GPT-2 vocabulary, untied embeddings, context
    # 256; global-batch load balancing with the Switch Transformer's coefficient, 0.01.
    "wikitext103": dict(),
    # Small enough to train visibly on a 2-core CPU in about a minute. Its 100 steps
    # balance harder: at 0.01 single layers stayed uneven (worst-layer KL 0.36), at 0.03
    # none did (0.14), in chapter 8's study; were it switched to bias balancing, 0.001
    # per step would move the biases too little in 100 steps, 0.01 enough.
    "cpu-tiny": dict(
        hidden_size=128,
        num_layers=4,
        num_heads=4,
        num_kv_heads=2,
        head_dim=32,
        max_seq_len=128,
        intermediate_size=512,
        num_experts=8,
        num_experts_per_tok=2,
        expert_intermediate_size=256,
        tie_embeddings=True,
        router_aux_loss_coef=0.03,
        bias_update_rate=0.01,
    ),
    # cpu-tiny as a Qwen3-Next hybrid: layers 0-2 Gated DeltaNet, layer 3 gated
    # attention rotating a quarter of each head, zero-centred norms, and beside the 8
    # routed experts (top-2) a shared expert of the same width. Without the embedding
    # it has 1.45M active parameters per token (3.81M in all), cpu-tiny 0.99M (3.35M):
    # a token passes through 3 experts' worth of MLP instead of 2 (+0.39M), and the
    # gated q_proj is twice as wide. A Gated DeltaNet layer here has 68K parameters,
    # the gated attention layer 66K, cpu-tiny's attention 49K. Totals, presets below:
    # qwen3-next-80b-a3b 79.7B (3.9B active), qwen3.5-9b 9.0B, qwen3.5-35b-a3b 34.7B
    # (3.5B active), as the names say.
    "cpu-tiny-hybrid": dict(
        hidden_size=128,
        num_layers=4,
        layer_types=every_fourth_layer_attends(4),
        num_heads=4,
        num_kv_heads=2,
        head_dim=32,
        partial_rotary_factor=0.25,
        attn_output_gate=True,
        zero_centered_norm=True,
        linear_num_key_heads=2,
        linear_num_value_heads=4,
        linear_key_head_dim=32,
        linear_value_head_dim=32,
        linear_conv_kernel_dim=4,
        max_seq_len=128,
        intermediate_size=512,
        num_experts=8,
        num_experts_per_tok=2,
        expert_intermediate_size=256,
        shared_expert_intermediate_size=256,
        tie_embeddings=True,
        router_aux_loss_coef=0.03,
        bias_update_rate=0.01,
        architecture="qwen3_next",
    ),
    # The real Qwen3 shapes (from their config.json on the hub), for loading
    # checkpoints.
    "qwen3-0.6b": dict(
        vocab_size=151936,
        hidden_size=1024,
        num_layers=28,
        num_heads=16,
        num_kv_heads=8,
        head_dim=128,
        max_seq_len=40960,
        intermediate_size=3072,
        use_moe=False,
        tie_embeddings=True,
    ),
    "qwen3-30b-a3b": dict(
        vocab_size=151936,
        hidden_size=2048,
        num_layers=48,
        num_heads=32,
        num_kv_heads=4,
        head_dim=128,
        max_seq_len=40960,
        intermediate_size=6144,
        num_experts=128,
        num_experts_per_tok=8,
        expert_intermediate_size=768,
        router_aux_loss_coef=0.001,
    ),
    # The hybrids' shapes. Qwen3-Next-80B-A3B: transformers' Qwen3NextConfig defaults,
    # which its docstring names as that checkpoint's, with intermediate_size and
    # max_position_embeddings of the released config.json (5120, 262144; the dense
    # width is unused, every layer being MoE). Every 4th layer attends
    # (full_attention_interval=4), a quarter of each head is rotated.
    "qwen3-next-80b-a3b": dict(
        vocab_size=151936,
        hidden_size=2048,
        num_layers=48,
        layer_types=every_fourth_layer_attends(48),
        num_kv_heads=2,
        max_seq_len=262144,
        **HYBRID_ATTENTION,
        intermediate_size=5120,
        num_experts=512,
        num_experts_per_tok=10,
        expert_intermediate_size=512,
        shared_expert_intermediate_size=512,
        router_aux_loss_coef=0.001,
        architecture="qwen3_next",
    ),
    # Qwen3.5-9B and Qwen3.5-35B-A3B (text models): transformers' Qwen3_5TextConfig
    # and Qwen3_5MoeTextConfig defaults, which their docstrings name as those
    # checkpoints' (linear-attention shapes: the defaults above); rope_theta 1e7 as in
    # the Qwen3-Next release (transformers' default is 1e4), context 32768
    # (transformers' default; the released files may allow more).
    "qwen3.5-9b": dict(
        vocab_size=248320,
        hidden_size=4096,
        num_layers=32,
        layer_types=every_fourth_layer_attends(32),
        num_kv_heads=4,
        max_seq_len=32768,
        **HYBRID_ATTENTION,
        intermediate_size=12288,
        use_moe=False,
        architecture="qwen3_5",
    ),
    "qwen3.5-35b-a3b": dict(
        vocab_size=248320,
        hidden_size=2048,
        num_layers=40,
        layer_types=every_fourth_layer_attends(40),
        num_kv_heads=2,
        max_seq_len=32768,
        **HYBRID_ATTENTION,
        num_experts=256,
        num_experts_per_tok=8,
        expert_intermediate_size=512,
        shared_expert_intermediate_size=512,
        router_aux_loss_coef=0.001,
        architecture="qwen3_5",
    ),
}
