"""The input pipeline (grain Dataset API): corpus -> shard -> shuffle -> repeat -> encode -> patch ->
pack -> batch -> global arrays on the mesh.

    source (random access) -> [process_index::process_count] -> shuffle(seed) -> repeat
      -> encode BOS + bytes + EOS, patch start flags per document (stored entropies, or space /
         static / byte) -> pack rows of N bytes / P patches -> batch -> jax.Array

Batches are dicts of NumPy arrays per process: tokens [B, N] int32, targets [B, N] int32, mask
[B, N] bool, patch_lengths [B, P] int32; `to_global` turns them into global arrays sharded over the
mesh's batch axes with `jax.make_array_from_process_local_data`. The iterator state (grain's
`get_state` / `set_state`, or grain's Orbax checkpoint handler) restores the exact next batch.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping

import grain
import jax
import numpy as np

from blt_jax.config import PatchingConfig, require
from blt_jax.data.packing import PackIterDataset
from blt_jax.data.sources import HF_PREFIX, Document, HFStream, SourceError, SourceStats, open_corpus
from blt_jax.errors import InputError
from blt_jax.patching.rules import patch_starts
from blt_jax.patching.stream import EntropyStreamer
from blt_jax.tokenizer import encode


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """What the pipeline reads and how it shapes rows.

    Attributes:
      source: corpus spec ("default", a `blt-jax patch` directory, a directory, glob or file).
      text_field: JSON field / Parquet column of the text.
      batch_size: rows per step over all processes (each process makes batch_size / process_count).
      row_bytes: N, input bytes per row.
      row_patches: P, patches per row (budget; rows stop early rather than exceed it); 0 for byte
        rows without patches (training the entropy LM).
      patching: the patch rule ("entropy" needs a source with stored entropies).
      seed: shuffle seed.
      shuffle: shuffle documents (per epoch).
      num_epochs: passes over the corpus; None repeats forever.
      strict: stop on bad input instead of skipping it.
      read_threads: threads reading and patching documents.
      prefetch: documents read ahead.
      hf_subset: dataset configuration name for "hf:" sources.
    """

    source: str = "default"
    text_field: str = "text"
    batch_size: int = 8
    row_bytes: int = 1024
    row_patches: int = 256
    patching: PatchingConfig = dataclasses.field(default_factory=lambda: PatchingConfig(mode="space"))
    seed: int = 0
    shuffle: bool = True
    num_epochs: int | None = None
    strict: bool = False
    read_threads: int = 2
    prefetch: int = 64
    hf_subset: str | None = None

    def __post_init__(self):
        require(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        require(self.row_bytes >= 1, "row_bytes", f"must be >= 1, got {self.row_bytes}")
        require(self.row_patches >= 2 or self.row_patches == 0, "row_patches",
                f"must be >= 2 (the first byte is its own patch), or 0 for no patches, got {self.row_patches}")
        require(self.num_epochs is None or self.num_epochs >= 1, "num_epochs", f"must be None or >= 1, got {self.num_epochs}")
        require(self.read_threads >= 1, "read_threads", f"must be >= 1, got {self.read_threads}")


class OnlineEntropies:
    """Entropies computed while reading, with a (small) entropy LM: for corpora without stored
    entropies, e.g. a CPU quickstart. Exact for documents of any length (the cached streamer, one
    document at a time, on one device; grain's reader threads may call it concurrently).

    Args:
      config: the entropy LM.
      params: its parameters.
      chunk: bytes per streamer step.
    """

    def __init__(self, config, params, chunk: int = 256):
        self._streamer = EntropyStreamer(config, params, chunk=chunk, lanes=1, devices=jax.devices()[:1])

    def __call__(self, tokens: np.ndarray) -> np.ndarray:
        """float32 entropies [L] of one document's tokens [L]."""
        return self._streamer([tokens])[0]


def prepare_document(
    doc: Document, patching: PatchingConfig | None, online: OnlineEntropies | None = None
) -> dict:
    """Token ids (BOS + bytes + EOS) and patch start flags of one document (document convention);
    no flags when `patching` is None."""
    tokens = encode(doc.data)
    if patching is None:
        return {"tokens": tokens}
    entropies = None
    if patching.mode == "entropy":
        if doc.entropies is not None:
            entropies = np.asarray(doc.entropies, np.float32)[None]
        elif online is not None:
            entropies = online(tokens)[None]
        else:
            raise SourceError(
                f"{doc.origin}: entropy patching needs stored entropies; run `blt-jax patch` and read "
                "its output directory, give the pipeline an entropy model (online), or choose patching "
                "mode space / static / byte"
            )
    starts = patch_starts(patching, tokens[None], entropies, include_next=False)[0]
    return {"tokens": tokens, "starts": np.asarray(starts)}


def build_dataset(
    config: DataConfig,
    process_index: int | None = None,
    process_count: int | None = None,
    stats: SourceStats | None = None,
    online: OnlineEntropies | None = None,
) -> grain.IterDataset:
    """The pipeline as a grain IterDataset of per-process batches.

    Args:
      config: what to read and how to shape it.
      process_index / process_count: this process's shard (default: jax.process_index/count()).
      stats: counters of documents, bytes, empty and bad items met while reading.
      online: an entropy LM computing entropies of documents that have none stored.

    Raises:
      SourceError: if the corpus cannot be opened or holds no documents (before any batch).
    """
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    if config.batch_size % count:
        raise InputError(f"batch_size={config.batch_size} must be divisible by the {count} processes")
    patching = config.patching if config.row_patches else None
    prepare = functools.partial(prepare_document, patching=patching, online=online)
    if config.source.startswith(HF_PREFIX):  # a stream: sharded by example, no global shuffle
        name, _, split = config.source[len(HF_PREFIX):].partition(":")
        stream = HFStream(name, split or "train", config.text_field, config.hf_subset, index, count,
                          config.strict, stats)
        packed = PackIterDataset(stream.map(prepare), config.row_bytes, config.row_patches)
        return packed.batch(config.batch_size // count, drop_remainder=True)
    source = open_corpus(config.source, config.text_field, config.strict, stats)
    if len(source) < count:
        raise SourceError(f"{config.source}: {len(source)} document(s) cannot feed {count} processes")
    ds = grain.MapDataset.source(source)[index::count]  # disjoint shard per process
    if config.shuffle:
        ds = ds.shuffle(seed=config.seed)
    ds = ds.repeat(config.num_epochs)
    ds = ds.map(prepare)
    ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=config.read_threads, prefetch_buffer_size=config.prefetch))
    ds = PackIterDataset(ds, config.row_bytes, config.row_patches)
    return ds.batch(config.batch_size // count, drop_remainder=True)


def to_global(batch: Mapping[str, np.ndarray], sharding: jax.sharding.Sharding) -> dict[str, jax.Array]:
    """Per-process batch -> global jax.Arrays laid out by `sharding` (batch axis sharded)."""
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}
