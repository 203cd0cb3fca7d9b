"""The model's building blocks, each module importing only from those before it: config;
rmsnorm, rope, kv_cache, attention; feed_forward, moe, balancing; loss, sampling; and
decoder, which assembles them into QwenLM."""

from .config import LOAD_BALANCING, PRESETS, ModelConfig
from .decoder import ModelOutput, QwenLM
from .kv_cache import KVCache

__all__ = [
    "LOAD_BALANCING",
    "PRESETS",
    "KVCache",
    "ModelConfig",
    "ModelOutput",
    "QwenLM",
]
