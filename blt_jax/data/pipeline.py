"""The input pipeline (grain Dataset API): corpus -> shuffle -> repeat -> deal into shards -> encode ->
patch -> pack -> batch -> global arrays on the mesh.

    source (random access) -> shuffle(seed, per epoch) -> repeat -> shard j of S: items j, j + S, ...
      -> encode BOS + bytes + EOS, patch start flags per document (stored entropies, or space /
         static / byte) -> pack rows of N bytes / P patches -> B / S rows per step
    batch of a step = shard 0's rows, shard 1's rows, ..., shard S-1's rows -> jax.Array

A batch is dealt from S independent document streams, the data shards (`DataConfig.shards`, fixed
for the run, one per row by default), each feeding its own B / S consecutive rows of every batch.
A process reads only the shards of the rows it holds on the mesh, so the global batch of a step is
the same on 1, 2 or 64 processes, every document reaches exactly one shard, and a run resumes on
another process count: the iterator state is per shard (`get_state`: this process's shards;
`set_state`: takes its own shards out of any process's or the merged state).

Batches are dicts of NumPy arrays per process: tokens [b, N] int32, targets [b, N] int32, mask
[b, N] bool, patch_lengths [b, P] int32 (b: this process's rows), and with "bpe" patching (a token
LM's tokens as patches) patch_tokens [b, P] int32 and token_mask [b, P] bool (`packing.pack_row`);
`to_global` turns them into global arrays sharded over the mesh's batch axes with
`jax.make_array_from_process_local_data`.

With a BPE tokenizer (`DataConfig.tokenizer`), documents are encoded into BPE token ids instead of
bytes, rows hold N tokens and no patches, and batches also carry target_bytes [b, N] float32: the
bytes each target token stands for (0 where mask is False), which turn the loss into bits per byte.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence

import grain
import jax
import numpy as np

from blt_jax.config import PatchingConfig, require
from blt_jax.data.bpe import BpeTokenizer
from blt_jax.data.packing import PackIterDataset
from blt_jax.data.shards import ShardedBatches, process_share, shards_of_rows
from blt_jax.data.sources import HF_PREFIX, Document, HFStream, SourceError, SourceStats, open_corpus
from blt_jax.data.token_patches import open_model_tokenizer, token_units, unit_starts
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
      batch_size: rows per step over all processes.
      shards: S, independent document streams the batch is dealt from (0: one per row, S = B); each
        gives B / S consecutive rows of every batch. It fixes the data order of the run: the same on
        any number of processes, so a run resumes on another process count. A process holding only
        part of a shard's rows reads the whole shard (S below the process count costs reading).
        "hf:" streams are not random access: each shard streams the dataset and keeps every S-th
        example, so S streams per process.
      row_bytes: N, input bytes per row (input tokens per row with a `tokenizer`).
      row_patches: P, patches per row (budget; rows stop early rather than exceed it); 0 for byte
        rows without patches (training the entropy LM) and for token rows.
      patching: the patch rule ("entropy" needs a source with stored entropies).
      seed: shuffle seed.
      shuffle: shuffle documents (per epoch).
      num_epochs: passes over the corpus; None repeats forever.
      strict: stop on bad input instead of skipping it.
      read_threads: threads reading and patching documents.
      prefetch: documents read ahead.
      hf_subset: dataset configuration name for "hf:" sources.
      tokenizer: a BPE tokenizer file (`blt_jax.data.bpe.train_bpe`) encoding documents into token
        rows, for a token transformer (model kind "token_lm"); None: byte rows.
    """

    source: str = "default"
    text_field: str = "text"
    batch_size: int = 8
    shards: int = 0
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
    tokenizer: str | None = None

    def __post_init__(self):
        require(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        require(self.shards >= 0, "shards", f"must be >= 0 (0: one per row), got {self.shards}")
        require(
            self.batch_size % self.num_shards == 0,
            "shards",
            f"{self.shards} does not divide batch_size={self.batch_size}",
        )
        require(self.row_bytes >= 1, "row_bytes", f"must be >= 1, got {self.row_bytes}")
        require(
            self.row_patches >= 2 or self.row_patches == 0,
            "row_patches",
            f"must be >= 2 (the first byte is its own patch), or 0 for no patches, got {self.row_patches}",
        )
        require(
            self.num_epochs is None or self.num_epochs >= 1,
            "num_epochs",
            f"must be None or >= 1, got {self.num_epochs}",
        )
        require(self.read_threads >= 1, "read_threads", f"must be >= 1, got {self.read_threads}")
        require(
            self.tokenizer is None or (isinstance(self.tokenizer, str) and self.tokenizer != ""),
            "tokenizer",
            f"must be None or a tokenizer file, got {self.tokenizer!r}",
        )
        require(
            self.tokenizer is None or self.row_patches == 0,
            "row_patches",
            f"must be 0 for token rows (a tokenizer is set), got {self.row_patches}",
        )

    @property
    def num_shards(self) -> int:
        """S: the data shards (`shards`, or one per row)."""
        return self.shards or self.batch_size


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
    doc: Document,
    patching: PatchingConfig | None,
    online: OnlineEntropies | None = None,
    tokenizer: BpeTokenizer | None = None,
) -> dict:
    """Token ids (BOS + bytes + EOS) and patch start flags of one document (document convention);
    no flags when `patching` is None; with "bpe" patching also the teacher's units
    (`data.token_patches`). With a `tokenizer`: BOS + BPE tokens + EOS, no flags."""
    if tokenizer is not None:
        return {"tokens": tokenizer.encode(doc.data)}
    if patching is not None and patching.mode == "bpe":  # the teacher's tokens are the patches
        tokens, units = token_units(open_model_tokenizer(patching.tokenizer), doc.data)
        return {"tokens": tokens, "starts": unit_starts(units), "units": units}
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


def with_target_bytes(batch: dict[str, np.ndarray], token_bytes: np.ndarray) -> dict[str, np.ndarray]:
    """A batch of token rows with target_bytes float32 [b, N]: the bytes of each target token
    (`token_bytes[targets]`), 0 where mask is False."""
    counts = np.where(batch["mask"], token_bytes[batch["targets"]], 0).astype(np.float32)
    return {**batch, "target_bytes": counts}


def load_tokenizer(config: DataConfig, vocab_size: int | None = None) -> BpeTokenizer | None:
    """The BPE tokenizer of a pipeline, if it has one.

    Args:
      config: the pipeline.
      vocab_size: the vocabulary of the model reading its rows, checked to hold every token id.

    Raises:
      NotFound / InputError: no such tokenizer file, not a tokenizer file, or ids beyond `vocab_size`.
    """
    if config.tokenizer is None:
        return None
    tokenizer = BpeTokenizer.load(config.tokenizer)
    if vocab_size is not None and tokenizer.vocab_size > vocab_size:
        raise InputError(
            f"{tokenizer.path}: the tokenizer has {tokenizer.vocab_size} ids but the model's vocab_size "
            f"is {vocab_size}; set model.vocab_size to at least {tokenizer.vocab_size}"
        )
    return tokenizer


def build_dataset(
    config: DataConfig,
    rows: Sequence[int] | None = None,
    stats: SourceStats | None = None,
    online: OnlineEntropies | None = None,
) -> ShardedBatches:
    """The pipeline as a grain IterDataset of this process's rows of every batch.

    Args:
      config: what to read and how to shape it.
      rows: the global rows of a batch this process holds (default: an even split in process order,
        `process_share`; a training run passes the rows its mesh gives the process,
        `parallel.process_rows`).
      stats: counters of documents, bytes, empty and bad items met while reading.
      online: an entropy LM computing entropies of documents that have none stored.

    Raises:
      SourceError: if the corpus cannot be opened or holds too few documents (before any batch).
      NotFound / InputError: the pipeline's tokenizer file is missing or is not one.
    """
    if rows is None:
        rows = process_share(config.batch_size, jax.process_index(), jax.process_count())
    count = config.num_shards
    keep = shards_of_rows(rows, config.batch_size, count)
    shards = list(keep)
    keep = {j: offsets for j, offsets in keep.items() if offsets is not None}
    per_shard = config.batch_size // count
    patching = config.patching if config.row_patches else None
    tokenizer = load_tokenizer(config)
    prepare = functools.partial(prepare_document, patching=patching, online=online, tokenizer=tokenizer)

    def pack(docs: grain.IterDataset) -> grain.IterDataset:
        rows = PackIterDataset(docs, config.row_bytes, config.row_patches).batch(per_shard, drop_remainder=True)
        if tokenizer is None:
            return rows
        # One vectorised lookup per batch of a shard (not per token, not per row).
        return rows.map(functools.partial(with_target_bytes, token_bytes=tokenizer.token_bytes))

    if config.source.startswith(HF_PREFIX):  # streams: shard j takes examples j, j + S, ...; no global shuffle
        name, _, split = config.source[len(HF_PREFIX) :].partition(":")
        return ShardedBatches(
            {
                j: pack(
                    HFStream(
                        name, split or "train", config.text_field, config.hf_subset, j, count, config.strict, stats
                    ).map(prepare)
                )
                for j in shards
            },
            count,
            keep,
        )
    source = open_corpus(config.source, config.text_field, config.strict, stats)
    if config.num_epochs is not None and len(source) * config.num_epochs < count:
        raise SourceError(
            f"{config.source}: {len(source)} document(s) cannot feed {count} data shards; "
            "set data.shards (or the batch size) lower"
        )
    ds = grain.MapDataset.source(source)
    if config.shuffle:
        ds = ds.shuffle(seed=config.seed)  # a new order every epoch
    ds = ds.repeat(config.num_epochs)
    # The reading budget is the process's, shared by its shards.
    read = grain.ReadOptions(
        num_threads=max(1, config.read_threads // len(shards)),
        prefetch_buffer_size=max(1, config.prefetch // len(shards)),
    )
    return ShardedBatches({j: pack(ds[j::count].map(prepare).to_iter_dataset(read)) for j in shards}, count, keep)


def to_global(batch: Mapping[str, np.ndarray], sharding: jax.sharding.Sharding) -> dict[str, jax.Array]:
    """Per-process batch -> global jax.Arrays laid out by `sharding` (batch axis sharded)."""
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}
