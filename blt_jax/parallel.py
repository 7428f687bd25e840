"""Device-mesh parallelism: mesh axes and the one table mapping logical parameter axes onto them.

Mesh axes: `data` (pure data parallel), `fsdp` (parameters and optimizer state sharded, batch split
too), `tensor` (attention heads and FFN hidden split). Parameters name logical axes
(`blt_jax.nn.axes`); nothing else in the code mentions mesh axes.
"""

from __future__ import annotations

from blt_jax.nn import axes

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis -> mesh axis (None = replicated). Order matters to flax: the first rule whose mesh
# axis is still free for a given array wins.
LOGICAL_RULES: tuple[tuple[str, str | None], ...] = (
    (axes.EMBED, "fsdp"),
    (axes.HEADS, "tensor"),
    (axes.MLP, "tensor"),
    (axes.HEAD_DIM, None),
    (axes.VOCAB, None),
    (axes.NORM, None),
    (axes.HASH_TABLES, None),
    # 500,002 buckets divide by no mesh size > 2; the tables are sharded over their width instead.
    (axes.HASH_VOCAB, None),
    (axes.PATCH_SLOTS, "tensor"),
    (axes.LATENT_IN, "tensor"),
)
