"""A BLT beside its teacher, for byteification's first stage (`DistillConfig`).

The BLT's latent transformer holds the teacher's blocks (frozen in that stage), so the teacher itself
is the latent run on the teacher's token embeddings, followed by its head: only the embedding table
and the head are kept apart, under `teacher`. Patches are the teacher's tokens (`patch_tokens`: the
teacher's id of each patch), so latent position j and teacher position j stand for the same text.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from blt_jax.config import DistillConfig
from blt_jax.nn import axes
from blt_jax.nn.blt import BLT
from blt_jax.nn.layers import Dense, Embed
from blt_jax.nn.options import DEFAULT, RunOptions


class TeacherEnds(nn.Module):
    """The teacher's token embedding table and output head (or its tied table).

    Attributes:
      vocab: V_T.
      dim: D_latent.
      tied: the head is the embedding table.
      dtype / param_dtype: compute and parameter dtypes.
    """

    vocab: int
    dim: int
    tied: bool
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    def setup(self):
        self.tok_embeddings = Embed(self.vocab, self.dim, self.dim**-0.5, self.dtype, self.param_dtype)
        if not self.tied:
            self.output = Dense(self.vocab, (axes.EMBED, axes.VOCAB), self.dim**-0.5, self.dtype, self.param_dtype)

    def embed(self, ids: jax.Array) -> jax.Array:
        """int [B, P] -> [B, P, D]."""
        return self.tok_embeddings(ids)

    def head(self, h: jax.Array) -> jax.Array:
        """[B, P, D] -> fp32 logits [B, P, V_T]."""
        logits = self.tok_embeddings.attend(h) if self.tied else self.output(h)
        return logits.astype(jnp.float32)

    def __call__(self, ids: jax.Array) -> jax.Array:
        """int [B, P] -> fp32 logits [B, P, V_T] of the embeddings themselves (creates every parameter)."""
        return self.head(self.embed(ids))


class DistilledBLT(nn.Module):
    """The BLT (parameters under `blt`) and the teacher's ends (under `teacher`).

    Attributes:
      config: the distillation configuration.
      options: how the BLT runs (`nn.options`; the teacher's latent pass shares them).
    """

    config: DistillConfig
    options: RunOptions = DEFAULT

    def setup(self):
        cfg = self.config
        self.blt = BLT(cfg.blt, self.options)
        self.teacher = TeacherEnds(
            cfg.teacher_vocab,
            cfg.blt.latent.dim,
            cfg.teacher_tied,
            jnp.dtype(cfg.blt.dtype),
            jnp.dtype(cfg.blt.param_dtype),
        )

    def __call__(self, tokens: jax.Array, patch_lengths: jax.Array, patch_tokens: jax.Array):
        """The BLT's byte logits and latent states, and the teacher's on the same patches.

        Args:
          tokens: int [B, N] byte ids.
          patch_lengths: int [B, P] (as `BLT`), patches being the teacher's tokens.
          patch_tokens: int [B, P] the teacher's id of each patch (negative where unknown: a patch the
            row cut, padding; the teacher reads id 0 there, and the losses leave it out).

        Returns:
          (byte logits fp32 [B, N, 260], the BLT's latent states after block k [B, P, D], the teacher's
          after block k [B, P, D], the teacher's log p(patch token q | tokens < q) fp32 [B, P], 0 at q = 0).
        """
        k = self.config.hidden_layer
        logits, student_hidden, patch_docs = self.blt(tokens, patch_lengths, tap=k)
        ids = jnp.maximum(patch_tokens, 0)
        teacher_out, teacher_hidden = self.blt.latent_of_embeddings(self.teacher.embed(ids), patch_docs, k)
        logp = jax.nn.log_softmax(self.teacher.head(teacher_out), axis=-1)  # position q - 1 predicts q
        next_logp = jnp.take_along_axis(logp[:, :-1], ids[:, 1:, None], axis=-1)[..., 0]
        next_logp = jnp.pad(next_logp, ((0, 0), (1, 0)))
        return logits, student_hidden, teacher_hidden, next_logp
