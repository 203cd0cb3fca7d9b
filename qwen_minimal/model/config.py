"""Model configuration: one dataclass, a few named presets, and checks that say what to
fix."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..errors import InputError, check_at_least, check_known_fields

LOAD_BALANCING = ("joint", "per_layer", "global_batch", "bias")


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
}
