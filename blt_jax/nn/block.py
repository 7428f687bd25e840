"""Pre-norm transformer block: h = x + Attn(norm(x)); out = h + FFN(norm(h)); and the ways a stack
runs its blocks (one after another, with or without a KV cache, or as one `nn.scan`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from blt_jax.config import StackConfig
from blt_jax.nn import axes
from blt_jax.nn.attention import SelfAttention
from blt_jax.nn.cache import KVCache, LayerPrefix, cached_call, finish, layer_prefix
from blt_jax.nn.layers import Dtype, FeedForward, RMSNorm
from blt_jax.nn.masks import CausalSpec
from blt_jax.nn.options import DEFAULT, RunOptions


class TransformerBlock(nn.Module):
    """One block of a stack.

    Attributes:
      stack: the stack's configuration (heads, FFN width, norm eps).
      depth: index of the block in its stack (init scale).
      dtype / param_dtype: compute and parameter dtypes.
      options: how the block runs (`nn.options`).
    """

    stack: StackConfig
    depth: int = 0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    scan_output: bool = False  # return (x, None), the carry/output pair `nn.scan` expects
    options: RunOptions = DEFAULT

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        mask: CausalSpec,
        rope: tuple[jax.Array, jax.Array],
        prefix: LayerPrefix | None = None,
    ):
        """x [B, N, D], mask ids of N queries / M + N keys, rope (cos, sin) [B, N, K/2] -> [B, N, D].

        With `prefix` (the layer's view of a KVCache, `cache.layer_prefix`), returns
        ([B, N, D], the layer's cache update) for `cache.finish`.
        """
        eps, dt, pdt = self.stack.norm_eps, self.dtype, self.param_dtype
        h = RMSNorm(eps, dt, pdt, name="attention_norm")(x)
        st = self.stack
        attn = SelfAttention(
            st.n_heads, self.depth, dt, pdt, st.n_kv_heads, st.head_dim, st.qkv_bias, self.options, name="attention"
        )(h, mask, rope, prefix)
        attn, kv = attn if prefix is not None else (attn, None)
        x = x + attn
        h = RMSNorm(eps, dt, pdt, name="ffn_norm")(x)
        x = x + FeedForward(self.stack.ffn_hidden, self.depth, dt, pdt, name="feed_forward")(h)
        # Batch-sharded residual stream (a no-op outside a mesh + logical-rules context).
        x = nn.with_logical_constraint(x, (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_EMBED))
        if self.scan_output:
            return x, None
        return x if prefix is None else (x, kv)


# Remat policy names -> jax checkpoint policies: the one list of names (the run configuration validates
# `train.remat` against its keys).
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,  # recompute everything in the backward pass
    "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # keep matmul outputs
}


def block_class(remat: str = "none") -> type[nn.Module]:
    """TransformerBlock, rematerialised with the named policy (parameter paths are unchanged)."""
    if remat not in REMAT_POLICIES:
        raise ValueError(f"unknown remat policy {remat!r}; expected one of {', '.join(REMAT_POLICIES)}")
    if remat == "none":
        return TransformerBlock
    return nn.remat(TransformerBlock, policy=REMAT_POLICIES[remat], prevent_cse=True)


def stack_blocks(
    stack: StackConfig, name: str, options: RunOptions, dtype: Dtype, param_dtype: Dtype, prefix: str | None = None
) -> list[nn.Module]:
    """The blocks of a stack, one per layer, rematerialised as the options say for stack `name`.

    Args:
      stack: the stack's configuration.
      name: the stack's name in the options (encoder, latent, decoder, entropy, token).
      options: run-time options.
      dtype / param_dtype: compute and parameter dtypes.
      prefix: parameter names `{prefix}_{i}` (in a compact module), or None (setup attributes).
    """
    block = block_class(options.remat_for(name))
    named = (lambda i: dict(name=f"{prefix}_{i}")) if prefix is not None else (lambda i: {})
    return [block(stack, i, dtype, param_dtype, options=options, **named(i)) for i in range(stack.n_layers)]


def run_blocks(
    blocks: Sequence[Callable],
    x: jax.Array,
    rope: tuple[jax.Array, jax.Array],
    positions: jax.Array,
    docs: jax.Array,
    window: int | None,
    cache: KVCache | None = None,
    store: jax.Array | None = None,
    before: Callable[[int, jax.Array], jax.Array] | None = None,
) -> tuple[list[jax.Array], KVCache | None]:
    """Runs the blocks of a stack one after another, over new positions alone or after a cache.

    The one place a stack's cached call is put together: the cache is planned once for all layers
    (`cache.cached_call`), every block attends to its own layer's prefix and hands back its update, and the
    updates become the new cache (`cache.finish`).

    Args:
      blocks: the stack's TransformerBlocks (any `(x, mask, rope[, prefix])` callables), in order.
      x: [B, T, D] input of the first block.
      rope: (cos, sin) [B, T, K/2] of the new positions.
      positions: int [B, T] positions of the new entries.
      docs: int [B, T] their document ids (None: one document).
      window: the stack's attention window (None = full causal).
      cache: the stack's KVCache (incremental use), or None: the T positions attend to themselves.
      store: bool [B, T], ring caches only: which new positions to keep (default all).
      before: optional `fn(i, x) -> x` applied before block i (the local decoder's cross-attention).

    Returns:
      (outputs of every block [n_layers x [B, T, D]], the updated cache or None).
    """
    outputs, updates = [], []
    if cache is None:
        mask = CausalSpec.self_attention(positions, docs, window)
    else:
        call = cached_call(cache, positions, jnp.zeros_like(positions) if docs is None else docs, window, store)
        mask = call.mask
    for i, block in enumerate(blocks):
        if before is not None:
            x = before(i, x)
        if cache is None:
            x = block(x, mask, rope)
        else:
            x, update = block(x, mask, rope, layer_prefix(cache, i, call))
            updates.append(update)
        outputs.append(x)
    return outputs, (None if cache is None else finish(cache, call, updates))


def scanned_blocks(
    stack: StackConfig, stack_name: str, options: RunOptions, dtype: Dtype, param_dtype: Dtype, name: str = "layers"
):
    """All blocks of a stack as one `nn.scan` over a stacked layer axis (parameters [L, ...] under
    `name`, logical axis `layers` first). Call as `(x, mask, rope) -> x`.

    Compiles one block instead of L (the compile time and program size of deep stacks on pods).
    The stacked layout is `blt_jax.nn.scan.stack_layers` of the per-layer one; initialise the
    per-layer model (its init scales depend on depth) and stack.
    """
    scan = nn.scan(
        block_class(options.remat_for(stack_name)),
        variable_axes={"params": 0},
        split_rngs={"params": True},
        in_axes=(nn.broadcast, nn.broadcast),
        length=stack.n_layers,
        metadata_params={nn.PARTITION_NAME: axes.LAYERS},
    )
    module = scan(stack, 0, dtype, param_dtype, scan_output=True, options=options, name=name)
    return lambda x, mask, rope: module(x, mask, rope)[0]
