"""qwen_minimal: a compact Qwen3-style Mixture-of-Experts language model in PyTorch."""
from .config import PRESETS, ModelConfig
from .kv_cache import KVCache
from .model import ModelOutput, QwenLM
from .interop import config_from_transformers, from_transformers, load_pretrained

__all__ = ["PRESETS", "ModelConfig", "KVCache", "ModelOutput", "QwenLM",
           "config_from_transformers", "from_transformers", "load_pretrained"]
