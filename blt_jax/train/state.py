"""The training state: step, parameters and optimizer state, as one pytree."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from blt_jax.config import ModelConfig
from blt_jax.params import init_params


@struct.dataclass
class TrainState:
    """Attributes: step (int32 scalar, optimizer steps taken), params, opt_state."""

    step: jax.Array
    params: Any
    opt_state: Any


def init_state(model: ModelConfig, tx: optax.GradientTransformation, rng: jax.Array, params: Any = None) -> TrainState:
    """A fresh state (random params unless `params` is given). Jittable with out_shardings."""
    params = init_params(model, rng) if params is None else params
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
