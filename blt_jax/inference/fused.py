"""Decoding layout of the parameters: q/k/v and FFN input projections stacked, FFN output transposed.

A batch-1 decoding step is a chain of matrix-vector products that read every weight once. On XLA:CPU
each product of these small matrices (256 x 256 .. 512 x 1536) carries a fixed cost of its own, so
three products over wq, wk, wv cost more than one over the same bytes stacked as [D, 3, H, K] (and
two over w1, w3 more than one over [D, 2, F]). And a vector times a tall matrix (more rows than
columns, like the FFN's w2 [F, D]) streams its weights faster when they are stored transposed,
[D, F], and contracted on their last axis: 46 vs 66 us for [768, 256], 96 vs 186 us for [1536, 512]
(wide matrices are the other way round, so only w2 is transposed). Doing either inside the step
would copy the weights every byte; `fuse_projections` does it once, before decoding, and
`SelfAttention` / `FeedForward` use that form when they find it. The math is unchanged (same
products, same accumulation per output), only the number and shape of the calls. The generator
applies it on CPU only: it keeps a second copy of every projection next to the originals, which on
a TPU would cost device memory without a measured gain.

Only self-attention (`attention`) and FFN (`feed_forward`) sub-trees of unstacked blocks are changed;
cross-attention keeps its own projections (keys/values of a patch are computed once per patch).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

from blt_jax.nn.attention import FUSED_QKV
from blt_jax.nn.layers import FUSED_W2T, FUSED_W13


def _fuse_node(name: str, node: Mapping) -> dict:
    # Grouped-query attention (fewer key/value heads than query heads) keeps its three products.
    if (
        name == "attention"
        and set(node) == {"wq", "wk", "wv", "wo"}
        and jnp.ndim(node["wq"]) == 3
        and jnp.shape(node["wk"]) == jnp.shape(node["wq"])
    ):
        return {FUSED_QKV: jnp.stack([node["wq"], node["wk"], node["wv"]], axis=1), "wo": node["wo"]}
    if name == "feed_forward" and set(node) == {"w1", "w2", "w3"} and jnp.ndim(node["w1"]) == 2:
        return {FUSED_W13: jnp.stack([node["w1"], node["w3"]], axis=1), FUSED_W2T: jnp.transpose(node["w2"])}
    return {key: _fuse_node(key, value) if isinstance(value, Mapping) else value for key, value in node.items()}


def fuse_projections(params: Any) -> Any:
    """The decoding layout of a BLT or entropy-LM parameter tree (a new tree; the input is unchanged).

    `attention` {wq, wk, wv [D, H, K], wo} -> {wqkv [D, 3, H, K], wo}; `feed_forward` {w1, w3 [D, F],
    w2 [F, D]} -> {w13 [D, 2, F], w2t [D, F]}. Scanned stacks (a leading layer axis) and trees already
    fused are returned as they are. Training code keeps the reference layout; use this only to run the model.
    """
    if params is None:
        return None
    return _fuse_node("", params)


def decoding_layout(params: Any, entropy_params: Any) -> tuple[Any, Any]:
    """The trees decoding runs on: `fuse_projections` of both on XLA:CPU (measured to pay there), the
    trees as they are on an accelerator (a second copy of every projection, for no measured gain)."""
    import jax

    if jax.default_backend() != "cpu":
        return params, entropy_params
    return fuse_projections(params), fuse_projections(entropy_params)
