"""A key/value cache preallocated to its maximum length and written in place (as in
gpt-fast)."""

import torch

from ..errors import InputError


def kv_cache_bytes(
    config, length: int, batch_size: int = 1, bytes_per_element: int = 2
) -> int:
    """Memory of the keys and values of `batch_size` sequences of `length` tokens for a
    model of `config` (a ModelConfig): two tensors per layer of batch * num_kv_heads *
    length * head_dim numbers."""
    return (
        2
        * config.num_layers
        * batch_size
        * config.num_kv_heads
        * length
        * config.head_dim
        * bytes_per_element
    )


class KVCache:
    """Keys and values of every layer for a batch of sequences that advance together.

    k[layer] and v[layer] have shape [batch, num_kv_heads, max_len, head_dim]; `length`
    positions are filled. One tensor per layer rather than one for all layers:
    torch.compile then writes a step's keys into its layer's tensor in place, where with
    one shared tensor its compiled step rewrote every position each step.
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
    ):
        shape = (batch_size, num_kv_heads, max_len, head_dim)
        self.k = [
            torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)
        ]
        self.v = [
            torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)
        ]
        self.length = 0

    @classmethod
    def for_model(cls, model, batch_size: int, max_len: int | None = None) -> "KVCache":
        """A cache shaped for `model` (default length: the model's max_seq_len), on its
        device and dtype."""
        c = model.config
        max_len = c.max_seq_len if max_len is None else max_len
        if max_len > c.max_seq_len:
            raise InputError(
                f"cache length {max_len} exceeds the model's "
                f"max_seq_len={c.max_seq_len}"
            )
        p = model.embed.weight
        return cls(
            c.num_layers,
            batch_size,
            c.num_kv_heads,
            max_len,
            c.head_dim,
            p.dtype,
            p.device,
        )

    @property
    def max_len(self) -> int:
        return self.k[0].shape[2]

    def check_room(self, batch_size: int, new_tokens: int) -> None:
        if batch_size != self.k[0].shape[0]:
            raise InputError(
                f"input batch {batch_size} does not match the cache's batch "
                f"{self.k[0].shape[0]}"
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
        return sum(t.numel() * t.element_size() for t in self.k + self.v)
