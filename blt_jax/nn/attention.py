"""Self- and cross-attention with boolean masks; fully masked query rows give exact zeros
(`softmax.masked_softmax`: empty patches give such rows)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from blt_jax.nn import axes
from blt_jax.nn.cache import LayerPrefix, attend_keys
from blt_jax.nn.layers import Dtype, RMSNorm, depth_factor, param, trunc_normal
from blt_jax.nn.local_attention import banded_attention, use_banded
from blt_jax.nn.masks import CausalSpec
from blt_jax.nn.options import DEFAULT, DENSE, RunOptions
from blt_jax.nn.patch_attention import bytes_attend_slots, slots_attend_bytes
from blt_jax.nn.rope import apply_rope
from blt_jax.nn.softmax import masked_softmax

FUSED_QKV = "wqkv"  # [D, 3, H, K]: wq, wk, wv stacked (`blt_jax.inference.fused`)


def masked_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """Scaled dot-product attention; softmax in fp32.

    Args:
      q: [B, T, H, K] queries.
      k: [B, S, H, K] keys.
      v: [B, S, H, K] values.
      mask: bool [B, T, S] (True = may attend).

    Returns:
      [B, T, H, K] in q's dtype; rows with no visible key are exactly 0.
    """
    scale = q.shape[-1] ** -0.5
    scores = jnp.einsum("bthk,bshk->bhts", q, k, preferred_element_type=jnp.float32) * scale
    probs = masked_softmax(scores, mask[:, None, :, :])
    return jnp.einsum("bhts,bshk->bthk", probs.astype(v.dtype), v)


def ring_attention(q: jax.Array, k: jax.Array, v: jax.Array, spec: CausalSpec) -> jax.Array:
    """Attention of a few queries to a head-major ring cache (incremental decoding).

    Args:
      q: [B, T, H, K] queries.
      k: [B, H, K, S] the ring's keys, v: [B, H, S, K] its values (this step's already written).
      spec: ids of the T queries and the S slots.

    Returns:
      [B, T, H, K].
    """
    scale = q.shape[-1] ** -0.5
    scores = jnp.einsum("bthk,bhks->bhts", q, k, preferred_element_type=jnp.float32) * scale
    probs = masked_softmax(scores, spec.dense()[:, None, :, :])
    return jnp.einsum("bhts,bhsk->bthk", probs.astype(v.dtype), v)


def causal_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, spec: CausalSpec, options: RunOptions = DEFAULT
) -> jax.Array:
    """Causal self-attention from ids, the one dispatch point: the splash kernel when the options ask
    for it and the queries are the keys (no cache: training, evaluation, whole-row prefill); else
    banded when a window makes it worthwhile, dense otherwise (cached decoding steps, ring caches).

    q [B, T, H, K], k/v [B, S, H, K] -> [B, T, H, K].
    """
    if options.splash and spec.ordered and q.shape[1] == k.shape[1]:
        from blt_jax.nn import splash  # Pallas loads only when a kernel runs

        return splash.self_attention(q, k, v, spec, options, documents=not spec.one_document)
    if use_banded(spec, q.shape[1]):
        return banded_attention(q, k, v, spec)
    return masked_attention(q, k, v, spec.dense())


def _projections(
    module: nn.Module,
    dim: int,
    n_heads: int,
    std: float,
    dtype: Dtype,
    n_kv_heads: int | None = None,
    head_dim: int | None = None,
):
    """wq [D, H, K], wk and wv [D, Hkv, K], wo [H, K, D] (Hkv = H and K = D / H unless given)."""
    head_dim = dim // n_heads if head_dim is None else head_dim
    n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
    init = trunc_normal(std)
    names = (axes.EMBED, axes.HEADS, axes.HEAD_DIM)
    wq = param(module, "wq", init, (dim, n_heads, head_dim), names, dtype)
    wk = param(module, "wk", init, (dim, n_kv_heads, head_dim), names, dtype)
    wv = param(module, "wv", init, (dim, n_kv_heads, head_dim), names, dtype)
    wo = param(module, "wo", init, (n_heads, head_dim, dim), (axes.HEADS, axes.HEAD_DIM, axes.EMBED), dtype)
    return wq, wk, wv, wo


def _biases(module: nn.Module, n_heads: int, n_kv_heads: int, head_dim: int, dtype: Dtype):
    """bq [H, K], bk and bv [Hkv, K] (Qwen2's projections carry biases)."""
    names = (axes.HEADS, axes.HEAD_DIM)
    zeros = nn.initializers.zeros
    return (
        param(module, "bq", zeros, (n_heads, head_dim), names, dtype),
        param(module, "bk", zeros, (n_kv_heads, head_dim), names, dtype),
        param(module, "bv", zeros, (n_kv_heads, head_dim), names, dtype),
    )


class SelfAttention(nn.Module):
    """Multi-head self-attention with interleaved RoPE on q and k; optionally grouped-query (fewer
    key/value heads, each serving a group of query heads), with a head width other than D / H, and
    with biases on q, k and v.

    Attributes:
      n_heads: H.
      depth: block index in its stack (init scale).
      dtype / param_dtype: compute and parameter dtypes.
      n_kv_heads: Hkv (None = H); H must be a multiple.
      head_dim: K (None = D / H).
      qkv_bias: q, k and v projections carry biases.
      options: how attention runs (`nn.options`).
    """

    n_heads: int
    depth: int = 0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    n_kv_heads: int | None = None
    head_dim: int | None = None
    qkv_bias: bool = False
    options: RunOptions = DEFAULT

    def _qkv(self, x: jax.Array):
        """q [B, N, H, K], k and v [B, N, Hkv, K] and wo of x [B, N, D]."""
        dim = x.shape[-1]
        if self.has_variable("params", FUSED_QKV):  # decoding layout (`inference.fused`): one product
            wqkv = self.get_variable("params", FUSED_QKV).astype(self.dtype)  # [D, 3, H, K]
            qkv = jnp.einsum("bnd,dthk->bnthk", x, wqkv)
            return qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], self.get_variable("params", "wo")
        std = dim**-0.5 / depth_factor(self.depth)
        wq, wk, wv, wo = _projections(self, dim, self.n_heads, std, self.param_dtype, self.n_kv_heads, self.head_dim)
        q = jnp.einsum("bnd,dhk->bnhk", x, wq.astype(self.dtype))
        k = jnp.einsum("bnd,dhk->bnhk", x, wk.astype(self.dtype))
        v = jnp.einsum("bnd,dhk->bnhk", x, wv.astype(self.dtype))
        if self.qkv_bias:
            bq, bk, bv = _biases(self, self.n_heads, wk.shape[1], wq.shape[2], self.param_dtype)
            q, k, v = q + bq.astype(self.dtype), k + bk.astype(self.dtype), v + bv.astype(self.dtype)
        return q, k, v, wo

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        mask: CausalSpec,
        rope: tuple[jax.Array, jax.Array],
        prefix: LayerPrefix | None = None,
    ):
        """Self-attention over x, optionally also over cached keys/values of earlier positions.

        Args:
          x: [B, N, D].
          mask: ids of the N queries and of the keys attended to (see `cache.cached_call`).
          rope: (cos, sin) [B, N, K/2] of x's positions.
          prefix: this layer's cache view (keys already rotated; H heads: grouped key/value heads are
            stored repeated, so caches and kernels see plain multi-head attention).

        Returns:
          [B, N, D]; with a prefix, ([B, N, D], the layer's cache update (`cache.attend_keys`)).
        """
        x = x.astype(self.dtype)
        q, k, v, wo = self._qkv(x)
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        groups = q.shape[2] // k.shape[2]
        if groups > 1:  # query head h reads key/value head h // groups (transformers' `repeat_kv`)
            k, v = jnp.repeat(k, groups, axis=2), jnp.repeat(v, groups, axis=2)
        if prefix is None:
            out = causal_attention(q, k, v, mask, self.options)
            return jnp.einsum("bnhk,hkd->bnd", out, wo.astype(self.dtype))
        keys, values, update = attend_keys(prefix, k, v)
        # Cached steps keep the dense path: a kernel's blocks do not fit a few queries over a cache.
        out = (
            ring_attention(q, keys, values, mask)
            if prefix.mode == "ring"
            else causal_attention(q, keys, values, mask, DENSE)
        )
        return jnp.einsum("bnhk,hkd->bnd", out, wo.astype(self.dtype)), update


class CrossAttention(nn.Module):
    """Cross-attention between bytes and patch slots: separate RMSNorms on queries and keys/values,
    no RoPE. Returns only the attention output; callers apply the reference's doubled residual.

    Split into `keys_values` and `attend` so incremental decoding can project a patch's slots once
    and reuse them for every byte that reads the patch.

    Attributes:
      dim: D (queries and keys/values share it).
      n_heads: H.
      slots_per_patch: k.
      queries_are_slots: True in the encoder (slots attend their patch's bytes), False in the decoder
        (bytes attend the slots of their decoder patch).
      depth: index among the stack's cross-attention layers (init scale).
      eps: RMSNorm epsilon.
      dtype / param_dtype: compute and parameter dtypes.
    """

    dim: int
    n_heads: int
    slots_per_patch: int
    queries_are_slots: bool
    depth: int = 0
    eps: float = 1e-5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        std = self.dim**-0.5 / depth_factor(self.depth)
        self.norm_q = RMSNorm(self.eps, self.dtype, self.param_dtype)
        self.norm_kv = RMSNorm(self.eps, self.dtype, self.param_dtype)
        self.wq, self.wk, self.wv, self.wo = _projections(self, self.dim, self.n_heads, std, self.param_dtype)

    def keys_values(self, kv: jax.Array) -> tuple[jax.Array, jax.Array]:
        """kv [B, S, D] -> (keys, values) [B, S, H, K]."""
        xkv = self.norm_kv(kv)
        k = jnp.einsum("bnd,dhk->bnhk", xkv, self.wk.astype(self.dtype))
        v = jnp.einsum("bnd,dhk->bnhk", xkv, self.wv.astype(self.dtype))
        return k, v

    def attend(self, x: jax.Array, k: jax.Array, v: jax.Array, patch_ids: jax.Array) -> jax.Array:
        """Queries from x attend to projected keys/values.

        Args:
          x: queries, [B, P*k, D] slots (encoder) or [B, N, D] bytes (decoder).
          k, v: [B, S, H, K] from `keys_values`.
          patch_ids: int [B, N]: the patch of each byte (encoder) or the patch each byte reads
            (decoder, q(i) = p(i + 1) - 1).

        Returns:
          [B, T, D] like x.
        """
        q = jnp.einsum("bnd,dhk->bnhk", self.norm_q(x), self.wq.astype(self.dtype))
        if self.queries_are_slots:
            out = slots_attend_bytes(q, k, v, patch_ids, self.slots_per_patch)
        else:
            out = bytes_attend_slots(q, k, v, patch_ids, self.slots_per_patch)
        return jnp.einsum("bnhk,hkd->bnd", out, self.wo.astype(self.dtype))

    def __call__(self, x: jax.Array, kv: jax.Array, patch_ids: jax.Array) -> jax.Array:
        """Cross-attention of x [B, T, D] to kv [B, S, D] (slots/bytes as in `attend`). -> [B, T, D]."""
        return self.attend(x, *self.keys_values(kv), patch_ids)
