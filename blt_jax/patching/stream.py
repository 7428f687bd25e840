"""Entropies of whole documents, streamed through the entropy LM in fixed-size chunks.

Documents are laid end to end on B "lanes" (rows); each step runs one [B, C] chunk of every lane,
data-parallel over all devices, and carries each layer's keys/values of the last W - 1 positions
(W = the model's attention window) to the next step. Because a windowed stack never looks further
back than W - 1 positions *per layer*, this gives exactly the entropies of one forward pass over each
whole document, however long, with no recomputed overlap.

(Independent windows with W bytes of left context would not: a stack of L layers sees L * (W - 1)
positions back through its layers, so short overlaps change the entropies; see
tests/test_stream.py::test_short_overlap_is_not_enough.)

RoPE positions restart at 0 for every document and documents never attend to each other, so a
document's entropies do not depend on its lane, its neighbours or the chunk size.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from blt_jax.config import EntropyLMConfig
from blt_jax.nn.cache import KVCache
from blt_jax.nn.entropy_lm import EntropyLM, entropies_from_logits
from blt_jax.nn.rows import scan_rows

PAD_DOC = -2  # document id of lane padding: distinct from real documents and from empty cache slots


def assign_lanes(lengths: Sequence[int], lanes: int) -> list[list[int]]:
    """Balances documents over lanes (longest first onto the least-loaded lane).

    Returns:
      For every lane, the indices of its documents in stream order.
    """
    heap = [(0, lane) for lane in range(lanes)]
    out: list[list[int]] = [[] for _ in range(lanes)]
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        load, lane = heapq.heappop(heap)
        out[lane].append(index)
        heapq.heappush(heap, (load + lengths[index], lane))
    return out


def layout(docs: Sequence[np.ndarray], lanes: int, chunk: int):
    """Lays documents end to end on lanes.

    Args:
      docs: token id arrays, one per document.
      lanes: B.
      chunk: C; the lane length is rounded up to a multiple of it.

    Returns:
      (tokens, positions, doc ids) int32 [B, T], and for every document its (lane, start, end).
    """
    plan = assign_lanes([len(d) for d in docs], lanes)
    total = max([sum(len(docs[i]) for i in lane) for lane in plan] + [1])
    total = -(-total // chunk) * chunk
    tokens = np.zeros((lanes, total), np.int32)
    positions = np.zeros((lanes, total), np.int32)
    doc_ids = np.full((lanes, total), PAD_DOC, np.int32)
    spans: list[tuple[int, int, int]] = [(0, 0, 0)] * len(docs)
    for lane, members in enumerate(plan):
        cursor = 0
        for index in members:
            n = len(docs[index])
            tokens[lane, cursor : cursor + n] = docs[index]
            positions[lane, cursor : cursor + n] = np.arange(n)
            doc_ids[lane, cursor : cursor + n] = index
            spans[index] = (lane, cursor, cursor + n)
            cursor += n
    return tokens, positions, doc_ids, spans


class EntropyStreamer:
    """Computes per-token entropies of documents with a jitted, data-parallel, cached step.

    Args:
      config: the entropy LM (must have a sliding window).
      params: its parameters.
      chunk: C, bytes per lane per step.
      lanes: B, rows per step (default: 8 per device); a multiple of the device count.
      devices: devices to run on (default: all).
      rows_per_group: lanes computed together inside a step (the rest of the step loops over groups).
    """

    def __init__(
        self,
        config: EntropyLMConfig,
        params: Any,
        chunk: int = 1024,
        lanes: int | None = None,
        devices: Sequence[jax.Device] | None = None,
        rows_per_group: int = 1,
    ):
        if config.stack.window is None:
            raise ValueError("streaming entropies needs an entropy LM with a sliding window (stack.window)")
        devices = list(devices or jax.devices())
        lanes = lanes or 8 * len(devices)
        if lanes % len(devices):
            raise ValueError(f"lanes={lanes} must be a multiple of the {len(devices)} devices")
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        self.config, self.chunk, self.lanes = config, chunk, lanes
        self.mesh = Mesh(np.array(devices), ("data",))
        rows = self._rows = NamedSharding(self.mesh, PartitionSpec("data"))
        self.params = jax.device_put(params, NamedSharding(self.mesh, PartitionSpec()))
        st = config.stack
        self._empty = lambda: KVCache.empty(
            lanes,
            st.window - 1,
            st.n_layers,
            st.n_heads,
            st.head_dim,
            jnp.dtype(config.dtype),
        )
        cache_sharding = jax.tree_util.tree_map(lambda _: rows, jax.eval_shape(self._empty))
        module = EntropyLM(config)

        # Inside shard_map each device loops over its own lanes: no mesh sharding to respect.
        group = scan_rows(lanes // len(devices), rows_per_group, shards=1)

        def one_group(p, cache, tokens, positions, docs):
            logits, cache = module.apply({"params": p}, tokens, positions, docs, cache)
            return entropies_from_logits(logits), cache

        def local_step(p, cache, tokens, positions, docs):
            # This device's lanes, `group` at a time (lax.map): every intermediate stays small.
            n = tokens.shape[0] // group
            split = lambda x: x.reshape(n, group, *x.shape[1:])
            merge = lambda x: x.reshape(n * group, *x.shape[2:])
            xs = jax.tree_util.tree_map(split, (cache, tokens, positions, docs))
            ent, cache = jax.lax.map(lambda x: one_group(p, *x), xs)
            return merge(ent), jax.tree_util.tree_map(merge, cache)

        lane_spec = PartitionSpec("data")
        cache_spec = jax.tree_util.tree_map(lambda _: lane_spec, jax.eval_shape(self._empty))
        step = jax.shard_map(
            local_step,
            mesh=self.mesh,
            in_specs=(PartitionSpec(), cache_spec, lane_spec, lane_spec, lane_spec),
            out_specs=(lane_spec, cache_spec),
        )
        self._step = jax.jit(
            step,
            in_shardings=(NamedSharding(self.mesh, PartitionSpec()), cache_sharding, rows, rows, rows),
            out_shardings=(rows, cache_sharding),
            donate_argnums=1,
        )
        self._new_cache = jax.jit(self._empty, out_shardings=cache_sharding)

    def __call__(
        self, docs: Sequence[np.ndarray], on_progress: Callable[[int], None] | None = None
    ) -> list[np.ndarray]:
        """Entropies (nats, float32) of every token of every document.

        Args:
          docs: int token id arrays (e.g. BOS + bytes + 4 + EOS), any lengths.
          on_progress: called after each step with the number of real tokens it covered.

        Returns:
          One float32 array per document, of the document's length.
        """
        if not docs:
            return []
        tokens, positions, doc_ids, spans = layout(docs, self.lanes, self.chunk)
        out = np.zeros(tokens.shape, np.float32)
        cache = self._new_cache()
        pending = None
        for start in range(0, tokens.shape[1], self.chunk):
            window = slice(start, start + self.chunk)
            # Placed on this streamer's devices first: with several processes, jit takes no host arrays
            # for a sharded argument, even on a mesh of this process's own devices.
            inputs = jax.device_put((tokens[:, window], positions[:, window], doc_ids[:, window]), self._rows)
            ent, cache = self._step(self.params, cache, *inputs)
            if pending is not None:  # fetch the previous step while this one runs
                out[:, pending[0]] = np.asarray(pending[1])
            pending = (window, ent)
            if on_progress is not None:
                on_progress(int((doc_ids[:, window] >= 0).sum()))
        out[:, pending[0]] = np.asarray(pending[1])
        return [out[lane, begin:end].copy() for lane, begin, end in spans]
