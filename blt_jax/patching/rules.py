"""Patch boundary rules as pure, jittable, per-row functions with static shapes.

Every rule returns start flags, bool [B, L]: True where a patch begins. Positions 0 and 1 always
start a patch (the first patch is the single BOS / first byte). Two length conventions:
  * next-token (`include_next=True`, model forward and generation): flags over the N + 1 positions
    0..N, so lengths sum to N + 1 (the last slot is the byte still to be predicted);
  * document (`include_next=False`, per-document preprocessing and packing): flags over 0..N-1, so
    lengths sum to N.
`lengths_from_starts` (patching/ids.py) turns flags into lengths with a static patch budget P.

The rules follow the reference (`bytelatent/data/patcher.py`) exactly, except `static`, whose
reference form (first patch of k bytes) trips the model's first-patch-is-one-byte assertion; here
the first byte is its own patch and fixed k-byte patches follow.

Every function works on NumPy arrays (host-side data pipeline, no compilation per document length)
and on JAX arrays / tracers (jitted model paths): the array module follows the inputs.
"""

from __future__ import annotations

from types import ModuleType

import jax
import jax.numpy as jnp
import numpy as np

from blt_jax.config import PatchingConfig
from blt_jax.errors import InputError
from blt_jax.tokenizer import OFFSET


def _xp(*arrays) -> ModuleType:
    """NumPy when every given array is a NumPy array, else jax.numpy."""
    given = [a for a in arrays if a is not None]
    return np if given and all(isinstance(a, (np.ndarray, np.generic)) for a in given) else jnp


def _cummax(x, xp: ModuleType):
    return np.maximum.accumulate(x, axis=1) if xp is np else jax.lax.cummax(x, axis=1)


def _positions(batch: int, length: int, xp: ModuleType = jnp):
    return xp.broadcast_to(xp.arange(length, dtype=xp.int32), (batch, length))


def _flag_positions(batch: int, length: int, positions, include_next: bool, xp: ModuleType = jnp):
    """Index within its document of every flagged position. int32 [B, N + 1] (or [B, N]).

    Without `positions` a row is one document. With them (doc-relative indices of a stream of
    concatenated documents), every document is patched as if alone; the next-token slot continues
    the last document.
    """
    if positions is None:
        return _positions(batch, length + int(include_next), xp)
    pos = xp.asarray(positions).astype(xp.int32)
    if include_next:
        pos = xp.concatenate([pos, pos[:, -1:] + 1], axis=1)
    return pos


def _finish(fire, doc_pos, first_free: int, xp: ModuleType):
    """Start flags from per-position decisions; the first `first_free` positions of every document
    (and position 0 of the row) always start a patch."""
    return fire | (doc_pos < first_free) | (xp.arange(doc_pos.shape[1]) == 0)[None]


def entropy_starts(
    entropies: jax.Array,
    config: PatchingConfig,
    include_next: bool = True,
    positions: jax.Array | None = None,
    threshold: jax.Array | float | None = None,
) -> jax.Array:
    """Start flags from per-byte entropies; the start decision for t + 1 uses H_t.

    Rules (H_t = entropies[:, t], t counted within the document):
      * global: start at t + 1 iff H_t > threshold (t >= 1); positions 0, 1 forced.
      * monotonic: start at t + 1 iff H_t - H_{t-1} > threshold (t >= 2); positions 0, 1, 2 forced.
      * combined (threshold_add set): start at t + 1 iff H_t > threshold and
        H_t - H_{t-1} > threshold_add (t >= 3); positions 0, 1, 2 forced; position 3 never starts
        (the reference's quirk: its "previous position is no start" term only ever blocks 3).

    Args:
      entropies: float [B, N] (H_0 of a document is never used).
      config: the patching configuration.
      include_next: next-token convention (flags over N + 1 positions) or document convention (N).
      positions: int [B, N] index of each byte within its document, for rows holding several
        documents (default: one document per row).
      threshold: overrides `config.threshold`; may be a traced scalar (threshold search under jit).

    Returns:
      bool [B, N + 1] (or [B, N]).
    """
    xp = _xp(entropies, positions)
    ent = entropies.astype(xp.float32)
    theta = config.threshold if threshold is None else threshold
    batch, length = ent.shape
    doc_pos = _flag_positions(batch, length, positions, include_next, xp)
    prev = xp.concatenate([ent[:, :1], ent[:, :-1]], axis=1)
    if config.monotonic:
        fire, first_free = (ent - prev) > theta, 3
    elif config.threshold_add is not None:
        fire, first_free = (ent > theta) & ((ent - prev) > config.threshold_add), 3
    else:
        fire, first_free = ent > theta, 2
    # fire[:, t] decides position t + 1.
    fire = xp.concatenate([xp.ones((batch, 1), bool), fire], axis=1)[:, : doc_pos.shape[1]]
    if config.threshold_add is not None:
        fire = fire & (doc_pos >= 4)  # decisions from t >= 3 only: position 3 never starts
    return _finish(fire, doc_pos, first_free, xp)


def is_space_like(tokens: jax.Array) -> jax.Array:
    """The reference's space-like bytes: not [0-9A-Za-z], not a UTF-8 continuation byte; specials too."""
    raw = tokens.astype(_xp(tokens).int32) - OFFSET
    return (
        (raw < ord("0"))
        | ((raw > ord("9")) & (raw < ord("A")))
        | ((raw > ord("Z")) & (raw < ord("a")))
        | ((raw > ord("z")) & (raw < 0x80))
        | (raw >= 0xC0)
    )


def space_starts(tokens: jax.Array, include_next: bool = True, positions: jax.Array | None = None) -> jax.Array:
    """Start flags of space patching: a patch starts right after a space-like byte.

    Only the first byte of a run of space-like bytes ends a patch; special ids (< 4) always do.

    Args:
      tokens: int [B, N].
      include_next: next-token (N + 1 flags) or document (N flags) convention.
      positions: int [B, N] index within the document (rows of several documents).

    Returns:
      bool [B, N + 1] (or [B, N]).
    """
    xp = _xp(tokens, positions)
    batch, length = tokens.shape
    doc_pos = _flag_positions(batch, length, positions, include_next, xp)
    space = is_space_like(tokens)
    first_of_run = space & ~xp.concatenate([xp.zeros_like(space[:, :1]), space[:, :-1]], axis=1)
    ends = first_of_run | (tokens < OFFSET)
    fire = xp.concatenate([xp.ones((batch, 1), bool), ends], axis=1)[:, : doc_pos.shape[1]]
    return _finish(fire, doc_pos, 2, xp)


def static_starts(
    batch: int, length: int, size: int, include_next: bool = True, positions=None, xp: ModuleType = jnp
) -> jax.Array:
    """Start flags of static patching: byte 0 alone, then patches of `size` bytes from position 1.

    Returns:
      bool [B, N + 1] (or [B, N]).
    """
    xp = _xp(positions) if positions is not None else xp
    doc_pos = _flag_positions(batch, length, positions, include_next, xp)
    return _finish((doc_pos - 1) % size == 0, doc_pos, 1, xp)


def byte_starts(batch: int, length: int, include_next: bool = True, xp: ModuleType = jnp) -> jax.Array:
    """Every byte its own patch. bool [B, N + 1] (or [B, N])."""
    return xp.ones((batch, length + 1 if include_next else length), bool)


def split_long_patches(starts: jax.Array, max_length: int) -> jax.Array:
    """Adds starts so that no patch is longer than `max_length` (chunks of max_length, remainder last).

    Args:
      starts: bool [B, L], position 0 a start.
      max_length: the longest allowed patch.

    Returns:
      bool [B, L].
    """
    xp = _xp(starts)
    pos = _positions(*starts.shape, xp)
    last_start = _cummax(xp.where(starts, pos, 0), xp)
    offset = pos - last_start
    return starts | ((offset > 0) & (offset % max_length == 0))


def patch_starts(
    config: PatchingConfig,
    tokens: jax.Array,
    entropies: jax.Array | None = None,
    include_next: bool = True,
    positions: jax.Array | None = None,
) -> jax.Array:
    """Start flags of the configured rule, with `max_patch_length` applied.

    Args:
      config: patching configuration (mode, thresholds, static size, max_patch_length).
      tokens: int [B, N].
      entropies: float [B, N], required by mode "entropy".
      include_next: next-token or document convention.
      positions: int [B, N] index of each byte within its document, for rows that concatenate
        documents (each is then patched as if alone); default: one document per row.

    Returns:
      bool [B, N + 1] (or [B, N]).
    """
    batch, length = tokens.shape
    xp = _xp(tokens, entropies, positions)
    if config.mode == "entropy":
        if entropies is None:
            raise ValueError("entropy patching needs entropies (run the entropy LM first)")
        starts = entropy_starts(entropies, config, include_next, positions)
    elif config.mode == "space":
        starts = space_starts(tokens, include_next, positions)
    elif config.mode == "static":
        starts = static_starts(batch, length, config.static_size, include_next, positions, xp)
    elif config.mode == "byte":
        starts = byte_starts(batch, length, include_next, xp)
    elif config.mode == "bpe":
        raise InputError(
            "bpe patches are a tokenizer's tokens, cut on the host while the corpus is read "
            "(`blt_jax.data.token_patches`); a model patched so cannot patch text on its own"
        )
    else:  # PatchingConfig validates the mode; this guards direct misuse
        raise ValueError(f"unknown patching mode {config.mode!r}")
    if config.max_patch_length is not None:
        starts = split_long_patches(starts, config.max_patch_length)
    return starts
