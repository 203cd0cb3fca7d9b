"""The Qwen3-style decoder: pre-norm blocks of a token mixer (softmax attention, or in
the Qwen3-Next / Qwen3.5 hybrids Gated DeltaNet linear attention) and a MoE (or dense
SwiGLU) feed-forward."""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import InputError
from .attention import Attention
from .balancing import model_loss
from .config import ModelConfig
from .feed_forward import SwiGLU
from .gated_deltanet import GatedDeltaNet
from .kv_cache import KVCache
from .loss import cross_entropy
from .moe import MoE, Routing
from .rmsnorm import RMSNorm
from .rope import RotaryEmbedding
from .sampling import check_prompt, sampler


@dataclass
class ModelOutput:
    logits: torch.Tensor  # [B, T, V]
    # the config's load-balancing loss (None: dense model, or bias balancing)
    aux_loss: torch.Tensor | None
    loss: torch.Tensor | None = (
        None  # lm_loss + router_aux_loss_coef * aux_loss, when targets are given
    )
    lm_loss: torch.Tensor | None = None  # cross-entropy of the next-token predictions
    routing: list[Routing] | None = (
        None  # per MoE layer: router logits, choices, token counts
    )

    @property
    def tokens_per_expert(self) -> torch.Tensor | None:
        """[num_layers, E] assignments each expert received in this forward pass."""
        return (
            None
            if self.routing is None
            else torch.stack([r.tokens_per_expert for r in self.routing])
        )


class Block(nn.Module):
    """x + attn(norm(x)), then x + ffn(norm(x)). `attn` is the layer's token mixer, as
    config.layer_types says: softmax Attention, or a GatedDeltaNet (linear attention)
    that reads no positions and keeps a fixed-size state instead of keys and values.
    `ffn` is the MoE, or a dense SwiGLU in a dense model and at mlp_only_layers."""

    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx  # which state of a KVCache this layer owns
        eps, zero_centered = config.rms_norm_eps, config.zero_centered_norm
        self.attn_norm = RMSNorm(config.hidden_size, eps, zero_centered)
        if config.layer_kinds[layer_idx] == "linear_attention":
            self.attn = GatedDeltaNet(
                config.hidden_size,
                config.linear_num_key_heads,
                config.linear_num_value_heads,
                config.linear_key_head_dim,
                config.linear_value_head_dim,
                config.linear_conv_kernel_dim,
                eps,
            )
        else:
            self.attn = Attention(config, layer_idx)
        self.ffn_norm = RMSNorm(config.hidden_size, eps, zero_centered)
        self.ffn = (
            MoE(config)
            if config.is_moe_layer(layer_idx)
            else SwiGLU(config.hidden_size, config.intermediate_size)
        )

    def forward(self, x, cos, sin, cache=None) -> tuple[torch.Tensor, Routing | None]:
        h = self.attn_norm(x)
        if isinstance(self.attn, GatedDeltaNet):
            state = None if cache is None else cache.linear_states[self.layer_idx]
            x = x + self.attn(h, state)
        else:
            x = x + self.attn(h, cos, sin, cache)
        if isinstance(self.ffn, MoE):
            y, routing = self.ffn(self.ffn_norm(x))
            return x + y, routing
        return x + self.ffn(self.ffn_norm(x)), None


class QwenLM(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.num_layers))
        self.norm = RMSNorm(
            config.hidden_size, config.rms_norm_eps, config.zero_centered_norm
        )
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self.rope = RotaryEmbedding(
            config.rotary_dim, config.max_seq_len, config.rope_theta
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Normal(0, init_std) for every matrix (and convolution filter), a gain of 1
        for every norm (RMSNorm.reset_parameters), zeros for biases, and each Gated
        DeltaNet layer's decay parameters as that layer draws them."""
        for p in self.parameters():
            if p.dim() >= 2:
                nn.init.normal_(p, mean=0.0, std=self.config.init_std)
        for module in self.modules():
            if isinstance(module, RMSNorm):
                module.reset_parameters()
            elif isinstance(module, GatedDeltaNet):
                module.reset_decay_parameters()
            elif isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    def num_parameters(
        self, active: bool = False, include_embedding: bool = True
    ) -> int:
        """Parameter count; active=True counts only the num_experts_per_tok of
        num_experts experts a token uses."""
        total = 0
        for name, p in self.named_parameters():  # a tied weight is listed once
            if not include_embedding and name in ("embed.weight", "lm_head.weight"):
                continue
            total += self._active_numel(name, p) if active else p.numel()
        return total

    def flops_per_token(self, context: int, training: bool = False) -> int:
        """Floating-point operations of the matrix products for one token that attends
        to `context` positions.

        Forward: 2 per active matrix weight (a multiply and an add: attention
        projections, the router, the num_experts_per_tok experts a token visits, the LM
        head; not the embedding lookup or the norm gains) plus the attention scores q
        k^T and the weighted sum of values, 2 * 2 * heads * head_dim per position, in
        every full-attention layer. A linear-attention layer reads no positions: per
        token it decays its state, predicts from it, writes the correction and reads it
        with the query, about 2 * 3 value_heads * key_dim * value_dim, whatever the
        context (the recurrent form's count; the chunked form's is of the same order).
        training=True: forward and backward, three times the forward (the backward
        computes two products per forward one), the count of the PaLM paper's model
        FLOPs utilisation.
        """
        c = self.config
        weights = sum(
            self._active_numel(name, p)
            for name, p in self.named_parameters()
            if p.dim() >= 2 and not (name == "embed.weight" and not c.tie_embeddings)
        )
        attention = len(c.full_attention_layers) * 4 * c.num_heads * c.head_dim
        linear_state = len(c.linear_attention_layers) * (
            6
            * c.linear_num_value_heads
            * c.linear_key_head_dim
            * c.linear_value_head_dim
        )
        forward = 2 * weights + attention * context + linear_state
        return 3 * forward if training else forward

    def _active_numel(self, name: str, p: nn.Parameter) -> int:
        """Entries of p that one token uses: all, except for the experts, of which it
        uses k of E."""
        if ".experts." in name:
            return (
                p.numel() * self.config.num_experts_per_tok // self.config.num_experts
            )
        return p.numel()

    def forward(
        self,
        input_ids: torch.Tensor,
        targets: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> ModelOutput:
        """input_ids: [B, T]. targets: [B, T] next-token ids (-100 is ignored). With a
        cache, the tokens continue the cached sequence; their keys and values are
        appended to it."""
        x, routing = self.hidden_states(input_ids, cache)
        logits = self.lm_head(x)
        aux_loss = model_loss(self.config, routing) if routing else None
        out = ModelOutput(logits, aux_loss, routing=routing or None)
        if targets is not None:
            out.lm_loss = cross_entropy(x, self.lm_head.weight, logits, targets)
            out.loss = (
                out.lm_loss
                if aux_loss is None
                else out.lm_loss + self.config.router_aux_loss_coef * aux_loss
            )
        return out

    def hidden_states(
        self, input_ids: torch.Tensor, cache: KVCache | None = None
    ) -> tuple[torch.Tensor, list[Routing]]:
        """The decoder without its output projection: final-norm hidden states [B, T,
        hidden_size] and the routing of every MoE layer (empty for the dense model)."""
        B, T = input_ids.shape
        start = 0
        if cache is not None:
            cache.check_room(B, T)
            start = cache.length
        cos, sin = self.rope(start, T)
        x = self.embed(input_ids)
        routing = []
        for block in self.blocks:
            x, r = block(x, cos, sin, cache)
            if r is not None:
                routing.append(r)
        if cache is not None:
            cache.advance(T)
        return self.norm(x), routing

    def next_token_logits(
        self, input_ids: torch.Tensor, cache: KVCache | None = None
    ) -> torch.Tensor:
        """[B, V] logits of the last position only: all that a decoding step needs (no
        losses, no routing)."""
        x, _ = self.hidden_states(input_ids, cache)
        return self.lm_head(x[:, -1])

    def generate(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        use_cache: bool = True,
        eos_token_id: int | None = None,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        compile: bool = False,
        on_token: Callable[[torch.Tensor], None] | None = None,
    ) -> torch.Tensor:
        """Prompt [B, T] -> prompt followed by up to max_new_tokens tokens.
        temperature=0 is greedy.

        The B prompts of a batch share one length T: there is no padding, so prompts of
        different lengths are generated separately (one call each).

        A row that produced eos_token_id keeps emitting it; generation stops once every
        row has. compile=True runs the one-token steps after the prompt through
        torch.compile (needs use_cache). on_token, if given, is called with each new
        token [B, 1] as soon as it is chosen (to stream or time).
        """
        check_prompt(input_ids, self.config.vocab_size, max_new_tokens)
        if seed is not None:
            generator = torch.Generator(input_ids.device).manual_seed(seed)
        sample = sampler(temperature, top_k, top_p, generator)
        B, T = input_ids.shape
        total = T + max_new_tokens
        if total > self.config.max_seq_len:
            raise InputError(
                f"prompt ({T}) + max_new_tokens ({max_new_tokens}) = {total} exceeds "
                f"max_seq_len={self.config.max_seq_len}: shorten one of them"
            )
        if compile and not use_cache:
            raise InputError(
                "compile=True compiles the one-token steps of cached decoding: set "
                "use_cache=True"
            )
        decoding_step = (
            compiled_decoding_step(self) if compile else self.next_token_logits
        )
        # inference_mode is no_grad without autograd's per-tensor bookkeeping: less
        # overhead per operation.
        with torch.inference_mode():
            cache = KVCache.for_model(self, B, total) if use_cache else None
            tokens, finished = (
                input_ids,
                torch.zeros(B, dtype=torch.bool, device=input_ids.device),
            )
            token = None  # the newest token, fed to the next cached step
            for i in range(max_new_tokens):
                if not use_cache:  # the whole sequence again, every step
                    logits = self.next_token_logits(tokens)
                elif i == 0:  # the prompt, once, filling the cache
                    logits = self.next_token_logits(input_ids, cache)
                else:  # then only the newest token, reading the rest from the cache
                    logits = decoding_step(token, cache)
                token = sample(logits)
                if eos_token_id is not None:
                    token = token.masked_fill(finished[:, None], eos_token_id)
                    finished |= token[:, 0] == eos_token_id
                tokens = torch.cat([tokens, token], dim=1)
                if on_token is not None:
                    on_token(token)
                if eos_token_id is not None and finished.all():
                    break
        # an ordinary tensor: inference-mode tensors cannot enter a later autograd graph
        return tokens.clone()


def compiled_decoding_step(model: QwenLM):
    """model.next_token_logits through torch.compile, as gpt-fast compiles its
    decode_one_token.

    A one-token step is a few hundred small operations, each costing more in dispatch
    than in arithmetic; compiled, they become a few dozen fused loops. fullgraph=True:
    the whole step is one graph or an error. dynamic=True: the cache length is a symbol,
    so one compilation serves every position. On CPU the compiled step also calls its
    kernels from C++ (cpp_wrapper) rather than from Python, which saves the Python
    overhead of every kernel launch, a large part of a small model's step. torch.compile
    keeps its compilations with the function's code, so later calls, for this model or
    another of the same shapes, reuse them.
    """
    on_cpu = model.lm_head.weight.device.type == "cpu"
    step = torch.compile(
        model.next_token_logits,
        dynamic=True,
        fullgraph=True,
        options={"cpp_wrapper": True} if on_cpu else None,
    )
    # The MoE looks up its chosen experts with .tolist(): traced as data (unknown
    # integers), not a graph break. The setting is applied around every call (cheap next
    # to a step) because any call may have to compile.
    return torch._dynamo.config.patch(capture_scalar_outputs=True)(step)
