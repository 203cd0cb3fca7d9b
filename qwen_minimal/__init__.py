"""qwen_minimal: a compact Qwen3-style Mixture-of-Experts language model in PyTorch.

The model, floor by floor (each module imports only from the ones above it):
  errors, config                        settings and the error for bad input
  rmsnorm, rope, attention, kv_cache,   the layers
  feed_forward, moe, loss, sampling
  model                                 QwenLM: the decoder, its FLOPs, generate
  devices, interop                      where it runs; weights in and out of
transformers Around it: data/ (text, tokenizer, token cache, batches), optim,
monitoring, plots, checkpoint, cli, distributed and expert_parallel (training on several
processes, as torchrun starts them), and the command-line tools train, generate, bench,
balance and export (python -m qwen_minimal.<tool> --help). widgets: the book's
interactive figures (pip install "qwen-minimal[book]")."""

from .errors import InputError
from .interop import (
    config_from_transformers,
    from_transformers,
    load_pretrained,
    save_pretrained,
    to_transformers,
)
from .model.config import PRESETS, ModelConfig
from .model.decoder import ModelOutput, QwenLM
from .model.kv_cache import KVCache

__all__ = [
    "PRESETS",
    "InputError",
    "KVCache",
    "ModelConfig",
    "ModelOutput",
    "QwenLM",
    "config_from_transformers",
    "from_transformers",
    "load_pretrained",
    "save_pretrained",
    "to_transformers",
]
