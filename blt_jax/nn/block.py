"""Pre-norm transformer block: h = x + Attn(norm(x)); out = h + FFN(norm(h))."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from blt_jax.config import StackConfig
from blt_jax.nn import axes
from blt_jax.nn.attention import SelfAttention
from blt_jax.nn.cache import LayerPrefix
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
    scan_output: bool = False  # return (x, None), the carry/output pair `nn.scan` expects

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
        attn = SelfAttention(self.stack.n_heads, self.depth, dt, pdt, name="attention")(h, mask, rope, prefix)
        attn, kv = attn if prefix is not None else (attn, None)
        x = x + attn
        h = RMSNorm(eps, dt, pdt, name="ffn_norm")(x)
        x = x + FeedForward(self.stack.ffn_hidden, self.depth, dt, pdt, name="feed_forward")(h)
        # Batch-sharded residual stream (a no-op outside a mesh + logical-rules context).
        x = nn.with_logical_constraint(x, (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_EMBED))
        if self.scan_output:
            return x, None
        return x if prefix is None else (x, kv)


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


def stack_remat(remat: dict[str, str] | None, stack: str) -> str:
    """The policy of one stack from a {stack or "all": policy} mapping."""
    remat = remat or {}
    return remat.get(stack, remat.get("all", "none"))


def scanned_blocks(stack: StackConfig, dtype: Dtype, param_dtype: Dtype, remat: str = "none", name: str = "layers"):
    """All blocks of a stack as one `nn.scan` over a stacked layer axis (parameters [L, ...] under
    `name`, logical axis `layers` first). Call as `(x, mask, rope) -> x`.

    Compiles one block instead of L (the compile time and program size of deep stacks on pods).
    The stacked layout is `blt_jax.nn.scan.stack_layers` of the per-layer one; initialise the
    per-layer model (its init scales depend on depth) and stack.
    """
    scan = nn.scan(
        block_class(remat),
        variable_axes={"params": 0},
        split_rngs={"params": True},
        in_axes=(nn.broadcast, nn.broadcast),
        length=stack.n_layers,
        metadata_params={nn.PARTITION_NAME: axes.LAYERS},
    )
    module = scan(stack, 0, dtype, param_dtype, scan_output=True, name=name)
    return lambda x, mask, rope: module(x, mask, rope)[0]
