"""A key/value cache preallocated to its maximum length and written in place (as in
gpt-fast)."""

import torch

from ..errors import InputError


def kv_cache_bytes(
    config, length: int, batch_size: int = 1, bytes_per_element: int = 2
) -> int:
    """Memory of the keys and values of `batch_size` sequences of `length` tokens for a
    model of `config` (a ModelConfig): two tensors per full-attention layer of batch *
    num_kv_heads * length * head_dim numbers. (A hybrid's linear-attention layers keep a
    fixed-size state instead, whatever the length: KVCache.nbytes counts it.)"""
    return (
        2
        * len(config.full_attention_layers)
        * batch_size
        * config.num_kv_heads
        * length
        * config.head_dim
        * bytes_per_element
    )


class KVCache:
    """What the layers carry from one forward pass to the next, for a batch of sequences
    that advance together.

    k[layer] and v[layer] have shape [batch, num_kv_heads, max_len, head_dim]; `length`
    positions are filled. One tensor per layer rather than one for all layers:
    torch.compile then writes a step's keys into its layer's tensor in place, where with
    one shared tensor its compiled step rewrote every position each step.

    In a hybrid (Qwen3-Next, Qwen3.5) only the layers in `attention_layers` attend and
    keep keys and values; the others are Gated DeltaNet layers, whose k and v are None
    and whose state of fixed size, a LinearAttentionState, is linear_states[layer]
    (for_model allocates them). So the cache grows with the context only in the
    attention layers.
    """

    def __init__(
        self,
        num_layers: int,
        batch_size: int,
        num_kv_heads: int,
        max_len: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        attention_layers: list[int] | None = None,
    ):
        if attention_layers is None:
            attention_layers = range(num_layers)
        shape = (batch_size, num_kv_heads, max_len, head_dim)

        def per_attention_layer() -> list[torch.Tensor | None]:
            return [
                torch.zeros(shape, dtype=dtype, device=device)
                if layer in attention_layers
                else None
                for layer in range(num_layers)
            ]

        self.k, self.v = per_attention_layer(), per_attention_layer()
        self.linear_states: list = [None] * num_layers
        self.batch_size, self.max_len = batch_size, max_len
        self.length = 0

    @classmethod
    def for_model(cls, model, batch_size: int, max_len: int | None = None) -> "KVCache":
        """A cache shaped for `model` (default length: the model's max_seq_len), on its
        device and dtype, with a zero state for each of its linear-attention layers."""
        c = model.config
        max_len = c.max_seq_len if max_len is None else max_len
        if max_len > c.max_seq_len:
            raise InputError(
                f"cache length {max_len} exceeds the model's "
                f"max_seq_len={c.max_seq_len}"
            )
        p = model.embed.weight
        cache = cls(
            c.num_layers,
            batch_size,
            c.num_kv_heads,
            max_len,
            c.head_dim,
            p.dtype,
            p.device,
            c.full_attention_layers,
        )
        for layer in c.linear_attention_layers:
            cache.linear_states[layer] = model.blocks[layer].attn.empty_state(
                batch_size, p.device, p.dtype
            )
        return cache

    def check_room(self, batch_size: int, new_tokens: int) -> None:
        if batch_size != self.batch_size:
            raise InputError(
                f"input batch {batch_size} does not match the cache's batch "
                f"{self.batch_size}"
            )
        if self.length + new_tokens > self.max_len:
            raise InputError(
                f"sequence length {self.length + new_tokens} exceeds the KV cache "
                "length "
                f"{self.max_len}: allocate a longer cache (max_len) or generate "
                "fewer tokens"
            )

    def update(
        self, layer: int, k_new: torch.Tensor, v_new: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this step's keys/values ([B, H_kv, T, D]) at the current position;
        return all so far."""
        k, v, new = self.k[layer], self.v[layer], k_new.shape[2]
        # narrow(dim, start, length): positions length .. end - 1
        k.narrow(2, self.length, new).copy_(k_new)
        v.narrow(2, self.length, new).copy_(v_new)
        return k.narrow(2, 0, self.length + new), v.narrow(2, 0, self.length + new)

    def advance(self, new_tokens: int) -> None:
        """Called once per forward pass, after every layer has written its keys and
        values."""
        self.length += new_tokens

    def nbytes(self) -> int:
        """Bytes of every tensor held: keys, values and linear-attention states."""
        tensors = [t for t in self.k + self.v if t is not None]
        for state in self.linear_states:
            if state is not None:
                tensors += [state.conv_state, state.recurrent_state]
        return sum(t.numel() * t.element_size() for t in tensors)
