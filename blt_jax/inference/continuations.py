"""Log-likelihoods of continuations that share contexts, each context run once.

A multiple-choice question scores every choice after the same context. Scoring each (context, choice)
text as its own row runs the context once per choice; here a batch of contexts is prefilled once
(`DecodeEngine.prefill`, right-padded rows of their own lengths), each continuation row takes a copy
of its context's state, and all continuations run as one parallel chunk (`DecodeEngine.chunk_logits`).
Patching and every stack see exactly the text a forward over context + continuation would, so the
figures are that forward's (tests/test_generate.py holds the logits to it at 1e-4).

The latent transformer runs over a static number of patches. Enough for any text is one per byte,
four or five times what a BLT makes, and the latent is the widest stack; so `ContinuationScorer` sizes
the budgets from the most patches per byte it has seen (one per two bytes before it has seen any),
checks on every batch that no row needed more, and runs a batch again with a larger budget when one
did.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from blt_jax.config import BLTConfig
from blt_jax.inference.decode import DecodeEngine

FIRST_PATCHES_PER_BYTE = 0.5  # the budgets' guess before any batch was seen (a trained BLT makes ~0.2-0.3)
MARGIN = 1.25  # budgets are this much above the densest rows seen
PATCH_MULTIPLE = 16  # budgets are rounded up to this (8 below 64): a task compiles a few programs


def continuation_logprobs(
    engine: DecodeEngine,
    context_patches: int,
    chunk_patches: int,
    params,
    entropy_params,
    contexts: jax.Array,
    lengths: jax.Array,
    continuations: jax.Array,
    continuation_lengths: jax.Array,
    parents: jax.Array,
):
    """log p(continuation byte j | context, continuation bytes < j) of every continuation row.

    Args:
      engine: a DecodeEngine with capacity >= Wc + Wx and max_patches >= both budgets' sum.
      context_patches / chunk_patches: the static patch budgets of the contexts and the chunk.
      params / entropy_params: BLT and entropy LM parameters.
      contexts: int32 [Bc, Wc] BOS + context bytes, right-padded.
      lengths: int32 [Bc] tokens of each context (BOS included), 1..Wc.
      continuations: int32 [Bx, Wx] continuation bytes, right-padded.
      continuation_lengths: int32 [Bx] bytes of each continuation, 1..Wx.
      parents: int32 [Bx] the context row of each continuation.

    Returns:
      (log-probabilities float32 [Bx, Wx], whether each byte was the argmax bool [Bx, Wx], int32 [2]
      the budgets these rows needed: patches of the longest-patched context, and of the chunk up to
      each continuation's last byte). Entries past a continuation's length are meaningless; all are
      exact when the needs are within the budgets.
    """
    state, last = engine.prefill(params, entropy_params, contexts, lengths, context_patches)
    context_need = jnp.max(state.n_closed) + 1
    state = jax.tree_util.tree_map(lambda x: x[parents], state)
    logits, closed = engine.chunk_logits(params, entropy_params, state, continuations, chunk_patches)
    # The decoder of a continuation's last byte reads chunk patch closed - 1, which must not be merged.
    closed_at_end = jnp.take_along_axis(closed, continuation_lengths[:, None] - 1, axis=1)
    chunk_need = jnp.max(closed_at_end) + 1
    # Byte 0 is predicted after the context's last byte; byte j > 0 after continuation byte j - 1.
    predictions = jnp.concatenate([last[parents][:, None], logits[:, :-1]], axis=1)
    logp = jax.nn.log_softmax(predictions.astype(jnp.float32), axis=-1)
    picked = jnp.take_along_axis(logp, continuations[..., None], axis=-1)[..., 0]
    return picked, jnp.argmax(logp, axis=-1) == continuations, jnp.stack([context_need, chunk_need])


def budget(width: int, per_byte: float) -> int:
    """Patches to run for rows of `width` bytes at `per_byte` patches per byte (with MARGIN), rounded
    up to PATCH_MULTIPLE (half that below 64) and capped at width + 1 (always enough): 448 bytes at
    0.27 -> 160, 48 bytes at 0.31 -> 24."""
    wanted = math.ceil(width * per_byte * MARGIN) + 1
    multiple = PATCH_MULTIPLE if wanted > 64 else PATCH_MULTIPLE // 2
    return min(width + 1, -(-wanted // multiple) * multiple)


class ContinuationScorer:
    """`continuation_logprobs` for one BLT configuration: compiled once per (widths, budgets), with
    budgets learned from the texts scored (see the module docstring).

    Attributes:
      config: the model configuration.
      per_byte: (contexts, continuations) the most patches per byte seen so far (None: none seen).
    """

    def __init__(self, config: BLTConfig):
        self.config = config
        self.per_byte: list[float | None] = [None, None]
        self._programs: dict[tuple[int, int, int], object] = {}

    def _compiled(self, capacity: int, context_patches: int, chunk_patches: int):
        key = (capacity, context_patches, chunk_patches)
        if key not in self._programs:
            engine = DecodeEngine(self.config, capacity, max_patches=context_patches + chunk_patches)
            self._programs[key] = jax.jit(
                functools.partial(continuation_logprobs, engine, context_patches, chunk_patches)
            )
        return self._programs[key]

    def __call__(
        self,
        params,
        entropy_params,
        contexts: np.ndarray,
        lengths: np.ndarray,
        continuations: np.ndarray,
        continuation_lengths: np.ndarray,
        parents: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(log-probabilities [Bx, Wx], argmax hits [Bx, Wx]) as `continuation_logprobs`, exact:
        a batch whose rows need more patches than budgeted is run again with enough."""
        widths = (contexts.shape[1], continuations.shape[1])
        longest = (max(int(np.max(lengths)), 1), max(int(np.max(continuation_lengths)), 1))
        arrays = [jnp.asarray(x, jnp.int32) for x in (contexts, lengths, continuations, continuation_lengths, parents)]
        while True:
            budgets = tuple(
                budget(w, FIRST_PATCHES_PER_BYTE if r is None else r) for w, r in zip(widths, self.per_byte)
            )
            fn = self._compiled(sum(widths), *budgets)
            logprob, hit, need = jax.device_get(fn(params, entropy_params, *arrays))
            # The budget adds the open patch itself; the rate is of the patches before it.
            seen = [(int(n) - 1) / n_bytes for n, n_bytes in zip(need, longest)]
            self.per_byte = [x if r is None else max(r, x) for r, x in zip(self.per_byte, seen)]
            if all(int(n) <= b for n, b in zip(need, budgets)):
                return np.asarray(logprob), np.asarray(hit)
