"""AdamW with the reference's schedule: linear warmup, then cosine down to min_lr_ratio x peak."""

from __future__ import annotations

import optax

from blt_jax.train.config import TrainConfig


def learning_rate(config: TrainConfig) -> optax.Schedule:
    """lr(step): 0 -> peak linearly over warmup_steps, then peak * (r + (1 - r)(1 + cos(pi s)) / 2)
    with s going 0 -> 1 at the last step and r = min_lr_ratio (the reference's `lr_cosine`)."""
    decay = optax.cosine_decay_schedule(
        init_value=config.learning_rate,
        decay_steps=max(1, config.steps - config.warmup_steps),
        alpha=config.min_lr_ratio,
    )
    if config.warmup_steps == 0:
        return decay
    warmup = optax.linear_schedule(0.0, config.learning_rate, config.warmup_steps)
    return optax.join_schedules([warmup, decay], [config.warmup_steps])


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """Global-norm clipping, then AdamW; weight decay on every parameter (as the reference)."""
    return optax.chain(
        optax.clip_by_global_norm(config.clip_norm),
        optax.adamw(learning_rate(config), b1=config.b1, b2=config.b2, eps=config.eps,
                    weight_decay=config.weight_decay),
    )
