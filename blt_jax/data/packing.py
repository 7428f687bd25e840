"""Packing a stream of patched documents into rows with a static byte budget N and patch budget P.

The documents (BOS + bytes + EOS each, with per-document patch start flags) are laid end to end and
cut into rows. A row holds n <= N real input bytes x = s[a : a + n] and their targets y = s[a + 1 :
a + n + 1]; the next row starts at a + n, so concatenating the rows' real inputs gives the stream
back exactly, and no byte is lost or repeated. Patch lengths cover the n + 1 positions a .. a + n
(the last one is the byte still to be predicted, as the model expects), padded to N + 1 by growing the
last patch, with trailing zero-length patches up to P. Every row starts with a one-byte patch (the
reference's packer enforces the same), so a patch crossing a row boundary is split there. n is N
unless the row would need more than P patches, in which case it stops at the last patch that fits
and the rest is padding (token 0, mask False).
"""

from __future__ import annotations

from collections import deque
from typing import Any

import grain
import numpy as np

ROW_KEYS = ("tokens", "targets", "mask", "patch_lengths")


def mean_patch_length(real_bytes: float, rows: int, patches: float, token_rows: bool = False) -> float:
    """Mean patch length of packed rows: each row's patches cover its real bytes plus the next-byte
    slot (see `pack_row`). Of token rows (`token_rows`, whose `patches` are their target tokens and
    `real_bytes` the bytes those stand for): mean bytes per token, the tokens being the "patches"."""
    if token_rows:
        return real_bytes / max(patches, 1)
    return (real_bytes + rows) / max(patches, 1)


def pack_row(
    tokens: np.ndarray, starts: np.ndarray, row_bytes: int, row_patches: int, units: np.ndarray | None = None
) -> tuple[dict, int]:
    """Builds one row from the head of a token stream.

    Args:
      tokens: int [L] the stream from the row's first byte on (L >= 2), at least N + 1 if available.
      starts: bool [L] patch start flags of the stream (document convention, per document).
      row_bytes: N.
      row_patches: P (>= 2), or 0 for byte rows without patches (entropy LM training).
      units: int [L] teacher-token units of the stream (`data.token_patches.token_units`), or None.

    Returns:
      (row, n): the row's arrays {tokens [N], targets [N], mask [N], patch_lengths [P]} (no
      patch_lengths when P = 0; with `units`, also patch_tokens int32 [P], the teacher id of each
      patch (-1: none), and token_mask bool [P], the patch is exactly that token: not cut by the
      row, which splits its first byte off and ends inside its last patch) and the number n of real
      input bytes it consumed.
    """
    available = min(len(tokens) - 1, row_bytes)
    x = np.zeros(row_bytes, np.int32)
    y = np.zeros(row_bytes, np.int32)
    if row_patches == 0:
        x[:available] = tokens[:available]
        y[:available] = tokens[1 : available + 1]
        return {"tokens": x, "targets": y, "mask": np.arange(row_bytes) < available}, available
    flags = starts[: available + 1].copy()
    flags[:2] = True  # the row's first byte is a patch of its own
    count = np.cumsum(flags)
    n = min(available, int(np.searchsorted(count, row_patches, side="right")) - 1)
    first = np.flatnonzero(flags[: n + 1])
    lengths = np.diff(np.append(first, n + 1))
    lengths[-1] += row_bytes - n  # padding belongs to the last patch: lengths sum to N + 1
    patch_lengths = np.zeros(row_patches, np.int32)
    patch_lengths[: len(lengths)] = lengths
    x[:n] = tokens[:n]
    y[:n] = tokens[1 : n + 1]
    mask = np.arange(row_bytes) < n
    row = {"tokens": x, "targets": y, "mask": mask, "patch_lengths": patch_lengths}
    if units is not None:
        row.update(_teacher_tokens(units, first, n, row_patches))
    return row, n


def _teacher_tokens(units: np.ndarray, first: np.ndarray, n: int, row_patches: int) -> dict:
    """patch_tokens int32 [P] and token_mask bool [P] of a row whose patches start at `first`."""
    ids = np.full(row_patches, -1, np.int32)
    exact = np.zeros(row_patches, bool)
    head = units[first]
    ids[: len(first)] = np.where(head >= 0, head, -1)
    # Patch j is one token when it starts at one and the next patch starts where the next token
    # does; the last patch (holding the byte still to be predicted) is never whole.
    ends = first[1:]
    exact[: len(ends)] = (head[:-1] >= 0) & (units[ends] != -1)
    return {"patch_tokens": ids, "token_mask": exact}


class _PackIterator(grain.DatasetIterator):
    """Pulls patched documents and emits rows; its state is (parent state before the first buffered
    document, offset into it), so restoring re-reads at most one row's worth of documents."""

    def __init__(self, parent: grain.DatasetIterator, row_bytes: int, row_patches: int):
        super().__init__(parent)
        self._n, self._p = row_bytes, row_patches
        self._docs: deque = deque()  # (parent state before the doc, tokens, starts, units or None)
        self._offset = 0
        self._exhausted = False

    def _fill(self) -> int:
        """Buffers documents until N + 1 tokens (from the offset) are available or the input ends."""
        have = sum(len(d[1]) for d in self._docs) - self._offset
        while have < self._n + 1 and not self._exhausted:
            state = self._parent.get_state()
            try:
                doc = next(self._parent)
            except StopIteration:
                self._exhausted = True
                break
            starts = doc.get("starts")
            starts = np.zeros(len(doc["tokens"]), bool) if starts is None else np.asarray(starts, bool)
            units = doc.get("units")
            units = None if units is None else np.asarray(units, np.int32)
            self._docs.append((state, np.asarray(doc["tokens"], np.int32), starts, units))
            have += len(doc["tokens"])
        return have

    def _head(self, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """The next `count` (or fewer) buffered tokens, flags and units (None when the documents have
        none), copying only what is needed."""
        tokens, starts, units, begin = [], [], [], self._offset
        for _, doc_tokens, doc_starts, doc_units in self._docs:
            take = doc_tokens[begin : begin + count - sum(len(t) for t in tokens)]
            tokens.append(take)
            starts.append(doc_starts[begin : begin + len(take)])
            units.append(None if doc_units is None else doc_units[begin : begin + len(take)])
            begin = 0
            if sum(len(t) for t in tokens) >= count:
                break
        joined = None if any(u is None for u in units) else np.concatenate(units)
        return np.concatenate(tokens), np.concatenate(starts), joined

    def __next__(self) -> dict:
        if self._fill() < 2:
            raise StopIteration
        tokens, starts, units = self._head(self._n + 1)
        row, used = pack_row(tokens, starts, self._n, self._p, units)
        self._offset += used
        while self._docs and self._offset >= len(self._docs[0][1]):
            self._offset -= len(self._docs[0][1])
            self._docs.popleft()
        return row

    def get_state(self) -> dict[str, Any]:
        parent = self._docs[0][0] if self._docs else self._parent.get_state()
        return {"parent": parent, "offset": int(self._offset)}

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state["parent"])
        self._docs.clear()
        self._offset = int(state["offset"])
        self._exhausted = False


class PackIterDataset(grain.IterDataset):
    """Rows of N bytes / P patches from an IterDataset of {"tokens", "starts"} documents.

    Args:
      parent: documents (BOS + bytes + EOS token ids, bool patch starts, document convention).
      row_bytes: N.
      row_patches: P, or 0 for byte rows without patch lengths.
    """

    def __init__(self, parent: grain.IterDataset, row_bytes: int, row_patches: int):
        if row_bytes < 1:
            raise ValueError(f"row_bytes must be >= 1, got {row_bytes}")
        if row_patches == 1 or row_patches < 0:
            raise ValueError(
                f"row_patches must be >= 2 (the first byte is a patch of its own), or 0, got {row_patches}"
            )
        super().__init__(parent)
        self._n, self._p = row_bytes, row_patches

    def __iter__(self) -> _PackIterator:
        return _PackIterator(self._parent.__iter__(), self._n, self._p)

    def __str__(self) -> str:
        return f"PackIterDataset(row_bytes={self._n}, row_patches={self._p})"
