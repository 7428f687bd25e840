"""Scoring text with a BLT in batches of a few static shapes: continuation log-likelihoods (with
whether they are the greedy choice) and document log-likelihoods in overlapping windows.

Rows are sorted by length and padded on the right to a few widths (`width`), in batches of a fixed
number of rows, so XLA compiles a handful of programs, not one per request; the model returns only
the scored tokens' log-probabilities (`token_logprobs`), not [B, N, V] logits.
Right padding changes nothing before it: every stack is causal, and so is every patching rule.
Each row is patched by the model's own rule over the whole text, as a forward over it would.

Continuations that share a context (the choices of a multiple-choice question) are scored after that
context is run once, when the model can (`BLTModel.continuation_logprobs`): batches of `batch_size`
contexts and about as many continuation rows per context as the requests have on average.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
from tqdm import tqdm

from blt_jax.errors import InputError
from blt_jax.tokenizer import PAD_ID, encode

MIN_WIDTH = 64


@dataclasses.dataclass(frozen=True)
class Scored:
    """One scored span: the sum of its bytes' log-probabilities (nats) and whether every byte was
    the model's most likely one."""

    logprob: float
    greedy: bool


@dataclasses.dataclass(frozen=True)
class _Row:
    index: int  # the request it belongs to
    tokens: np.ndarray  # int32 [L]: BOS or earlier bytes, then the scored bytes
    scored: int  # how many trailing tokens are scored


def width(length: int, minimum: int = MIN_WIDTH, parts: int = 8) -> int:
    """The padded width of a row of `length` tokens: a multiple of a `parts`-th of the next power of
    two (at least `minimum`), so padding wastes at most 2 / parts of a row and a task's rows share a
    few widths (one compilation each): 389 -> 448, 1000 -> 1024, 1100 -> 1280 (parts=16: 389 -> 416)."""
    power = 1 << (max(length, 1) - 1).bit_length()
    step = max(minimum, power // parts)
    return max(minimum, -(-length // step) * step)


def _continuation_row(index: int, context: bytes, continuation: bytes, max_length: int) -> _Row:
    if not continuation:
        raise InputError(f"request {index}: empty continuation")
    if len(continuation) > max_length:
        raise InputError(
            f"request {index}: a continuation of {len(continuation)} bytes exceeds max_length={max_length}"
        )
    tokens = np.asarray(encode(context + continuation, add_eos=False), np.int32)
    # The oldest context goes first when the text is too long (BOS with it).
    return _Row(index, tokens[-(max_length + 1) :], len(continuation))


def document_rows(
    index: int, document: bytes, max_length: int, stride: int, tokenize: Callable[[bytes], np.ndarray] | None = None
) -> list[_Row]:
    """Windows scoring every token of a document once: the first window predicts its first
    max_length tokens from BOS on; each next window slides by `stride` tokens and scores only its
    last `stride` tokens, which so see at least max_length - stride tokens of context.

    Args:
      tokenize: bytes -> int [L] ids, BOS first, no EOS (default: the byte tokenizer; a token model
        passes its own, and lengths count its tokens).
    """
    tokens = np.asarray(tokenize(document) if tokenize else encode(document, add_eos=False), np.int32)
    rows = [_Row(index, tokens[: max_length + 1], min(len(tokens) - 1, max_length))]
    end = max_length + 1
    while end < len(tokens):
        stop = min(end + stride, len(tokens))
        rows.append(_Row(index, tokens[max(0, stop - max_length - 1) : stop], stop - end))
        end = stop
    return rows


def score_rows(
    model, rows: Sequence[_Row], batch_size: int, progress: bool = False, on_batch: Callable[[int], None] | None = None
) -> list[Scored]:
    """Scores rows (longest first, `batch_size` at a time, padded to `width`); results in row order.

    Args:
      model: a `BLTModel` or `api.ByteLM` (anything with `token_logprobs`).
      rows: what to score.
      batch_size: rows per forward pass (a static shape: short batches are filled with copies).
      progress: show a progress bar.
      on_batch: called with the number of rows after each batch.
    """
    order = sorted(range(len(rows)), key=lambda k: -len(rows[k].tokens))
    results: list[Scored | None] = [None] * len(rows)
    bar = tqdm(total=len(rows), disable=not progress, unit="row", desc="scoring", dynamic_ncols=True)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        n = width(max(len(rows[k].tokens) for k in chunk))
        tokens = np.full((batch_size, n), PAD_ID, np.int32)
        for r, k in enumerate(chunk):
            tokens[r, : len(rows[k].tokens)] = rows[k].tokens
        tokens[len(chunk) :] = tokens[0]
        logprob, hit = model.token_logprobs(tokens)  # [B, n - 1]: entry i is token i + 1's
        for r, k in enumerate(chunk):
            row = rows[k]
            end = len(row.tokens) - 1
            span = slice(end - row.scored, end)  # the scored tokens end - scored + 1 .. end
            results[k] = Scored(float(logprob[r, span].sum(dtype=np.float64)), bool(hit[r, span].all()))
        bar.update(len(chunk))
        if on_batch is not None:
            on_batch(len(chunk))
    bar.close()
    return results  # type: ignore[return-value]


def load_model(path: str, entropy: str | None = None):
    """What scores text from a saved model (`api.from_pretrained`): a `BLTModel`, an `api.ByteLM` for a
    byte-level LM (an entropy LM kind, such as the quickstart's baseline), an `api.TokenLM` for a token
    transformer (a run of ours or a Llama-family directory).

    Args:
      path: the run or directory (relative, `~` or gs://).
      entropy: the entropy LM of a BLT run patched by entropy (`from_pretrained`'s `entropy_path`).
    """
    from blt_jax import api

    return api.from_pretrained(path, entropy_path=entropy)


def score_continuations(
    model, pairs: Sequence[tuple[bytes, bytes]], batch_size: int = 8, max_length: int = 2048, progress: bool = False
) -> list[Scored]:
    """log p(continuation | context) and greediness of (context, continuation) byte pairs; each
    text is BOS + context + continuation, its oldest bytes cut beyond `max_length`.

    Requests whose context is shared by others (and whose texts fit `max_length`) are scored with
    the context run once (`score_shared`) when the model can; the others as one row each."""
    rows = [_continuation_row(i, ctx, cont, max_length) for i, (ctx, cont) in enumerate(pairs)]
    groups: dict[bytes, list[int]] = {}
    if hasattr(model, "continuation_logprobs"):
        for i, (ctx, cont) in enumerate(pairs):
            if len(rows[i].tokens) == 1 + len(ctx) + len(cont):  # nothing cut
                groups.setdefault(ctx, []).append(i)
    shared = [members for members in groups.values() if len(members) > 1]
    alone = sorted(set(range(len(pairs))) - {i for members in shared for i in members})
    results: list[Scored | None] = [None] * len(pairs)
    bar = tqdm(total=len(pairs), disable=not progress, unit="request", desc="scoring", dynamic_ncols=True)
    for i, scored in zip(alone, score_rows(model, [rows[i] for i in alone], batch_size, on_batch=bar.update)):
        results[i] = scored
    if shared:
        contexts = [rows[members[0]].tokens[: -len(pairs[members[0]][1])] for members in shared]
        continuations = [[rows[i].tokens[-len(pairs[i][1]) :] for i in members] for members in shared]
        for members, scored in zip(shared, score_shared(model, contexts, continuations, batch_size, bar.update)):
            for i, one in zip(members, scored):
                results[i] = one
    bar.close()
    return results  # type: ignore[return-value]


def score_shared(
    model,
    contexts: Sequence[np.ndarray],
    continuations: Sequence[Sequence[np.ndarray]],
    batch_size: int,
    on_batch: Callable[[int], None] | None = None,
) -> list[list[Scored]]:
    """Continuations scored after their shared context, each context run once per batch.

    Contexts are taken longest first, `batch_size` per batch, with up to `batch_size` times the mean
    number of continuations per context as continuation rows (a context with more is split over
    batches); widths are bucketed by `width`, so a task compiles a few programs.

    Args:
      model: has `continuation_logprobs` (a `BLTModel`).
      contexts: per group, int [Lc] BOS + context bytes.
      continuations: per group, its continuations' bytes (int [Lx] each, Lx >= 1).
      batch_size: contexts per batch.
      on_batch: called with the number of continuations after each batch.

    Returns:
      per group, one Scored per continuation.
    """
    per_context = -(-sum(map(len, continuations)) // max(len(continuations), 1))
    rows_per_batch = batch_size * per_context
    # Units of one context and at most rows_per_batch of its continuations, longest context first.
    units = [
        (g, j)
        for g in sorted(range(len(contexts)), key=lambda g: -len(contexts[g]))
        for j in range(0, len(continuations[g]), rows_per_batch)
    ]
    results: list[list[Scored | None]] = [[None] * len(c) for c in continuations]
    batch: list[tuple[int, int]] = []

    def run(batch):
        members = [
            (g, j) for g, start in batch for j in range(start, min(start + rows_per_batch, len(continuations[g])))
        ]
        # Finer context widths than rows': a context is run once for several rows, so its padding costs more.
        ctx_width = width(max(len(contexts[g]) for g, _ in batch), minimum=16, parts=16)
        cont_width = width(max(len(continuations[g][j]) for g, j in members), minimum=16)
        ctx = np.full((batch_size, ctx_width), PAD_ID, np.int32)
        lengths = np.full((batch_size,), len(contexts[batch[0][0]]), np.int32)
        for r, (g, _) in enumerate(batch):
            ctx[r, : len(contexts[g])], lengths[r] = contexts[g], len(contexts[g])
        ctx[len(batch) :] = ctx[0]  # a short batch is filled with copies: one shape per width pair
        cont = np.full((rows_per_batch, cont_width), PAD_ID, np.int32)
        cont_lengths = np.full((rows_per_batch,), len(continuations[members[0][0]][members[0][1]]), np.int32)
        parents = np.zeros((rows_per_batch,), np.int32)
        slot = {unit: r for r, unit in enumerate(batch)}
        for r, (g, j) in enumerate(members):
            cont[r, : len(continuations[g][j])], cont_lengths[r] = continuations[g][j], len(continuations[g][j])
            parents[r] = slot[(g, j - j % rows_per_batch)]
        cont[len(members) :] = cont[0]
        logprob, hit = model.continuation_logprobs(ctx, lengths, cont, cont_lengths, parents)
        for r, (g, j) in enumerate(members):
            n = len(continuations[g][j])
            results[g][j] = Scored(float(logprob[r, :n].sum(dtype=np.float64)), bool(hit[r, :n].all()))
        if on_batch is not None:
            on_batch(len(members))

    rows = 0
    for g, start in units:
        size = min(rows_per_batch, len(continuations[g]) - start)
        if batch and (len(batch) == batch_size or rows + size > rows_per_batch):
            run(batch)
            batch, rows = [], 0
        batch.append((g, start))
        rows += size
    if batch:
        run(batch)
    return results  # type: ignore[return-value]


def score_documents(
    model,
    documents: Sequence[bytes],
    batch_size: int = 8,
    max_length: int = 2048,
    stride: int | None = None,
    progress: bool = False,
) -> list[float]:
    """log p(document | BOS) of each document (its bytes, not an EOS), in windows of `max_length`
    tokens sliding by `stride` (default max_length // 2) beyond the first.

    A model with an `encode(bytes) -> ids` method (a token transformer, `api.TokenLM`) is given its own
    tokens (BOS first, no EOS); the others read bytes.
    """
    stride = stride or max(1, max_length // 2)
    if not 1 <= stride <= max_length:
        raise InputError(f"stride must be in [1, max_length={max_length}], got {stride}")
    tokenize = getattr(model, "encode", None)
    rows = [
        row for i, doc in enumerate(documents) if doc for row in document_rows(i, doc, max_length, stride, tokenize)
    ]
    totals = [0.0] * len(documents)
    for row, scored in zip(rows, score_rows(model, rows, batch_size, progress)):
        totals[row.index] += scored.logprob
    return totals
