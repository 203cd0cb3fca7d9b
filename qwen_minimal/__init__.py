"""qwen_minimal: a compact Qwen3-style Mixture-of-Experts language model in PyTorch.

Its folders are its layers; each module imports only from the ones below it
(tests/test_package_layers.py):

  errors, files, devices  the error for bad input, safe writes, where it runs
  model/                  the building blocks (config, rmsnorm, rope, kv_cache,
                          attention, feed_forward, moe, balancing, loss, sampling) and
                          the decoder, QwenLM, with its FLOPs and generate
  interop                 weights in and out of transformers
  data/                   text, tokenizer, token-id cache, batches
  training/               TrainConfig, the loop, AdamW, monitoring, plots, checkpoints,
                          training on several processes
  cli/                    the tools: python -m qwen_minimal TOOL --help
  book/                   what the chapters share, and their interactive figures
                          (pip install "qwen-minimal[book]")
"""

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
