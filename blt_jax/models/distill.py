"""Byteification's first stage as a model kind: a BLT trained beside its teacher (`nn.distill`).

Its objective is the BLT's next-byte cross-entropy plus two losses against the teacher (Bolmo, arXiv
2512.15586), over the patches that are exactly one teacher token (`token_mask`):
  * hidden: the mean squared error between the latent's states after block k on the BLT's patch
    vectors and on the teacher's token embeddings (the teacher's own states: the latent holds its
    blocks), which teaches the local encoder to speak the latent's language;
  * distill: a binarised KL at temperature T between the teacher's p(token q | tokens < q) and the
    BLT's probability of that token's bytes (the product of its byte probabilities), which teaches
    the local decoder to spell what the latent predicts.
The teacher's side is a target: no gradient flows into it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from blt_jax.config import DistillConfig, EntropyLMConfig, PatchingConfig, distill_from_dict
from blt_jax.metrics.flops import (
    blt_forward_flops_per_byte,
    blt_self_attention_flops_per_byte,
    stack_attention_flops,
    stack_forward_flops,
)
from blt_jax.models.base import Batch, ModelKind, Objective, StackPath, ce_sums
from blt_jax.nn.distill import DistilledBLT
from blt_jax.nn.options import DEFAULT, RunOptions
from blt_jax.nn.patch_ids import patch_ids_from_lengths


def binary_kl(log_p: jax.Array, log_q: jax.Array) -> jax.Array:
    """KL(Bernoulli(p) || Bernoulli(q)) of log-probabilities (elementwise, in nats)."""
    tiny = -1e-7  # log(1 - p) of p = 1 would be -inf: keep p just below 1
    log_p, log_q = jnp.minimum(log_p, tiny), jnp.minimum(log_q, tiny)
    log_not_p, log_not_q = jnp.log(-jnp.expm1(log_p)), jnp.log(-jnp.expm1(log_q))
    return jnp.exp(log_p) * (log_p - log_q) + jnp.exp(log_not_p) * (log_not_p - log_not_q)


def patch_logprobs(logits: jax.Array, batch: Batch) -> jax.Array:
    """log p of each patch's bytes under the BLT: the sum of the log-probs of the bytes of patch q
    (the targets of positions i whose next byte i + 1 lies in patch q). fp32 [B, P]."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    picked = jnp.take_along_axis(logp, batch["targets"][..., None].astype(jnp.int32), axis=-1)[..., 0]
    picked = jnp.where(batch["mask"], picked, 0.0)
    length, patches = batch["tokens"].shape[1], batch["patch_lengths"].shape[1]
    owner = patch_ids_from_lengths(batch["patch_lengths"], length + 1)[:, 1:]  # the patch of byte i + 1
    return jax.vmap(lambda v, ids: jax.ops.segment_sum(v, ids, num_segments=patches))(picked, owner)


class DistillKind(ModelKind):
    """A BLT and its teacher's ends; batches carry the teacher's token of each patch."""

    name = "blt_distill"
    config_class = DistillConfig
    description = "a BLT beside its teacher (byteification, stage 1)"
    config: DistillConfig

    @classmethod
    def config_from_dict(cls, raw: Any, path: str) -> DistillConfig:
        return distill_from_dict(raw, path)

    def module(self, options: RunOptions = DEFAULT) -> nn.Module:
        return DistilledBLT(self.config, options)

    def inputs(self, batch: Batch, embeds: jax.Array | None = None) -> tuple[jax.Array, ...]:
        return (batch["tokens"], batch["patch_lengths"], batch["patch_tokens"])

    def batch_shapes(self, rows: int, row_bytes: int, row_patches: int) -> dict[str, jax.ShapeDtypeStruct]:
        """A BLT's batch plus the teacher's id of every patch, int32 [rows, P] (negative: unknown),
        and whether the patch is exactly that token, bool [rows, P]."""
        shapes = super().batch_shapes(rows, row_bytes, row_patches)
        return {
            **shapes,
            "patch_lengths": jax.ShapeDtypeStruct((rows, row_patches), jnp.int32),
            "patch_tokens": jax.ShapeDtypeStruct((rows, row_patches), jnp.int32),
            "token_mask": jax.ShapeDtypeStruct((rows, row_patches), jnp.bool_),
        }

    def apply_fn(self, options: RunOptions = DEFAULT):
        """(params, batch, embeds=None) -> the BLT's fp32 byte logits [B, N, V]."""
        module = self.module(options)
        return lambda params, batch, embeds=None: module.apply({"params": params}, *self.inputs(batch))[0]

    def objective_fn(self, options: RunOptions = DEFAULT) -> Objective:
        module, cfg = self.module(options), self.config

        def objective(params, batch, embeds=None):
            logits, student, teacher, teacher_logp = module.apply({"params": params}, *self.inputs(batch))
            ce, count = ce_sums(logits, batch["targets"], batch["mask"])
            exact = batch["token_mask"]
            teacher = jax.lax.stop_gradient(teacher)
            squared = jnp.mean(jnp.square(student.astype(jnp.float32) - teacher.astype(jnp.float32)), axis=-1)
            hidden = jnp.sum(jnp.where(exact, squared, 0.0)) / jnp.maximum(jnp.sum(exact), 1)
            # Patch q's token is predicted from the teacher's position q - 1: both must be exact tokens.
            scored = exact & jnp.pad(exact[:, :-1], ((0, 0), (1, 0)))
            kl = binary_kl(
                jax.lax.stop_gradient(teacher_logp) / cfg.temperature, patch_logprobs(logits, batch) / cfg.temperature
            )
            distill = jnp.sum(jnp.where(scored, kl, 0.0)) / jnp.maximum(jnp.sum(scored), 1)
            total = ce + count * (cfg.hidden_weight * hidden + cfg.distill_weight * distill)
            return total, (ce, count, {"hidden_loss": hidden * count, "distill_loss": distill * count})

        return objective

    def scan_stacks(self) -> Mapping[str, StackPath]:
        return {}

    def training_flops_per_byte(self, row_bytes: int, mean_patch_len: float) -> float:
        """The BLT's training FLOPs (3 x forward; its frozen latent still carries gradients to the
        encoder) plus the teacher's forward over the patches, per byte."""
        blt = self.config.blt
        teacher = stack_forward_flops(blt.latent, max(1, round(row_bytes / mean_patch_len)))
        teacher += 2 * (row_bytes / mean_patch_len) * blt.latent.dim * self.config.teacher_vocab
        return 3 * blt_forward_flops_per_byte(blt, row_bytes, mean_patch_len) + teacher / row_bytes

    def self_attention_flops_per_byte(self, row_bytes: int, mean_patch_len: float) -> float:
        blt = self.config.blt
        teacher = stack_attention_flops(blt.latent, max(1, round(row_bytes / mean_patch_len)))
        return 3 * blt_self_attention_flops_per_byte(blt, row_bytes, mean_patch_len) + teacher / row_bytes

    @property
    def patching(self) -> PatchingConfig:
        return self.config.blt.patching

    def with_patching(self, patching: PatchingConfig, entropy_lm: EntropyLMConfig | None) -> DistillConfig:
        blt = dataclasses.replace(self.config.blt, patching=patching, entropy_model=entropy_lm)
        return dataclasses.replace(self.config, blt=blt)

    def standalone(self, params: Mapping) -> tuple[Any, Mapping]:
        """The BLT and its parameters (the teacher's ends were only for training)."""
        return self.config.blt, params["blt"]

    @property
    def entropy_lm(self) -> EntropyLMConfig | None:
        return None
