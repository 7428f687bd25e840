"""Bits per byte of a trained model on held-out documents, every byte scored once (`blt-jax study`,
`blt-jax byteify`)."""

from __future__ import annotations

import math


def heldout_bpb(
    run: str, entropy_lm: str | None, validation: str, row_bytes: int, progress: bool = False
) -> tuple[float, int]:
    """Bits per byte of a trained run on every held-out document, scored in windows of `row_bytes`
    positions (bytes; tokens for a token transformer) sliding by about half a window (every byte
    once; past a document's first window, with at least half a window of context;
    `blt_jax.evals.scoring.score_documents`): (bits per byte, bytes scored)."""
    from blt_jax.data.sources import iter_documents
    from blt_jax.evals.scoring import load_model, score_documents

    documents = [doc.data for doc in iter_documents(validation)]
    model = load_model(run, entropy_lm)
    # A window is BOS or context, then `max_length` predicted positions: `row_bytes - 1` makes it
    # exactly a training row wide, so the byte arms' windows share one width with no padding (a row
    # of N + 1 would be padded to 1.25 N), which halved the scoring time of a small-scale arm
    # (41 s -> 21 s).
    total = sum(score_documents(model, documents, batch_size=8, max_length=row_bytes - 1, progress=progress))
    scored = sum(len(d) for d in documents)
    return -total / (math.log(2) * scored), scored
