"""Pure step functions: loss, train step (with exact gradient accumulation), eval step.

Loss = cross-entropy over the 260-way softmax in fp32, summed over target positions where the mask
is True (padding has id 0 and mask False; BOS/EOS targets count, as in the reference), divided by their
number. Bits per byte = that mean / ln 2.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from blt_jax.config import BLTConfig, ModelConfig
from blt_jax.nn.blt import BLT
from blt_jax.nn.entropy_lm import EntropyLM
from blt_jax.train.state import TrainState

Batch = Mapping[str, jax.Array]


def model_apply(model: ModelConfig, remat: Mapping[str, str] | None = None) -> Callable[[Any, Batch], jax.Array]:
    """(params, batch) -> fp32 logits [B, N, V] for a BLT or an entropy LM."""
    remat = dict(remat or {})
    if isinstance(model, BLTConfig):
        module = BLT(model, remat=remat)
        return lambda params, batch: module.apply({"params": params}, batch["tokens"], batch["patch_lengths"])
    module = EntropyLM(model, remat=remat.get("entropy", remat.get("all", "none")))
    return lambda params, batch: module.apply({"params": params}, batch["tokens"])


def loss_sums(logits: jax.Array, batch: Batch) -> tuple[jax.Array, jax.Array]:
    """(sum of CE over real targets in nats, number of real targets)."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, batch["targets"][..., None].astype(jnp.int32), axis=-1)[..., 0]
    mask = batch["mask"].astype(jnp.float32)
    return jnp.sum(nll * mask), jnp.sum(mask)


def _split(batch: Batch, parts: int) -> Batch:
    return {k: v.reshape(parts, v.shape[0] // parts, *v.shape[1:]) for k, v in batch.items()}


def train_step(
    state: TrainState,
    batch: Batch,
    *,
    apply: Callable,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    grad_accum: int = 1,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step on a batch (split into `grad_accum` micro-batches, gradients summed exactly).

    Returns:
      The new state and metrics: loss (nats/byte), bpb, grad_norm, lr, bytes (real targets), patches.
    """

    def ce_sum(params, micro):
        total, count = loss_sums(apply(params, micro), micro)
        return total, count

    grad_fn = jax.value_and_grad(ce_sum, has_aux=True)
    if grad_accum == 1:
        (total, count), grads = grad_fn(state.params, batch)
    else:

        def accumulate(carry, micro):
            (t, c), g = grad_fn(state.params, micro)
            return jax.tree_util.tree_map(jnp.add, carry, (t, c, g)), None

        zeros = (jnp.zeros(()), jnp.zeros(()), jax.tree_util.tree_map(jnp.zeros_like, state.params))
        (total, count, grads), _ = jax.lax.scan(accumulate, zeros, _split(batch, grad_accum))
    count = jnp.maximum(count, 1.0)
    grads = jax.tree_util.tree_map(lambda g: g / count, grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    loss = total / count
    metrics = {
        "loss": loss,
        "bpb": loss / math.log(2),
        "grad_norm": optax.tree.norm(grads),
        "lr": schedule(state.step),
        "bytes": count,
        "patches": jnp.sum(batch["patch_lengths"] > 0) if "patch_lengths" in batch else count,
    }
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def eval_step(params: Any, batch: Batch, *, apply: Callable) -> dict[str, jax.Array]:
    """Sums for bits per byte over a batch: CE (nats), real targets, patches."""
    total, count = loss_sums(apply(params, batch), batch)
    patches = jnp.sum(batch["patch_lengths"] > 0) if "patch_lengths" in batch else count
    return {"ce_sum": total, "bytes": count, "patches": patches.astype(jnp.float32)}
