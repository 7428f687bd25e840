"""The entropy pass (`blt-jax patch`): corpus -> per-token entropies -> ArrayRecord shards + manifest.

Entropies are computed once, with the jitted, data-parallel, cached `EntropyStreamer`, and stored as
float16; thresholds are applied later (pipeline, calibration), so a threshold change needs no
recompute. Documents are grouped into shards of a fixed number of non-empty documents in corpus order;
an interrupted pass run again with the same arguments skips the complete shards (never rewriting
them) and resumes at the first incomplete one.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
from tqdm import tqdm

from blt_jax import paths
from blt_jax.config import EntropyLMConfig
from blt_jax.data.sources import Document, SourceStats, iter_documents, resolve_spec
from blt_jax.errors import InputError
from blt_jax.models import config_to_dict
from blt_jax.patching import store
from blt_jax.patching.stream import EntropyStreamer
from blt_jax.tokenizer import encode


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


def run_pass(
    source: str,
    out_dir: str,
    config: EntropyLMConfig,
    params: Any,
    model: str,
    options: PassOptions = PassOptions(),
) -> dict:
    """Computes and stores the entropies of every document of a corpus.

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
    paths.makedirs(out_dir)
    manifest = _open_manifest(out_dir, _identity(source, config, model, options))
    done = {s["index"]: s for s in manifest["shards"]}
    stats = SourceStats()
    docs = iter_documents(source, options.text_field, options.strict, stats)
    streamer = None
    bar = tqdm(unit="B", unit_scale=True, desc="entropy pass", disable=not options.progress, smoothing=0.1)
    for index, batch in enumerate(_batches(docs, options.docs_per_shard)):
        path = paths.join(out_dir, store.shard_name(index))
        if index in done and paths.exists(path):
            if done[index]["first_origin"] != batch[0].origin or done[index]["documents"] != len(batch):
                raise PassMismatch(f"{out_dir}: shard {index} was made from other documents; the corpus changed")
            continue
        if streamer is None:  # compiled only when there is work to do
            streamer = EntropyStreamer(config, params, chunk=options.chunk, lanes=options.lanes)
        entropies = streamer([encode(doc.data) for doc in batch], on_progress=bar.update)
        store.write_shard(path, [store.encode_record(d.data, e, d.origin) for d, e in zip(batch, entropies)])
        total = float(sum(np.sum(e, dtype=np.float64) for e in entropies))
        tokens = sum(len(e) for e in entropies)
        done[index] = {
            "index": index,
            "name": store.shard_name(index),
            "documents": len(batch),
            "bytes": sum(len(d.data) for d in batch),
            "tokens": tokens,
            "entropy_sum": total,
            "mean_entropy": total / tokens,
            "first_origin": batch[0].origin,
            "last_origin": batch[-1].origin,
        }
        manifest["shards"] = [done[i] for i in sorted(done)]
        store.save_manifest(out_dir, manifest)
        bar.set_postfix(shards=len(done), docs=stats.documents)
    bar.close()
    shards = manifest["shards"]
    tokens = sum(s["tokens"] for s in shards)
    manifest["counts"] = {
        "documents": sum(s["documents"] for s in shards),
        "bytes": sum(s["bytes"] for s in shards),
        "tokens": tokens,
        "skipped_empty": stats.empty,
        "skipped_bad": stats.bad,
        "files": stats.files,
    }
    manifest["mean_entropy"] = sum(s["entropy_sum"] for s in shards) / tokens if tokens else None
    manifest["complete"] = True
    store.save_manifest(out_dir, manifest)
    return manifest
