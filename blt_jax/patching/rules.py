"""Patch boundary rules as pure, jittable, per-row functions with static shapes.

Entropy rules follow the reference (`find_entropy_patch_start_ids`): positions 0 and 1 always start a
patch (the first patch is the single BOS/first byte, H_0 is never used); for t >= 1 the decision to
start a patch at t + 1 uses H_t, the entropy of the distribution predicting byte t + 1.

Two length conventions:
  * next-token (`include_next=True`, model forward and generation): flags over the N + 1 positions
    0..N, so lengths sum to N + 1 (the last slot is the byte still to be predicted);
  * document (`include_next=False`, per-document preprocessing): flags over 0..N-1, lengths sum to N.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from blt_jax.config import PatchingConfig


def _forced(num_positions: int, first_free: int) -> jax.Array:
    """bool [L]: positions < first_free always start a patch."""
    return jnp.arange(num_positions) < first_free


def entropy_starts(entropies: jax.Array, config: PatchingConfig, include_next: bool = True) -> jax.Array:
    """Patch start flags from per-byte entropies.

    Rules (H_t = entropies[:, t]):
      * global: start at t + 1 iff H_t > threshold (t >= 1); positions 0, 1 forced.
      * monotonic: start at t + 1 iff H_t - H_{t-1} > threshold (t >= 2); positions 0, 1, 2 forced.
      * combined (threshold_add set): start at t + 1 iff H_t > threshold and
        H_t - H_{t-1} > threshold_add (t >= 3); positions 0, 1, 2 forced; position 3 never starts
        (the reference's quirk).

    Args:
      entropies: float [B, N].
      config: the patching configuration.
      include_next: next-token convention (flags over N + 1 positions) or document convention (N).

    Returns:
      bool [B, N + 1] (or [B, N]).
    """
    ent = entropies.astype(jnp.float32)
    batch, length = ent.shape
    prev = jnp.concatenate([ent[:, :1], ent[:, :-1]], axis=1)
    if config.monotonic:
        fire, first_free = (ent - prev) > config.threshold, 3
    elif config.threshold_add is not None:
        fire = (ent > config.threshold) & ((ent - prev) > config.threshold_add)
        fire = fire.at[:, :3].set(False)  # decisions from t >= 3 only: position 3 never starts
        first_free = 3
    else:
        fire, first_free = ent > config.threshold, 2
    # fire[:, t] decides position t + 1; position 0 has no decision.
    starts = jnp.concatenate([jnp.ones((batch, 1), bool), fire], axis=1)
    starts = starts | _forced(length + 1, first_free)[None]
    return starts if include_next else starts[:, :length]


def byte_starts(batch: int, length: int, include_next: bool = True) -> jax.Array:
    """Every byte its own patch. bool [B, N + 1] (or [B, N])."""
    return jnp.ones((batch, length + 1 if include_next else length), bool)
