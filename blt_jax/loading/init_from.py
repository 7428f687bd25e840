"""Initial weights of a run from other models (`train.init_from`): the whole tree from one source, or
parts of it from several, as Levanter's `initialize_from_hf` does for whole models.

    "~/runs/blt"                                    every parameter from a run (shapes checked)
    "blt/global_transformer=~/llama,teacher=~/llama" a Llama's blocks and final norm into a BLT's
                                                    latent, its embeddings and head beside it
    "=runs/stage1#blt"                              the whole tree from the `blt` part of a run
    "blt/local_encoder=byteify/embeddings.safetensors"  tables from a file of '/'-named tensors

An entry SUBTREE=SOURCE[#FROM] fills the parameters under SUBTREE (a "/"-separated path; empty: the
whole tree) from SOURCE (a run of ours, any model directory `from_pretrained` reads, or a
`.safetensors` file of '/'-named tensors), read at FROM: by default the subtree of the same name
when SOURCE has one, else SOURCE's whole tree. Every
parameter under SUBTREE whose path (below SUBTREE) exists at FROM is taken from it; shapes must match;
the rest keep their fresh initialisation and are listed in the log. An entry that fills nothing is an
error (a misspelt subtree), as is a shape that differs.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import traverse_util

from blt_jax.config import ConfigError, ModelConfig
from blt_jax.experiment.config import subtree
from blt_jax.loading.directories import check_tree
from blt_jax.params import abstract_params

logger = logging.getLogger("blt_jax.train")

_SUBTREE = re.compile(r"^[A-Za-z0-9_/]*$")


@dataclasses.dataclass(frozen=True)
class InitEntry:
    """One part of `train.init_from`: fill `target` (a path; () = everything) from `source` at `at`
    (None: the subtree of the target's name if the source has it, else its root)."""

    target: tuple[str, ...]
    source: str
    at: tuple[str, ...] | None = None


def parse_init_from(spec: str) -> list[InitEntry]:
    """`train.init_from` as entries; a bare source is the whole tree from it (shapes checked whole)."""
    entries = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        head, sep, rest = part.partition("=")
        if not sep or not _SUBTREE.match(head):  # a plain path (which may itself hold "=")
            head, rest = None, part
        source, _, at = rest.partition("#")
        if not source:
            raise ConfigError("train.init_from", f"{part!r}: no source before '#'")
        entries.append(InitEntry(() if head is None else subtree(head), source, subtree(at) if at else None))
    if not entries:
        raise ConfigError("train.init_from", "names no source")
    return entries


def resolve_init_from(spec: str) -> str:
    """`train.init_from` with every source resolved (`~`, relative), so the saved configuration names
    the same models from any working directory."""
    from blt_jax import paths

    entries = parse_init_from(spec)
    if is_whole(entries):
        return paths.resolve(entries[0].source)
    return ",".join(
        f"{'/'.join(e.target)}={paths.resolve(e.source)}" + ("" if e.at is None else f"#{'/'.join(e.at)}")
        for e in entries
    )


def is_whole(entries: list[InitEntry]) -> bool:
    """A single bare source for the whole tree (its parameters must match the model's exactly)."""
    return len(entries) == 1 and entries[0].target == () and entries[0].at is None


def _get(tree: Mapping, path: tuple[str, ...]) -> Any:
    node = tree
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node


def _source_tree(entry: InitEntry, params: Mapping) -> Mapping:
    if entry.at is not None:
        found = _get(params, entry.at)
        if not isinstance(found, Mapping):
            raise ConfigError(
                "train.init_from",
                f"{entry.source} has no subtree {'/'.join(entry.at)!r} (it has {', '.join(sorted(params))})",
            )
        return found
    same = _get(params, entry.target) if entry.target else None
    return same if isinstance(same, Mapping) else params


def initial_params(model: ModelConfig, spec: str, fresh, load) -> dict:
    """The run's starting parameters (per-layer layout).

    Args:
      model: the run's model.
      spec: `train.init_from`.
      fresh: `fn() -> params`, freshly initialised parameters of `model` (what no source fills stays so).
      load: `fn(source) -> params` reading a source.

    Raises:
      ConfigError: an entry fills nothing, or a shape differs. WeightError: a whole-tree source that
      does not match the model.
    """
    entries = parse_init_from(spec)
    if is_whole(entries):
        params = load(entries[0].source)
        check_tree(params, abstract_params(model), f"init_from {entries[0].source}")
        return params
    flat = traverse_util.flatten_dict(dict(fresh()))
    for entry in entries:
        source = traverse_util.flatten_dict(dict(_source_tree(entry, load(entry.source))))
        taken, kept = 0, []
        for path in [p for p in flat if p[: len(entry.target)] == entry.target]:
            value = source.get(path[len(entry.target) :])
            if value is None:
                kept.append("/".join(path))
                continue
            if tuple(np.shape(value)) != tuple(np.shape(flat[path])):
                raise ConfigError(
                    "train.init_from",
                    f"{'/'.join(path)} has shape {tuple(np.shape(flat[path]))} here, "
                    f"{tuple(np.shape(value))} in {entry.source}",
                )
            flat[path] = np.asarray(value).astype(np.asarray(flat[path]).dtype)
            taken += 1
        where = "/".join(entry.target) or "the whole tree"
        if taken == 0:
            raise ConfigError(
                "train.init_from",
                f"{entry.source} holds no parameter of {where} (paths below it must "
                "match; name the source's subtree with SOURCE#SUBTREE)",
            )
        logger.info(
            "init_from: %d tensors of %s from %s%s",
            taken,
            where,
            entry.source,
            f"; {len(kept)} keep their initialisation ({', '.join(kept[:4])}{', ...' if len(kept) > 4 else ''})"
            if kept
            else "",
        )
    return traverse_util.unflatten_dict(flat)
