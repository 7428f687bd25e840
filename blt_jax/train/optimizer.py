"""AdamW with the reference's schedule (linear warmup, then cosine down to min_lr_ratio x peak), and
parameter groups: subtrees kept frozen (no update, no optimizer state: `optax.set_to_zero`) and
subtrees trained at a multiple of the learning rate (`train.freeze`, `train.lr_multipliers`).

A parameter's group is found from its path in the tree ("blt/global_transformer/layers_0/..."): the
first frozen prefix it falls under, else the first multiplier prefix, else the base rate. Without
groups the optimizer is the plain chain its checkpoints have always held.

The optimizer's numbers (peak rate, warmup, steps, floor, AdamW's, clipping) are `hyperparameters`:
the train step takes them as an argument, not as constants of its program, so runs that differ only in
them (more steps on resume, a sweep over learning rates) share one compiled step. Only the structure
(groups, multipliers) is fixed when the optimizer is built.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from blt_jax.config import ConfigError
from blt_jax.experiment.config import TrainConfig, parse_frozen, parse_multipliers

FROZEN = "frozen"


# The optimizer's numbers, by their TrainConfig names: float32 scalars the train step takes.
HYPERPARAMETERS = (
    "learning_rate",
    "warmup_steps",
    "steps",
    "min_lr_ratio",
    "weight_decay",
    "b1",
    "b2",
    "eps",
    "clip_norm",
)

Hyper = Mapping[str, Any]  # HYPERPARAMETERS -> Python float, or a float32 scalar traced in a step


def hyperparameters(config: TrainConfig) -> dict[str, float]:
    """The optimizer's numbers of a run (`HYPERPARAMETERS`), as Python floats (weakly typed in JAX:
    they take the dtype of the arrays they meet)."""
    return {name: float(getattr(config, name)) for name in HYPERPARAMETERS}


def schedule_of(hyper: Hyper, scale: float = 1.0) -> optax.Schedule:
    """lr(step): 0 -> peak linearly over warmup_steps, then peak * (r + (1 - r)(1 + cos(pi s)) / 2)
    with s going 0 -> 1 at the last step and r = min_lr_ratio (the reference's `lr_cosine`); all of
    it times `scale`. The same arithmetic as optax's linear and cosine schedules joined at the end of
    warmup, on numbers that may be traced."""
    peak = hyper["learning_rate"] * scale
    warmup, alpha = hyper["warmup_steps"], hyper["min_lr_ratio"]
    decay_steps = jnp.maximum(hyper["steps"] - warmup, 1.0)

    def lr(step):
        step = jnp.asarray(step, jnp.float32)
        # Warmup (unused from its end on; its division kept finite when there is none).
        frac = 1 - jnp.clip(step, 0, warmup) / jnp.maximum(warmup, 1.0)
        rising = -peak * frac + peak
        count = jnp.minimum(step - warmup, decay_steps)
        cosine = 0.5 * (1 + jnp.cos(jnp.pi * count / decay_steps))
        return jnp.where(step < warmup, rising, peak * ((1 - alpha) * cosine + alpha))

    return lr


def learning_rate(config: TrainConfig, scale: float = 1.0) -> optax.Schedule:
    """The schedule (`schedule_of`) of a run's configuration."""
    return schedule_of(hyperparameters(config), scale)


def _under(path: tuple[str, ...], prefix: tuple[str, ...]) -> bool:
    return path[: len(prefix)] == prefix


def _keys(path) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def group_of(path: tuple[str, ...], config: TrainConfig) -> str:
    """The group label of the parameter at `path`: FROZEN, or "lr*<factor>"."""
    if any(_under(path, prefix) for prefix in parse_frozen(config.freeze)):
        return FROZEN
    for prefix, factor in parse_multipliers(config.lr_multipliers):
        if _under(path, prefix):
            return f"lr*{factor:g}"
    return "lr*1"


def has_groups(config: TrainConfig) -> bool:
    return bool(parse_frozen(config.freeze) or parse_multipliers(config.lr_multipliers))


def check_groups(config: TrainConfig, params: Any) -> None:
    """Every frozen and multiplied subtree names parameters of the model (a typo would train all)."""
    paths = [_keys(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
    named = [("freeze", prefix) for prefix in parse_frozen(config.freeze)]
    named += [("lr_multipliers", prefix) for prefix, _ in parse_multipliers(config.lr_multipliers)]
    for field, prefix in named:
        if not any(_under(path, prefix) for path in paths):
            tops = sorted({path[0] for path in paths})
            raise ConfigError(
                f"train.{field}",
                f"{'/'.join(prefix)!r} names no parameter of this model (its top-level subtrees: {', '.join(tops)})",
            )


def stop_frozen(config: TrainConfig) -> Callable[[Any], Any]:
    """params -> params with `lax.stop_gradient` on the frozen subtrees (so their weight gradients are
    never computed); the identity without frozen subtrees."""
    frozen = parse_frozen(config.freeze)
    if not frozen:
        return lambda params: params

    def stop(params):
        return jax.tree_util.tree_map_with_path(
            lambda path, x: jax.lax.stop_gradient(x) if any(_under(_keys(path), p) for p in frozen) else x, params
        )

    return stop


def make_optimizer(config: TrainConfig, hyper: Hyper | None = None) -> optax.GradientTransformation:
    """Global-norm clipping, then AdamW; weight decay on every trained parameter (as the reference).
    Frozen subtrees get no update and no state; multiplied ones their own AdamW at a scaled rate.

    Args:
      config: the groups (freeze, lr_multipliers), and the numbers when `hyper` is None.
      hyper: the numbers (`hyperparameters`), traced inside a train step; the state this optimizer
        keeps does not depend on them.
    """
    hyper = hyperparameters(config) if hyper is None else hyper

    def adamw(scale: float) -> optax.GradientTransformation:
        return optax.adamw(
            schedule_of(hyper, scale),
            b1=hyper["b1"],
            b2=hyper["b2"],
            eps=hyper["eps"],
            weight_decay=hyper["weight_decay"],
        )

    clip = optax.clip_by_global_norm(hyper["clip_norm"])
    if not has_groups(config):
        return optax.chain(clip, adamw(1.0))
    factors = {1.0} | {factor for _, factor in parse_multipliers(config.lr_multipliers)}
    transforms = {f"lr*{factor:g}": adamw(factor) for factor in factors}
    transforms[FROZEN] = optax.set_to_zero()

    def labels(params):
        return jax.tree_util.tree_map_with_path(lambda path, _: group_of(_keys(path), config), params)

    return optax.chain(clip, optax.multi_transform(transforms, labels))
