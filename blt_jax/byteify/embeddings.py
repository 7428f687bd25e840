"""The local encoder's embedding tables started from the teacher's token embeddings (byteification's
stage 1, option `stage1.embeddings`).

A BLT embeds byte i as its byte's row plus, for every hash table (n-gram size n, hash function f), the
row of the bucket that the n bytes ending at i hash to (`nn.hash_embed`). Where those n bytes are
exactly one of the teacher's tokens, the teacher already has an embedding of that very text. This
writes it there: into the bucket of each token whose length is a group size, and into the byte table
for the single-byte tokens. The teacher's vectors are projected onto the encoder's width by their
principal directions and scaled to the rows' initial size; tokens whose buckets collide share their
mean; every other row keeps its random initialisation.

Bolmo (arXiv 2512.15586) adds the teacher's embedding of the longest token ending at each byte as a
new input. This puts the same knowledge into the BLT's own tables instead, so the model stays the
reference architecture: exports, the Hugging Face config and cached decoding are unchanged, and no
tokenizer is needed at inference. The price: only tokens whose lengths are 1 or a group size are
covered, and colliding tokens share a row.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from blt_jax.config import BLTConfig
from blt_jax.nn.hash_embed import PRIMES, hash_ids
from blt_jax.tokenizer import OFFSET

TOK = "tok_embeddings"
HASH = "hash_embeddings"


@dataclasses.dataclass(frozen=True)
class Coverage:
    """What the teacher's table filled.

    Attributes:
      byte_rows: rows of the byte table taken from single-byte tokens (of 256).
      tokens: teacher tokens written into a hash table, per table (function-major, then group size).
      buckets: buckets those tokens filled, per table.
    """

    byte_rows: int
    tokens: tuple[int, ...]
    buckets: tuple[int, ...]

    def note(self, group_sizes: Sequence[int]) -> str:
        first = self.tokens[: len(group_sizes)]  # every hash function holds the same tokens
        per = ", ".join(f"{n}-grams {t}" for n, t in zip(group_sizes, first))
        return f"{self.byte_rows} byte rows and {sum(first)} tokens ({per}) from the teacher's table"


def principal_directions(centred: np.ndarray, dim: int) -> np.ndarray:
    """The `dim` directions of most variance of some vectors, as columns.

    Args:
      centred: [M, D] (M >= 1), their mean already subtracted.
      dim: how many (<= D).

    Returns:
      float64 [D, dim], orthonormal, in order of decreasing variance.
    """
    # eigh of the D x D covariance: cheaper than an SVD of [M, D] when M (a vocabulary) is large.
    values, vecs = np.linalg.eigh(centred.T @ centred)
    return vecs[:, np.argsort(values)[::-1][:dim]]


def projected_tokens(embedding: np.ndarray, strings: Sequence[bytes | None], dim: int, rms: float) -> np.ndarray:
    """Every token's teacher embedding on the encoder's width: centred, projected onto its principal
    directions, scaled so the projected rows' root mean square is `rms`.

    Args:
      embedding: the teacher's table [V_T, D_T].
      strings: each id's bytes (None: no text of its own), [V_T].
      dim: D_local (<= D_T).
      rms: the target root mean square per element.

    Returns:
      float32 [V_T, dim]; rows of ids without text are zero.
    """
    text = np.array(
        [s is not None for s in strings[: len(embedding)]] + [False] * max(0, len(embedding) - len(strings)), bool
    )
    out = np.zeros((len(embedding), dim), np.float32)
    if not text.any():
        return out
    rows = np.asarray(embedding, np.float64)[text]
    centred = rows - rows.mean(axis=0)
    projected = centred @ principal_directions(centred, dim)
    scale = rms / max(float(np.sqrt(np.mean(projected**2))), 1e-30)
    out[text] = (projected * scale).astype(np.float32)
    return out


def _mean_into(table: np.ndarray, rows: np.ndarray, vectors: np.ndarray) -> tuple[np.ndarray, int]:
    """table with each of `rows` replaced by the mean of the vectors sent to it; (table, rows filled)."""
    out = np.array(table, np.float32, copy=True)
    if not len(rows):
        return out, 0
    sums = np.zeros_like(out)
    counts = np.zeros(len(out), np.int64)
    np.add.at(sums, rows, vectors)
    np.add.at(counts, rows, 1)
    hit = counts > 0
    out[hit] = sums[hit] / counts[hit, None]
    return out, int(hit.sum())


def token_buckets(strings: Sequence[bytes], n: int, prime: int, vocab: int) -> np.ndarray:
    """The bucket a BLT hashes each n-byte string to at its last byte (the reference's hash).

    Args:
      strings: M strings of exactly n bytes.
      n / prime / vocab: the table's n-gram size, hash prime and bucket count.

    Returns:
      int64 [M].
    """
    if not strings:
        return np.zeros(0, np.int64)
    ids = np.frombuffer(b"".join(strings), np.uint8).reshape(len(strings), n).astype(np.int32) + OFFSET
    return np.asarray(hash_ids(jnp.asarray(ids), n, prime, vocab))[:, -1].astype(np.int64)


def fresh_tables(config: BLTConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """The byte table [V, D] and stacked hash tables [T, G, D] as a new BLT initialises them."""
    from flax.linen import meta

    from blt_jax.nn.local import LocalEncoder

    variables = LocalEncoder(config).init(jax.random.key(seed), jnp.zeros((1, 1), jnp.int32), method=LocalEncoder.embed)
    params = meta.unbox(variables["params"])
    tables = {TOK: np.asarray(params[TOK]["embedding"], np.float32)}
    if HASH in params:
        tables[HASH] = np.asarray(params[HASH]["embedding"], np.float32)
    return tables


def encoder_tables(
    config: BLTConfig, embedding: np.ndarray, strings: Sequence[bytes | None], seed: int = 0
) -> tuple[dict[str, np.ndarray], Coverage]:
    """The local encoder's byte and hash tables, started from a teacher's token embeddings.

    Args:
      config: the BLT (its encoder width, byte vocabulary and hash tables).
      embedding: the teacher's token embedding table [V_T, D_T], D_T >= the encoder's width.
      strings: each teacher id's bytes (`token_strings()` of its tokenizer), [V_T].
      seed: of the random initialisation the rows no token fills keep.

    Returns:
      ({"tok_embeddings/embedding": [V, D], "hash_embeddings/embedding": [T, G, D]} (no hash tables:
      the byte table alone), what was filled).
    """
    tables = fresh_tables(config, seed)
    rms = float(np.sqrt(np.mean(tables[TOK][OFFSET:] ** 2)))
    vectors = projected_tokens(embedding, strings, config.encoder.dim, rms)
    by_length: dict[int, list[int]] = {}
    for index, s in enumerate(strings[: len(embedding)]):
        if s:
            by_length.setdefault(len(s), []).append(index)
    singles = by_length.get(1, [])
    byte_rows = np.array([strings[i][0] + OFFSET for i in singles], np.int64)
    tables[TOK], filled_bytes = _mean_into(tables[TOK], byte_rows, vectors[singles])
    tokens, buckets = [], []
    if config.hash is not None:
        hashed = tables[HASH].copy()
        table = 0
        for f in range(config.hash.n_functions):
            for n in config.hash.group_sizes:
                ids = by_length.get(n, [])
                rows = token_buckets([strings[i] for i in ids], n, PRIMES[f], config.hash.vocab)
                hashed[table], filled = _mean_into(hashed[table], rows, vectors[ids])
                tokens.append(len(ids))
                buckets.append(filled)
                table += 1
        tables[HASH] = hashed
    named = {f"{name}/embedding": value for name, value in tables.items()}
    return named, Coverage(filled_bytes, tuple(tokens), tuple(buckets))
