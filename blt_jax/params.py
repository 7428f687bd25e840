"""Parameter trees: initialisation, abstract shapes (no allocation), counts and logical axes."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
from flax import traverse_util

from blt_jax.config import ModelConfig
from blt_jax.models import model_kind

Params = Mapping[str, Any]


def build_module(config: ModelConfig) -> nn.Module:
    """The Flax module of a configuration."""
    return model_kind(config).module()


def _boxed_init(config: ModelConfig, rng: jax.Array) -> dict:
    kind = model_kind(config)
    return kind.module().init(rng, *kind.example_inputs())["params"]


def init_params(config: ModelConfig, rng: jax.Array) -> dict:
    """Randomly initialised parameters (reference init), as a plain nested dict of arrays."""
    return nn.unbox(jax.jit(_boxed_init, static_argnums=0)(config, rng))


def abstract_params(config: ModelConfig) -> dict:
    """ShapeDtypeStructs of every parameter, computed without allocating anything."""
    return nn.unbox(jax.eval_shape(functools.partial(_boxed_init, config), jax.random.key(0)))


def logical_axes(config: ModelConfig) -> dict:
    """Logical axis names of every parameter (a tree of PartitionSpecs of logical names)."""
    boxed = jax.eval_shape(functools.partial(_boxed_init, config), jax.random.key(0))
    return nn.get_partition_spec(boxed)


def count(tree: Any) -> int:
    """Total number of scalars in a tree of arrays or ShapeDtypeStructs."""
    return sum(int(x.size) for x in jax.tree_util.tree_leaves(tree))


def count_by_group(tree: Params) -> dict[str, int]:
    """Parameter counts split by sub-model; hash n-gram tables are reported on their own."""
    groups: dict[str, int] = {}
    for path, leaf in traverse_util.flatten_dict(dict(tree)).items():
        if "hash_embeddings" in path:
            group = "hash_embeddings"
        elif path[0].startswith("layers_"):
            group = "layers"
        else:
            group = path[0]
        groups[group] = groups.get(group, 0) + int(leaf.size)
    return groups
