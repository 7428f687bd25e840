"""The entropy pass (`blt-jax patch`): corpus -> per-token entropies -> ArrayRecord shards + manifest.

Entropies are computed once, with the jitted, data-parallel, cached `EntropyStreamer`, and stored as
float16; thresholds are applied later (pipeline, calibration), so a threshold change needs no
recompute. Documents are grouped into shards of a fixed number of non-empty documents in corpus order;
each complete shard gets a JSON record beside it (`entropies-<k>.json`: its counts and first and last
document). An interrupted pass run again with the same arguments skips the shards that have their
record (never rewriting them) and computes the rest.

With several processes (a pod's hosts, or `launch/local_multihost.py`), every process reads the
corpus's document order and process i computes shards i, i + P, i + 2P, ... on its own devices (no
collectives); process 0 writes `manifest.json` once every process is done. A pass interrupted on P
processes resumes on any number of them.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Iterable, Iterator
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from blt_jax import paths
from blt_jax.config import EntropyLMConfig
from blt_jax.data.sources import Document, SourceStats, iter_documents, resolve_spec
from blt_jax.errors import InputError
from blt_jax.models import config_to_dict
from blt_jax.parallel import wait_for_all_processes
from blt_jax.patching import store
from blt_jax.patching.stream import EntropyStreamer
from blt_jax.tokenizer import encode

logger = logging.getLogger("blt_jax.entropy_pass")


class PassMismatch(InputError):
    """The output directory holds a pass made from another corpus or model."""


@dataclasses.dataclass(frozen=True)
class PassOptions:
    """Options of an entropy pass.

    Attributes:
      docs_per_shard: non-empty documents per output shard.
      chunk: bytes per lane per step of the streamer.
      lanes: rows per step (default: 8 per device).
      text_field: JSON field / Parquet column of the text.
      strict: stop on bad input instead of skipping it.
      progress: show a progress bar (bytes/s).
    """

    docs_per_shard: int = 1024
    chunk: int = 1024
    lanes: int | None = None
    text_field: str = "text"
    strict: bool = False
    progress: bool = True

    def __post_init__(self):
        if self.docs_per_shard < 1:
            raise InputError(f"docs_per_shard must be >= 1, got {self.docs_per_shard}")


def _batches(docs: Iterable[Document], size: int) -> Iterator[list[Document]]:
    iterator = iter(docs)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def _identity(source: str, config: EntropyLMConfig, model: str, options: PassOptions) -> dict:
    return {
        "source": resolve_spec(source),
        "text_field": options.text_field,
        "entropy_model": model,
        "entropy_config": config_to_dict(config),
        "window": config.stack.window,
        "docs_per_shard": options.docs_per_shard,
    }


def _open_manifest(out_dir: str, identity: dict) -> dict:
    manifest = store.load_manifest(out_dir)
    if manifest is None:
        return {"format_version": store.FORMAT_VERSION, **identity, "shards": [], "complete": False}
    for key, value in identity.items():
        if manifest.get(key) != value:
            raise PassMismatch(
                f"{out_dir} holds a pass with a different {key} ({manifest.get(key)!r}, now {value!r}); "
                "use another output directory or remove it"
            )
    return manifest


def _shard_record(index: int, batch: list[Document], entropies: list[np.ndarray]) -> dict:
    total = float(sum(np.sum(e, dtype=np.float64) for e in entropies))
    tokens = sum(len(e) for e in entropies)
    return {
        "index": index,
        "name": store.shard_name(index),
        "documents": len(batch),
        "bytes": sum(len(d.data) for d in batch),
        "tokens": tokens,
        "entropy_sum": total,
        "mean_entropy": total / tokens,
        "first_origin": batch[0].origin,
        "last_origin": batch[-1].origin,
        "process": jax.process_index(),
    }


def _finished(out_dir: str, manifest: dict) -> dict[int, dict | None]:
    """Shards already complete: {index: record} from the manifest, {index: None} (record not read yet)
    for those with a record file beside them."""
    names = set(paths.listdir(out_dir)) if paths.isdir(out_dir) else set()
    done: dict[int, dict | None] = {s["index"]: s for s in manifest["shards"] if s["name"] in names}
    for name in names:
        stem, _, ext = name.partition(".")
        if ext == "json" and stem.startswith("entropies-") and store.shard_name(int(stem[10:])) in names:
            done.setdefault(int(stem[10:]), None)
    return done


def _record(out_dir: str, done: dict[int, dict | None], index: int) -> dict:
    if done[index] is None:
        done[index] = paths.read_json(paths.join(out_dir, store.shard_record_name(index)))
    return done[index]


def run_pass(
    source: str,
    out_dir: str,
    config: EntropyLMConfig,
    params: Any,
    model: str,
    options: PassOptions = PassOptions(),
) -> dict:
    """Computes and stores the entropies of every document of a corpus (this process's share of the
    shards when there are several processes: call it on every one).

    Args:
      source: corpus spec (directory, glob or file, local or gs://; see data/sources.py).
      out_dir: (local or gs://) where shards and `manifest.json` go (created; resumed if it holds an earlier run).
      config: the entropy LM.
      params: its parameters.
      model: a description of the model (checkpoint path, or how it was initialised).
      options: shard size, streaming and input options.

    Returns:
      The manifest (also written to `out_dir/manifest.json`).
    """
    out_dir = paths.resolve(out_dir)
    process, processes = jax.process_index(), jax.process_count()
    lead = process == 0
    paths.makedirs(out_dir)
    manifest = _open_manifest(out_dir, _identity(source, config, model, options))
    if lead and manifest["shards"] == [] and not manifest["complete"]:
        store.save_manifest(out_dir, manifest)  # marks the directory as a pass from the start
    done = _finished(out_dir, manifest)
    stats = SourceStats()
    docs = iter_documents(source, options.text_field, options.strict, stats)
    streamer = None
    bar = tqdm(unit="B", unit_scale=True, desc="entropy pass", disable=not (options.progress and lead), smoothing=0.1)
    shards = 0
    for index, batch in enumerate(_batches(docs, options.docs_per_shard)):
        shards = index + 1
        if index % processes != process:  # another process's shard
            continue
        if index in done:
            record = _record(out_dir, done, index)
            if record["first_origin"] != batch[0].origin or record["documents"] != len(batch):
                raise PassMismatch(f"{out_dir}: shard {index} was made from other documents; the corpus changed")
            continue
        if streamer is None:  # compiled only when there is work to do; this process's devices alone
            streamer = EntropyStreamer(
                config, params, chunk=options.chunk, lanes=options.lanes, devices=jax.local_devices()
            )
        entropies = streamer([encode(doc.data) for doc in batch], on_progress=bar.update)
        store.write_shard(
            paths.join(out_dir, store.shard_name(index)),
            [store.encode_record(d.data, e, d.origin) for d, e in zip(batch, entropies)],
        )
        done[index] = _shard_record(index, batch, entropies)
        # The record comes after the shard: a shard without one is computed again.
        paths.write_json(paths.join(out_dir, store.shard_record_name(index)), done[index])
        logger.info("wrote %s (%d documents)", store.shard_name(index), len(batch))
        if processes == 1:  # the manifest lists finished shards as they come (one writer)
            manifest["shards"] = [_record(out_dir, done, i) for i in sorted(done)]
            store.save_manifest(out_dir, manifest)
        bar.set_postfix(shards=len(done), docs=stats.documents)
    bar.close()
    wait_for_all_processes("entropy pass: shards written")
    if lead:
        _complete(out_dir, manifest, done, shards, stats, processes)
    wait_for_all_processes("entropy pass: manifest written")
    return manifest if lead else store.load_manifest(out_dir)


def _complete(
    out_dir: str, manifest: dict, done: dict[int, dict | None], shards: int, stats: SourceStats, processes: int
) -> None:
    """Writes the complete manifest from every shard's record (the lead process, after all are done)."""
    for index in range(shards):
        if index not in done:  # another process's shard, written during this run
            done[index] = None
            if not paths.exists(paths.join(out_dir, store.shard_record_name(index))):
                raise InputError(
                    f"{out_dir}: shard {index} has no record; process {index % processes} did not "
                    "finish it; run the pass again to complete it"
                )
    records = [_record(out_dir, done, i) for i in range(shards)]
    tokens = sum(s["tokens"] for s in records)
    manifest["shards"] = records
    manifest["counts"] = {
        "documents": sum(s["documents"] for s in records),
        "bytes": sum(s["bytes"] for s in records),
        "tokens": tokens,
        "skipped_empty": stats.empty,
        "skipped_bad": stats.bad,
        "files": stats.files,
    }
    manifest["mean_entropy"] = sum(s["entropy_sum"] for s in records) / tokens if tokens else None
    manifest["complete"] = True
    store.save_manifest(out_dir, manifest)
