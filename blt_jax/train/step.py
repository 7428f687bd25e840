"""Pure step functions: loss, train step (with exact gradient accumulation), eval step.

Loss = cross-entropy over the V-way softmax (260 for bytes) in fp32, summed over target positions where
the mask is True (padding has id 0 and mask False; BOS/EOS targets count, as in the reference), divided
by their number. Bits per byte = that mean / ln 2.

Token rows (a BPE transformer) carry target_bytes [B, N], the bytes each target token stands for.
Their loss is still nats per target, but bits per byte = summed CE / (ln 2 x the bytes of the real
targets), the same quantity a byte model reports on the same documents (BOS and EOS count one byte
each there too), and the `bytes` metric is that byte sum.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from blt_jax.models import EncoderInput
from blt_jax.models.base import Objective, ce_sums
from blt_jax.train.state import TrainState

Batch = Mapping[str, jax.Array]


def loss_sums(logits: jax.Array, batch: Batch) -> tuple[jax.Array, jax.Array]:
    """(sum of CE over real targets in nats, number of real targets)."""
    return ce_sums(logits, batch["targets"], batch["mask"])


def target_bytes(batch: Batch) -> jax.Array | None:
    """Bytes of the real targets of token rows (sum of target_bytes x mask); None for byte rows."""
    if "target_bytes" not in batch:
        return None
    return jnp.sum(batch["target_bytes"].astype(jnp.float32) * batch["mask"].astype(jnp.float32))


def _split(batch: Batch, parts: int) -> Batch:
    return {k: v.reshape(parts, v.shape[0] // parts, *v.shape[1:]) for k, v in batch.items()}


def _accumulated_grads(params, batch, objective, grad_accum, embed):
    """Sum of the objective's gradients and of its sums (CE, count, extras) over `grad_accum`
    micro-batches (a scan).

    With `embed` (BLT), the encoder input is computed once for the whole batch and the large byte and
    hash tables are differentiated once, from the summed gradient of that input, instead of building
    a dense table-sized gradient in every micro-batch.
    """
    micro_batches = _split(batch, grad_accum)
    first = jax.tree_util.tree_map(lambda x: x[0], micro_batches)
    first_embeds = None if embed is None else embed(embed.split(params)[0], first["tokens"])
    shapes = jax.eval_shape(lambda: objective(params, first, first_embeds)[1])  # traced only: no work
    zero_sums = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    if embed is None:
        grad_fn = jax.value_and_grad(objective, has_aux=True)

        def accumulate(carry, mb):
            (_, sums), g = grad_fn(params, mb)
            return jax.tree_util.tree_map(jnp.add, carry, (sums, g)), None

        (sums, grads), _ = jax.lax.scan(
            accumulate, (zero_sums, jax.tree_util.tree_map(jnp.zeros_like, params)), micro_batches
        )
        return sums, grads

    emb, rest = embed.split(params)
    embeds, emb_vjp = jax.vjp(lambda e: embed(e, batch["tokens"]), emb)
    grad_fn = jax.value_and_grad(lambda r, h, mb: objective(embed.merge(emb, r), mb, h), argnums=(0, 1), has_aux=True)

    def accumulate(carry, xs):
        mb, h = xs
        (_, sums), (g, dh) = grad_fn(rest, h, mb)
        s0, g0 = carry
        return (jax.tree_util.tree_map(jnp.add, s0, sums), jax.tree_util.tree_map(jnp.add, g0, g)), dh

    split_embeds = embeds.reshape(grad_accum, embeds.shape[0] // grad_accum, *embeds.shape[1:])
    zeros = (zero_sums, jax.tree_util.tree_map(jnp.zeros_like, rest))
    (sums, grads_rest), d_embeds = jax.lax.scan(accumulate, zeros, (micro_batches, split_embeds))
    (grads_emb,) = emb_vjp(d_embeds.reshape(embeds.shape))
    return sums, embed.merge(grads_emb, grads_rest)


def train_step(
    state: TrainState,
    batch: Batch,
    hyper: Any,
    *,
    objective: Objective,
    optimizer: Callable[[Any], tuple[optax.GradientTransformation, optax.Schedule]],
    grad_accum: int = 1,
    embed: EncoderInput | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step on a batch (split into `grad_accum` micro-batches, gradients summed exactly).

    Args:
      hyper: the optimizer's numbers (a pytree of scalars, e.g. `optimizer.hyperparameters`): an
        argument, so that runs differing only in them share the compiled step.
      objective: the model kind's `objective_fn` (cross-entropy, plus a kind's other losses).
      optimizer: hyper -> (the optimizer, its learning-rate schedule).
      embed: the model's `ModelKind.encoder_input()`, if it has one (its big embedding tables are then
        differentiated once per step).

    Returns:
      The new state and metrics: loss (nats per target), bpb, grad_norm, skipped (1 when the loss or
      the gradient norm was not finite: the step kept the parameters and optimizer state as they were,
      and only the step counter moved), lr, bytes (real targets, or for token rows the bytes they
      stand for), patches (of token rows: real targets, i.e. tokens), and the objective's other
      losses, per target.
    """
    if grad_accum == 1:
        (_, sums), grads = jax.value_and_grad(objective, has_aux=True)(state.params, batch)
    else:
        sums, grads = _accumulated_grads(state.params, batch, objective, grad_accum, embed)
    total, count, extras = sums
    count = jnp.maximum(count, 1.0)
    mean_grads = jax.tree_util.tree_map(lambda g: g / count, grads)  # float32 (count is)
    grad_norm = optax.tree.norm(mean_grads)
    # Back in the gradients' own dtype: bfloat16 parameters keep bfloat16 Adam moments (the state's
    # dtypes must not change from one step to the next).
    grads = jax.tree_util.tree_map(lambda m, g: m.astype(g.dtype), mean_grads, grads)
    tx, schedule = optimizer(hyper)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    loss = total / count
    # A step whose loss or gradient is not finite (a bad batch, a spike) changes nothing: once a NaN is
    # in the parameters or Adam's moments, every later step inherits it. The host counts the skips.
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jnp.where(finite, new, old)
    params = jax.tree_util.tree_map(keep, params, state.params)
    opt_state = jax.tree_util.tree_map(keep, opt_state, state.opt_state)
    byte_sum = target_bytes(batch)
    metrics = {
        "loss": loss,
        "bpb": loss / math.log(2) if byte_sum is None else total / (math.log(2) * jnp.maximum(byte_sum, 1.0)),
        "grad_norm": grad_norm,
        "skipped": (~finite).astype(jnp.float32),
        "lr": schedule(state.step),
        "bytes": count if byte_sum is None else byte_sum,
        "patches": jnp.sum(batch["patch_lengths"] > 0) if "patch_lengths" in batch else count,
        **{name: value / count for name, value in extras.items()},
    }
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def eval_step(params: Any, batch: Batch, *, apply: Callable) -> dict[str, jax.Array]:
    """Sums for bits per byte over a batch: CE (nats), real targets, the bytes they stand for (the
    targets again for byte rows), patches (of token rows: the targets)."""
    total, count = loss_sums(apply(params, batch), batch)
    patches = jnp.sum(batch["patch_lengths"] > 0) if "patch_lengths" in batch else count
    byte_sum = target_bytes(batch)
    return {
        "ce_sum": total,
        "targets": count,
        "bytes": count if byte_sum is None else byte_sum,
        "patches": patches.astype(jnp.float32),
    }
