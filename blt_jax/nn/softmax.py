"""The masked softmax of every attention: masked scores give exact zeros, fully masked rows stay finite.

Empty patches (trailing zero-length patches, the "next byte" patch) produce query rows whose mask is
all False. The reference's flex-attention returns 0 for them; a plain softmax over a row of -inf
returns NaN, and a NaN in a masked value row still poisons the sums in XLA. Here masked scores are
replaced by a finite floor, masked weights are zeroed explicitly and an empty row's normaliser is
set to 1, so forward values and gradients are exactly zero for such rows.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Finite: keeps max/exp free of inf - inf. Also the "never chosen" logit of sampling.
MASKED_SCORE = -1e30


def masked_exp(scores: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The unnormalised masked softmax: `masked_softmax(scores, mask) == weights / normaliser`.

    Callers that reduce the weights against values first (banded attention) divide the narrower
    result afterwards instead of the [..., S] weights.

    Args:
      scores: fp32 [..., S].
      mask: bool, broadcastable to scores' shape (True = may attend).

    Returns:
      (weights [..., S]: exp(score - row max) where visible, exactly 0 elsewhere;
       normaliser [..., 1]: the row sum of the weights, 1 for rows with nothing visible).
    """
    scores = jnp.where(mask, scores, MASKED_SCORE)
    # The max only shifts the exponent for stability; its gradient cancels, so none flows through it.
    scores = scores - jax.lax.stop_gradient(jnp.max(scores, axis=-1, keepdims=True))
    weights = jnp.where(mask, jnp.exp(scores), 0.0)
    denom = jnp.sum(weights, axis=-1, keepdims=True)
    return weights, jnp.where(denom > 0, denom, 1.0)


def masked_softmax(scores: jax.Array, mask: jax.Array) -> jax.Array:
    """Softmax over the last axis where mask is True; rows with nothing visible are exactly 0.

    Args:
      scores: fp32 [..., S].
      mask: bool, broadcastable to scores' shape (True = may attend).

    Returns:
      fp32 probabilities [..., S].
    """
    weights, normaliser = masked_exp(scores, mask)
    return weights / normaliser
