"""blt_jax: the Byte Latent Transformer (arXiv 2412.09871) in JAX/Flax, TPU-first.

Public API:
  from_pretrained(path) -> BLTModel    (our format, HF `BltForCausalLM` layout, or Meta's layout)
  BLTModel.logits / .entropies / .patch_lengths / .generate
  BLTConfig, EntropyLMConfig, StackConfig, HashConfig, PatchingConfig, ConfigError
  tokenizer.encode / tokenizer.decode
"""

from blt_jax import tokenizer
from blt_jax.api import BLTModel, from_pretrained
from blt_jax.config import (
    BLTConfig,
    ConfigError,
    EntropyLMConfig,
    HashConfig,
    PatchingConfig,
    StackConfig,
)

__version__ = "0.1.0"

__all__ = [
    "BLTConfig",
    "BLTModel",
    "ConfigError",
    "EntropyLMConfig",
    "HashConfig",
    "PatchingConfig",
    "StackConfig",
    "from_pretrained",
    "tokenizer",
]
