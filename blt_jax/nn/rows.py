"""Loops over the rows of a batch that keep the batch's sharding.

Some computations bound the size of their intermediates by running over a batch a few rows at a
time (`jax.lax.map` / `scan` over groups of rows). Under a device mesh the looped axis must be the
minor factor of the batch, and every step must take at least one row per batch shard, or each
device would gather the whole batch. The number of shards comes from the logical axis rules in
force (`flax.linen.logical_axis_rules`, set by whoever traces under a mesh), so this layer names
only the logical activation batch axis, never a mesh axis.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import AxisType

from blt_jax.nn import axes


def batch_shards() -> int:
    """Ways the activation batch is split over the mesh being traced under: the sizes of the mesh
    axes the active logical rules map `act_batch` to (1 without a mesh or rules).

    Inside shard_map the batch axes are manual: the body already sees only its own rows."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return 1
    spec = nn.logical_to_mesh_axes((axes.ACT_BATCH,))[0]
    names = set(spec if isinstance(spec, tuple) else () if spec is None else (spec,))
    return math.prod(
        size
        for name, size, kind in zip(mesh.axis_names, mesh.axis_sizes, mesh.axis_types)
        if name in names and kind != AxisType.Manual
    )


def scan_rows(batch: int, max_rows: int, shards: int | None = None) -> int:
    """Rows per step of a loop over a batch: the most up to `max_rows` that divide `batch`, but at least
    one per batch shard (a multiple of `shards`, default `batch_shards()`).

    Loops over rows bound the size of intermediates; under a mesh they must take row r of the step
    from the major factor of the batch (b = r * (batch // rows) + g, see `split_rows`) and take at least
    as many rows as there are shards, or every device would gather the whole batch. A batch the shards
    do not divide is taken whole.
    """
    shards = batch_shards() if shards is None else shards
    if batch % shards:
        return batch
    fits = [r for r in range(shards, batch + 1, shards) if batch % r == 0 and r <= max(max_rows, shards)]
    return max(fits)


def split_rows(x: Any, rows: int, axis: int = 0) -> Any:
    """[..., B, ...] -> [..., B // rows, rows, ...] at `axis`, with b = r * (B // rows) + g: the new
    leading (looped) axis is the minor factor of B, so the batch's sharding stays on `rows`."""
    batch = x.shape[axis]
    x = x.reshape(*x.shape[:axis], rows, batch // rows, *x.shape[axis + 1 :])
    return jnp.swapaxes(x, axis, axis + 1)


def merge_rows(x: Any, axis: int = 0) -> Any:
    """Inverse of `split_rows`: [..., B // rows, rows, ...] at `axis` -> [..., B, ...]."""
    x = jnp.swapaxes(x, axis, axis + 1)
    return x.reshape(*x.shape[:axis], x.shape[axis] * x.shape[axis + 1], *x.shape[axis + 2 :])
