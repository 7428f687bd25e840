"""AdamW with the reference's schedule (linear warmup, then cosine down to min_lr_ratio x peak), and
parameter groups: subtrees kept frozen (no update, no optimizer state: `optax.set_to_zero`) and
subtrees trained at a multiple of the learning rate (`train.freeze`, `train.lr_multipliers`).

A parameter's group is found from its path in the tree ("blt/global_transformer/layers_0/..."): the
first frozen prefix it falls under, else the first multiplier prefix, else the base rate. Without
groups the optimizer is the plain chain its checkpoints have always held.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import optax

from blt_jax.config import ConfigError
from blt_jax.experiment.config import TrainConfig, parse_frozen, parse_multipliers

FROZEN = "frozen"


def learning_rate(config: TrainConfig, scale: float = 1.0) -> optax.Schedule:
    """lr(step): 0 -> peak linearly over warmup_steps, then peak * (r + (1 - r)(1 + cos(pi s)) / 2)
    with s going 0 -> 1 at the last step and r = min_lr_ratio (the reference's `lr_cosine`); all of
    it times `scale`."""
    peak = config.learning_rate * scale
    decay = optax.cosine_decay_schedule(
        init_value=peak,
        decay_steps=max(1, config.steps - config.warmup_steps),
        alpha=config.min_lr_ratio,
    )
    if config.warmup_steps == 0:
        return decay
    warmup = optax.linear_schedule(0.0, peak, config.warmup_steps)
    return optax.join_schedules([warmup, decay], [config.warmup_steps])


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


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """Global-norm clipping, then AdamW; weight decay on every trained parameter (as the reference).
    Frozen subtrees get no update and no state; multiplied ones their own AdamW at a scaled rate."""

    def adamw(scale: float) -> optax.GradientTransformation:
        return optax.adamw(
            learning_rate(config, scale), b1=config.b1, b2=config.b2, eps=config.eps, weight_decay=config.weight_decay
        )

    if not has_groups(config):
        return optax.chain(optax.clip_by_global_norm(config.clip_norm), adamw(1.0))
    factors = {1.0} | {factor for _, factor in parse_multipliers(config.lr_multipliers)}
    transforms = {f"lr*{factor:g}": adamw(factor) for factor in factors}
    transforms[FROZEN] = optax.set_to_zero()

    def labels(params):
        return jax.tree_util.tree_map_with_path(lambda path, _: group_of(_keys(path), config), params)

    return optax.chain(optax.clip_by_global_norm(config.clip_norm), optax.multi_transform(transforms, labels))
