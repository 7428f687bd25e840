"""Batches dealt from S data shards: which shards a process reads, and one iterator over them.

A batch of B rows is cut into S blocks of B / S consecutive rows; block j always comes from data
shard j, an independent stream of documents (items j, j + S, j + 2S, ... of the shuffled corpus). A
process reads the shards of the rows it holds on the mesh and nothing else, so the global batch of a
step does not depend on how many processes build it (a process holding only part of a shard's rows
reads the whole shard and keeps its part). The iterator's state is kept per shard: a
checkpoint holds every shard's state (`ShardedBatchIterator.global_state`), and a process of a run
with another process count takes its own shards out of it (`set_state`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import numpy as np

from blt_jax.errors import InputError
from blt_jax.parallel import gather_from_processes


def process_share(batch_size: int, process_index: int, process_count: int) -> list[int]:
    """Rows of a batch held by process `process_index` of `process_count` when the batch is split
    evenly in process order (the usual layout; a mesh may differ: see `parallel.process_rows`)."""
    if batch_size % process_count:
        raise InputError(f"batch_size={batch_size} must be divisible by the {process_count} processes")
    size = batch_size // process_count
    return list(range(process_index * size, (process_index + 1) * size))


def _spans(rows: Sequence[int]) -> str:
    """ "0-3, 8-11" for rows 0, 1, 2, 3, 8, 9, 10, 11."""
    spans: list[list[int]] = []
    for row in rows:
        if spans and row == spans[-1][1] + 1:
            spans[-1][1] = row
        else:
            spans.append([row, row])
    return ", ".join(f"{a}-{b}" if b > a else str(a) for a, b in spans)


def shards_of_rows(rows: Sequence[int], batch_size: int, num_shards: int) -> dict[int, list[int] | None]:
    """The data shards feeding `rows` (global row indices of a batch): {shard: which of its B / S rows
    per step this process keeps, or None for all of them}, ascending.

    A process holding part of a shard's rows (fewer shards than processes, or the one-stream
    evaluation) reads that whole shard and keeps its part: correct on any layout, at the price of
    reading the shard once per process that needs it.
    """
    per_shard = batch_size // num_shards
    rows = sorted(set(rows))
    kept: dict[int, list[int]] = {}
    for row in rows:
        kept.setdefault(row // per_shard, []).append(row % per_shard)
    return {j: None if len(offsets) == per_shard else offsets for j, offsets in kept.items()}


class ShardedBatchIterator(grain.DatasetIterator):
    """Concatenates the next rows of each of this process's shards, in shard order.

    Args:
      shards: {shard index: iterator of {key: [B / S, ...]} arrays}.
      num_shards: S, the run's shard count (checked against restored states).
      keep: {shard index: the rows of its block this process keeps} for shards it holds only in part.
    """

    def __init__(
        self,
        shards: Mapping[int, grain.DatasetIterator],
        num_shards: int,
        keep: Mapping[int, Sequence[int]] | None = None,
    ):
        super().__init__(list(shards.values()))
        self._shards = dict(sorted(shards.items()))
        self._count = num_shards
        self._keep = dict(keep or {})

    def __next__(self) -> dict[str, np.ndarray]:
        parts = []
        for j, iterator in self._shards.items():
            part = next(iterator)
            parts.append(part if j not in self._keep else {k: v[self._keep[j]] for k, v in part.items()})
        return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}

    def get_state(self) -> dict[str, Any]:
        """This process's shards' states: {"num_shards": S, "shards": {"j": state}} (JSON-ready)."""
        return {
            "num_shards": self._count,
            "shards": {str(j): iterator.get_state() for j, iterator in self._shards.items()},
        }

    def global_state(self) -> dict[str, Any]:
        """Every shard's state, gathered from all processes (call on every process at once)."""
        merged: dict[str, Any] = {"num_shards": self._count, "shards": {}}
        for text in gather_from_processes("data state", json.dumps(self.get_state())):
            merged["shards"].update(json.loads(text)["shards"])
        return merged

    def set_state(self, state: dict[str, Any]) -> None:
        """Restores this process's shards from a state holding them (its own, or a run's merged one).

        Raises:
          InputError: if the state was saved with another shard count or lacks one of these shards.
        """
        saved = int(state.get("num_shards", -1))
        if saved != self._count:
            raise InputError(
                f"the saved data stream has {saved} shards but this run deals its batch from {self._count}; "
                f"resume with --config.data.shards={saved} (and a batch size it divides)"
            )
        missing = [j for j in self._shards if str(j) not in state["shards"]]
        if missing:
            raise InputError(
                f"the saved data state lacks shard(s) {_spans(missing)}: it holds one process's "
                "shards only; resume from a checkpoint written by this library's training loop"
            )
        for j, iterator in self._shards.items():
            iterator.set_state(state["shards"][str(j)])


class ShardedBatches(grain.IterDataset):
    """Batches of a process's rows, dealt from its data shards (see the module docstring).

    Args:
      shards: {shard index: IterDataset of {key: [B / S, ...]} batches}.
      num_shards: S.
      keep: {shard index: the rows of its block this process keeps} for shards it holds only in part.
    """

    def __init__(
        self, shards: Mapping[int, grain.IterDataset], num_shards: int, keep: Mapping[int, Sequence[int]] | None = None
    ):
        super().__init__(list(shards.values()))
        self._shards = dict(sorted(shards.items()))
        self._count = num_shards
        self._keep = dict(keep or {})

    @property
    def shards(self) -> list[int]:
        """The shards this dataset reads."""
        return list(self._shards)

    def __iter__(self) -> ShardedBatchIterator:
        return ShardedBatchIterator({j: iter(ds) for j, ds in self._shards.items()}, self._count, self._keep)

    def __str__(self) -> str:
        return f"ShardedBatches(shards {_spans(self.shards)} of {self._count})"
