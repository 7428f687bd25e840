"""Pallas splash attention (`jax.experimental.pallas.ops.tpu.splash_attention`): the one owner of the
kernels and their wrappers; `nn.attention.causal_attention` decides when they run.

Splash skips every block of the score matrix its mask leaves empty, so causal attention costs about
half of dense and a window W about T * W, and it never materialises scores: on a TPU it is what makes
long rows and large batches fit. Off TPU the same kernels run in Pallas's interpret mode (tests).

Self-attention without a cache (training, evaluation, prefill of a whole row) is index-based: query i
sees key j iff j <= i, i - j < W (a window) and both lie in the same document. That equals our
id-based mask (`masks.CausalSpec`) because positions increase by one per index within a document.
Documents become the kernel's segment ids, the causal window its `LocalMask` (`CausalMask` without a
window). Rows are padded to a multiple of the block sizes at the end: padded keys lie after every real
query, so causality hides them, and padding gets a segment of its own.

Under a device mesh the kernel runs per shard (`shard_map`): rows over the batch axes, heads over the
tensor axis, as the logical rules place them. Every head shares one mask, so each shard builds its
own kernel for its local heads and no mask needs sharding.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import splash_attention as splash

from blt_jax.nn import axes
from blt_jax.nn.masks import CausalSpec
from blt_jax.nn.options import RunOptions

LANES = 128  # TPU vector lanes: sequence blocks are multiples of it
PAD_SEGMENT = -1  # the segment of padding (documents are numbered from 0)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def block_sizes(length: int, options: RunOptions) -> tuple[int, splash.BlockSizes]:
    """(padded length, the kernels' block sizes) for rows of `length`: blocks of the options' sizes,
    or one block of the row when it is shorter; the length padded to a multiple of both."""
    whole = _round_up(length, LANES)
    bq, bkv = min(options.splash_block_q, whole), min(options.splash_block_kv, whole)
    padded = _round_up(length, math.lcm(bq, bkv))
    sizes = splash.BlockSizes(
        block_q=bq,
        block_kv=bkv,
        block_kv_compute=bkv,
        block_q_dkv=bq,
        block_kv_dkv=bkv,
        block_kv_dkv_compute=bkv,
        block_q_dq=bq,
        block_kv_dq=bkv,
    )
    return padded, sizes


def _mask(length: int, window: int | None, heads: int) -> splash.MultiHeadMask:
    if window is None or window >= length:
        one = splash.CausalMask((length, length))
    else:  # key j visible from query i iff i - W < j <= i
        one = splash.LocalMask((length, length), (window - 1, 0), 0)
    return splash.MultiHeadMask([one] * heads)


def _kernel_rows(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    segments: jax.Array | None = None,
    *,
    window: int | None,
    options: RunOptions,
) -> jax.Array:
    """The kernel over rows already padded: q, k, v [B, H, T, K], segments int [B, T] or None."""
    batch, heads, length, _ = q.shape
    _, sizes = block_sizes(length, options)
    kernel = splash.make_splash_mha(
        _mask(length, window, heads), block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=options.interpret
    )
    if segments is None:
        return jax.vmap(lambda a, b, c: kernel(a, b, c))(q, k, v)
    return jax.vmap(lambda a, b, c, s: kernel(a, b, c, segment_ids=splash.SegmentIds(s, s)))(q, k, v, segments)


def _dividing(mesh, names, size: int):
    """Mesh axes `names` (one name, a tuple, or None) if their product divides `size`, else None:
    a dimension the axes do not divide stays whole on every shard (as the rules table's `_fit`)."""
    if names is None:
        return None
    group = names if isinstance(names, tuple) else (names,)
    return names if size % math.prod(mesh.shape[n] for n in group) == 0 else None


def _mesh_specs(batch: int, heads: int):
    """(mesh, spec of [B, H, T, K], spec of [B, T]) under a mesh with logical rules, else None."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty or not nn.get_logical_axis_rules():
        return None
    rows, parts = nn.logical_to_mesh_axes((axes.ACT_BATCH, axes.HEADS))
    rows, parts = _dividing(mesh, rows, batch), _dividing(mesh, parts, heads)
    return mesh, jax.sharding.PartitionSpec(rows, parts, None, None), jax.sharding.PartitionSpec(rows, None)


def self_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, spec: CausalSpec, options: RunOptions, documents: bool = True
) -> jax.Array:
    """Causal (+ window, + documents) self-attention through the splash kernel.

    Args:
      q, k, v: [B, T, H, K] (keys and values with as many heads as queries).
      spec: the mask's ids (queries are the keys: no cache).
      options: block sizes, interpret mode.
      documents: False when every position is in one document (no segment ids needed).

    Returns:
      [B, T, H, K] in q's dtype; equal to `attention.masked_attention` up to float rounding.
    """
    length = q.shape[1]
    padded, _ = block_sizes(length, options)
    scale = q.shape[-1] ** -0.5
    pad = [(0, 0), (0, padded - length), (0, 0), (0, 0)]
    # [B, T, H, K] -> [B, H, T', K], queries pre-scaled (the kernel does not scale): in fp32, then back
    # to q's dtype, which in bf16 rounds once more than the dense path's scaled fp32 scores unless the
    # head width is a power of 4 (the scale a power of 2).
    heads_first = lambda x: jnp.transpose(jnp.pad(x, pad), (0, 2, 1, 3))
    scaled = (q.astype(jnp.float32) * scale).astype(q.dtype)
    qh, kh, vh = heads_first(scaled), heads_first(k), heads_first(v)
    segments = None
    if documents:
        segments = jnp.pad(spec.q_doc.astype(jnp.int32), ((0, 0), (0, padded - length)), constant_values=PAD_SEGMENT)
    run = functools.partial(_kernel_rows, window=spec.window, options=options)
    args = (qh, kh, vh) if segments is None else (qh, kh, vh, segments)
    specs = _mesh_specs(q.shape[0], q.shape[2])
    if specs is None:
        out = run(*args)
    else:
        mesh, rows, ids = specs
        in_specs = (rows, rows, rows, ids)[: len(args)]
        out = jax.shard_map(run, mesh=mesh, in_specs=in_specs, out_specs=rows, check_vma=False)(*args)
    return jnp.transpose(out, (0, 2, 1, 3))[:, :length].astype(q.dtype)
