"""Pre-norm transformer block: h = x + Attn(norm(x)); out = h + FFN(norm(h))."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from blt_jax.config import StackConfig
from blt_jax.nn.attention import SelfAttention
from blt_jax.nn.layers import Dtype, FeedForward, RMSNorm
from blt_jax.nn.masks import CausalSpec


class TransformerBlock(nn.Module):
    """One block of a stack.

    Attributes:
      stack: the stack's configuration (heads, FFN width, norm eps).
      depth: index of the block in its stack (init scale).
      dtype / param_dtype: compute and parameter dtypes.
    """

    stack: StackConfig
    depth: int = 0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        mask: CausalSpec,
        rope: tuple[jax.Array, jax.Array],
        prefix: tuple[jax.Array, jax.Array] | None = None,
    ):
        """x [B, N, D], mask ids of N queries / M + N keys, rope (cos, sin) [B, N, K/2] -> [B, N, D].

        With `prefix` (cached keys/values [B, M, H, K] of earlier positions), returns
        ([B, N, D], (keys, values) of x) so the caller can extend its cache.
        """
        eps, dt, pdt = self.stack.norm_eps, self.dtype, self.param_dtype
        h = RMSNorm(eps, dt, pdt, name="attention_norm")(x)
        attn = SelfAttention(self.stack.n_heads, self.depth, dt, pdt, name="attention")(h, mask, rope, prefix)
        attn, kv = attn if prefix is not None else (attn, None)
        x = x + attn
        h = RMSNorm(eps, dt, pdt, name="ffn_norm")(x)
        x = x + FeedForward(self.stack.ffn_hidden, self.depth, dt, pdt, name="feed_forward")(h)
        return x if prefix is None else (x, kv)
