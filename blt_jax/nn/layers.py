"""Basic layers shared by every stack: initialisers, RMSNorm, dense maps, SwiGLU FFN, embeddings
(RoPE is `nn.rope`).

All parameters are created through `param`, which attaches logical axis names; all computation is
pure over an explicit params tree (Flax Linen init/apply).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from blt_jax.nn import axes

Dtype = Any
Initializer = Any


def trunc_normal(std: float) -> Initializer:
    """Truncated normal at +-3 sigma, sigma of the untruncated law (torch's `trunc_normal_`)."""
    return jax.nn.initializers.truncated_normal(stddev=std, lower=-3.0, upper=3.0)


def depth_factor(depth: int) -> float:
    """The reference's "current_depth" init factor: sqrt(2 * (depth + 1))."""
    return float(np.sqrt(2.0 * (depth + 1)))


def param(
    module: nn.Module,
    name: str,
    init: Initializer,
    shape: Sequence[int],
    names: Sequence[str],
    dtype: Dtype,
) -> jax.Array:
    """Declares a parameter annotated with logical axis `names` (one per dimension)."""
    if len(names) != len(shape):
        raise ValueError(f"{name}: {len(names)} axis names for a rank-{len(shape)} parameter")
    return module.param(name, nn.with_logical_partitioning(init, tuple(names)), tuple(shape), dtype)


class RMSNorm(nn.Module):
    """RMSNorm with a learnable scale and no bias; statistics in fp32.

    Attributes:
      eps: added to the mean square.
      dtype: output dtype.
      param_dtype: dtype of the scale.
    """

    eps: float = 1e-5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """[..., D] -> [..., D]."""
        scale = param(self, "scale", nn.initializers.ones, (x.shape[-1],), (axes.NORM,), self.param_dtype)
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (y * scale.astype(jnp.float32)).astype(self.dtype)


class Dense(nn.Module):
    """Bias-free linear map [..., Din] -> [..., Dout] with a [Din, Dout] kernel.

    Attributes:
      features: Dout.
      names: logical axis names of the kernel (Din, Dout).
      std: init std (truncated normal at +-3 sigma).
      dtype / param_dtype: compute and parameter dtypes.
    """

    features: int
    names: tuple[str, str]
    std: float
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = param(
            self, "kernel", trunc_normal(self.std), (x.shape[-1], self.features), self.names, self.param_dtype
        )
        return jnp.einsum("...d,df->...f", x.astype(self.dtype), kernel.astype(self.dtype))


FUSED_FFN_MIN_TOKENS = 64  # tokens per call from which FeedForward fuses w1 and w3 into one matmul
FUSED_W13 = "w13"  # [D, 2, F]: w1, w3 stacked (`blt_jax.inference.fused`)
FUSED_W2T = "w2t"  # [D, F]: w2 transposed, stored with FUSED_W13 (`blt_jax.inference.fused`)


class FeedForward(nn.Module):
    """SwiGLU FFN: w2(silu(w1 x) * w3 x).

    Attributes:
      hidden: F.
      depth: index of the block within its stack (init scale).
      dtype / param_dtype: compute and parameter dtypes.
    """

    hidden: int
    depth: int = 0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """[B, N, D] -> [B, N, D]."""
        dim = x.shape[-1]
        x = x.astype(self.dtype)
        if self.has_variable("params", FUSED_W13):  # decoding layout (`inference.fused`), made once
            w13 = self.get_variable("params", FUSED_W13).astype(self.dtype)  # [D, 2, F]
            w2t = self.get_variable("params", FUSED_W2T).astype(self.dtype)  # [D, F]
            return jnp.einsum("bnf,df->bnd", _gated(jnp.einsum("bnd,dtf->bntf", x, w13)), w2t)
        factor = depth_factor(self.depth)
        in_init = trunc_normal(dim**-0.5 / factor)
        out_init = trunc_normal(self.hidden**-0.5 / factor)
        w1 = param(self, "w1", in_init, (dim, self.hidden), (axes.EMBED, axes.MLP), self.param_dtype)
        w3 = param(self, "w3", in_init, (dim, self.hidden), (axes.EMBED, axes.MLP), self.param_dtype)
        w2 = param(self, "w2", out_init, (self.hidden, dim), (axes.MLP, axes.EMBED), self.param_dtype)
        # One matmul for both input projections ([D, 2, F]) is cheaper than two on XLA:CPU, same
        # math. Stacking here copies the weights every call, so only for many tokens; a few tokens
        # (incremental decoding) use two products unless the layout was stacked beforehand.
        if x.shape[0] * x.shape[1] >= FUSED_FFN_MIN_TOKENS:
            hidden = _gated(jnp.einsum("bnd,dtf->bntf", x, jnp.stack([w1, w3], axis=1).astype(self.dtype)))
        else:
            gate = jnp.einsum("bnd,df->bnf", x, w1.astype(self.dtype))
            hidden = nn.silu(gate) * jnp.einsum("bnd,df->bnf", x, w3.astype(self.dtype))
        return jnp.einsum("bnf,fd->bnd", hidden, w2.astype(self.dtype))


def _gated(gate_up: jax.Array) -> jax.Array:
    """SwiGLU's silu(gate) * up from the stacked products [B, N, 2, F] -> [B, N, F]."""
    return nn.silu(gate_up[:, :, 0]) * gate_up[:, :, 1]


class Embed(nn.Module):
    """Token embedding table [V, D] (logical axes vocab, embed).

    Attributes:
      num_embeddings: V.
      features: D.
      std: init std.
      dtype / param_dtype: output and parameter dtypes.
    """

    num_embeddings: int
    features: int
    std: float
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, ids: jax.Array) -> jax.Array:
        """int [B, N] -> [B, N, D]."""
        table = param(
            self,
            "embedding",
            trunc_normal(self.std),
            (self.num_embeddings, self.features),
            (axes.VOCAB, axes.EMBED),
            self.param_dtype,
        )
        return jnp.take(table, ids, axis=0).astype(self.dtype)

    def attend(self, x: jax.Array) -> jax.Array:
        """The table as an output head (tied embeddings): [..., D] -> [..., V]."""
        table = nn.meta.unbox(self.get_variable("params", "embedding"))
        return jnp.einsum("...d,vd->...v", x.astype(self.dtype), table.astype(self.dtype))
