"""Parameter layouts of scanned stacks: per-layer `layers_i` <-> one stacked `layers` [L, ...].

Checkpoints of other implementations, conversion and decoding use the per-layer layout (one entry per
block, as the reference names them). Training may run a stack as one `nn.scan` over its layers, which
compiles one block instead of L; its parameters then carry a leading layer axis. These functions move
between the two; they work on arrays and on ShapeDtypeStructs (under `jax.eval_shape`).

Scannable stacks are the uniform ones: the latent transformer of a BLT and the entropy LM; each
model kind names its own (`ModelKind.scan_stacks`) as {stack name: (parameter path of the stack's
parent dict, number of layers)}. The local encoder and decoder interleave cross-attention with
their 1-9 blocks and are left per-layer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
from jax.sharding import PartitionSpec

# {stack name: (parameter path of the stack's parent dict, number of layers)}
Stacks = Mapping[str, tuple[tuple[str, ...], int]]


def _parent(params: dict, path: tuple[str, ...]) -> dict:
    for key in path:
        params = params[key]
    return params


def _copy(params: Mapping) -> dict:
    return {k: _copy(v) if isinstance(v, Mapping) else v for k, v in params.items()}


def _map2(fn, *trees):
    first = trees[0]
    if isinstance(first, Mapping):
        return {k: _map2(fn, *(t[k] for t in trees)) for k in first}
    return fn(*trees)


def stack_layers(params: Mapping, stacks: Stacks) -> dict:
    """The scanned layout: for each stack, `layers_0 .. layers_{L-1}` become `layers` with a leading
    layer axis. Other entries are shared, not copied."""
    out = _copy(params)
    for path, n in stacks.values():
        parent = _parent(out, path)
        layers = [parent.pop(f"layers_{i}") for i in range(n)]
        parent["layers"] = _map2(lambda *xs: jnp.stack(xs), *layers)
    return out


def unstack_layers(params: Mapping, stacks: Stacks) -> dict:
    """The per-layer layout of `stack_layers` output."""
    out = _copy(params)
    for path, n in stacks.values():
        parent = _parent(out, path)
        stacked = parent.pop("layers")
        for i in range(n):
            parent[f"layers_{i}"] = _map2(lambda x, i=i: x[i], stacked)
    return out


def stacked_axes(axes_tree: Mapping, stacks: Stacks, layer_axis: Any) -> dict:
    """Logical axis names (PartitionSpec leaves) of the scanned layout: `layer_axis` first."""
    out = _copy(axes_tree)
    for path, n in stacks.values():
        parent = _parent(out, path)
        first = parent["layers_0"]
        for i in range(n):
            parent.pop(f"layers_{i}")
        parent["layers"] = _map2(lambda spec: PartitionSpec(layer_axis, *spec), first)
    return out
