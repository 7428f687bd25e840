"""Scoring text with a BLT in batches of a few static shapes: continuation log-likelihoods (with
whether they are the greedy choice) and document log-likelihoods in overlapping windows.

Rows are sorted by length and padded on the right to a few widths (`width`), in batches of a fixed
number of rows, so XLA compiles a handful of programs, not one per request; the model returns only
the scored tokens' log-probabilities (`token_logprobs`), not [B, N, V] logits.
Right padding changes nothing before it: every stack is causal, and so is every patching rule.
Each row is patched by the model's own rule over the whole text, as a forward over it would.
"""

from __future__ import annotations

import dataclasses
import time
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


def width(length: int) -> int:
    """The padded width of a row of `length` tokens: a multiple of an eighth of the next power of two
    (at least MIN_WIDTH), so padding wastes at most a quarter of a row and a task's rows share a few
    widths (one compilation each): 389 -> 448, 1000 -> 1024, 1100 -> 1280."""
    power = 1 << (max(length, 1) - 1).bit_length()
    step = max(MIN_WIDTH, power // 8)
    return max(MIN_WIDTH, -(-length // step) * step)


def _continuation_row(index: int, context: bytes, continuation: bytes, max_length: int) -> _Row:
    if not continuation:
        raise InputError(f"request {index}: empty continuation")
    if len(continuation) > max_length:
        raise InputError(f"request {index}: a continuation of {len(continuation)} bytes exceeds max_length={max_length}")
    tokens = np.asarray(encode(context + continuation, add_eos=False), np.int32)
    # The oldest context goes first when the text is too long (BOS with it).
    return _Row(index, tokens[-(max_length + 1):], len(continuation))


def document_rows(index: int, document: bytes, max_length: int, stride: int,
                  tokenize: Callable[[bytes], np.ndarray] | None = None) -> list[_Row]:
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
        rows.append(_Row(index, tokens[max(0, stop - max_length - 1): stop], stop - end))
        end = stop
    return rows


def score_rows(model, rows: Sequence[_Row], batch_size: int, progress: bool = False,
               on_batch: Callable[[int], None] | None = None) -> list[Scored]:
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
        chunk = order[start: start + batch_size]
        n = width(max(len(rows[k].tokens) for k in chunk))
        tokens = np.full((batch_size, n), PAD_ID, np.int32)
        for r, k in enumerate(chunk):
            tokens[r, : len(rows[k].tokens)] = rows[k].tokens
        tokens[len(chunk):] = tokens[0]
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


class Throughput:
    """Counts requests and bytes over a timed span and says it in one line."""

    def __init__(self):
        self.start, self.requests, self.bytes = time.perf_counter(), 0, 0

    def add(self, requests: int, num_bytes: int) -> None:
        self.requests += requests
        self.bytes += num_bytes

    def line(self, what: str) -> str:
        seconds = max(time.perf_counter() - self.start, 1e-9)
        return (f"{what}: {self.requests} requests, {self.bytes:,} bytes in {seconds:.1f}s "
                f"({self.requests / seconds:.2f} requests/s, {self.bytes / seconds:,.0f} bytes/s)")


def load_model(path: str, entropy: str | None = None):
    """What scores text from a saved model: a `BLTModel` from a training run or model directory, an
    `api.ByteLM` when `path` is a training run of a byte-level LM (an entropy LM kind, such as the
    quickstart's baseline), an `api.TokenLM` for a run of a token transformer.

    Args:
      path: the run or directory (relative, `~` or gs://).
      entropy: the entropy LM of a BLT run patched by entropy (`from_pretrained`'s `entropy_path`).
    """
    from blt_jax import api
    from blt_jax.models import model_kind
    from blt_jax.train import runs

    kind = model_kind(runs.read_run_config(path).model).name if runs.is_training_run(path) else "blt"
    if kind == "entropy_lm":
        return api.ByteLM(*api.load_entropy_model(path))
    if kind == "token_lm":
        return api.load_token_model(path)
    return api.from_pretrained(path, entropy_path=entropy)


def score_continuations(model, pairs: Sequence[tuple[bytes, bytes]], batch_size: int = 8, max_length: int = 2048,
                        progress: bool = False) -> list[Scored]:
    """log p(continuation | context) and greediness of (context, continuation) byte pairs; each
    text is BOS + context + continuation, its oldest bytes cut beyond `max_length`."""
    rows = [_continuation_row(i, ctx, cont, max_length) for i, (ctx, cont) in enumerate(pairs)]
    return score_rows(model, rows, batch_size, progress)


def score_documents(model, documents: Sequence[bytes], batch_size: int = 8, max_length: int = 2048,
                    stride: int | None = None, progress: bool = False) -> list[float]:
    """log p(document | BOS) of each document (its bytes, not an EOS), in windows of `max_length`
    tokens sliding by `stride` (default max_length // 2) beyond the first.

    A model with an `encode(bytes) -> ids` method (a token transformer, `api.TokenLM`) is given its own
    tokens (BOS first, no EOS); the others read bytes.
    """
    stride = stride or max(1, max_length // 2)
    if not 1 <= stride <= max_length:
        raise InputError(f"stride must be in [1, max_length={max_length}], got {stride}")
    tokenize = getattr(model, "encode", None)
    rows = [row for i, doc in enumerate(documents) if doc for row in document_rows(i, doc, max_length, stride, tokenize)]
    totals = [0.0] * len(documents)
    for row, scored in zip(rows, score_rows(model, rows, batch_size, progress)):
        totals[row.index] += scored.logprob
    return totals
