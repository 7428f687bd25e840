"""Stored entropies: ArrayRecord shards of {document bytes, per-token entropies (float16)} + a manifest.

A record is a msgpack map: `bytes` (the raw document), `entropies` (little-endian float16, one per
token of BOS + bytes + EOS, i.e. len(bytes) + 2 values) and `origin` (file, line or row). Shards are
written to a temporary name and renamed when complete, so a shard file that exists is whole; the
manifest (JSON, replaced atomically) records which shards are complete and what produced them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import msgpack
import numpy as np
from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter

from blt_jax import paths
from blt_jax.errors import NotFound

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def shard_name(index: int) -> str:
    return f"entropies-{index:05d}.array_record"


def shard_record_name(index: int) -> str:
    """The JSON record a pass writes beside shard `index` once the shard is complete (its counts)."""
    return f"entropies-{index:05d}.json"


def encode_record(data: bytes, entropies: np.ndarray, origin: str) -> bytes:
    if len(entropies) != len(data) + 2:
        raise ValueError(f"{origin}: {len(entropies)} entropies for {len(data)} bytes (expected bytes + 2)")
    return msgpack.packb(
        {"bytes": data, "entropies": np.asarray(entropies, "<f2").tobytes(), "origin": origin}, use_bin_type=True
    )


def decode_record(record: bytes) -> tuple[bytes, np.ndarray, str]:
    """(document bytes, float16 entropies [len + 2], origin) of one record."""
    item = msgpack.unpackb(record, raw=False)
    data, entropies = item["bytes"], np.frombuffer(item["entropies"], "<f2")
    if len(entropies) != len(data) + 2:
        raise ValueError(f"{len(entropies)} entropies for {len(data)} bytes (expected bytes + 2)")
    return data, entropies, item["origin"]


def write_shard(path: str, records: Sequence[bytes]) -> None:
    """Writes records to `path` as a whole (`paths.replacing`: a shard file that exists is complete;
    ArrayRecord writes local files only, so a gs:// shard is uploaded from a local one)."""
    with paths.replacing(path) as local:
        writer = ArrayRecordWriter(local, "group_size:1")
        for record in records:
            writer.write(record)
        writer.close()


def read_shard(path: str) -> Iterator[tuple[bytes, np.ndarray, str]]:
    """The records of one shard in order (local or gs://: ArrayRecord reads Cloud Storage itself)."""
    reader = ArrayRecordReader(path)
    try:
        for record in reader.read_all():
            yield decode_record(record)
    finally:
        reader.close()


def load_manifest(directory: str) -> dict | None:
    path = paths.join(directory, MANIFEST)
    return paths.read_json(path) if paths.exists(path) else None


def save_manifest(directory: str, manifest: dict) -> None:
    paths.write_json(paths.join(directory, MANIFEST), manifest)


def shard_paths(directory: str) -> list[str]:
    """Complete shards of a pass directory, in order (from the manifest if present)."""
    manifest = load_manifest(directory)
    if manifest is not None:
        return [paths.join(directory, s["name"]) for s in manifest["shards"]]
    if not paths.isdir(directory):
        return []
    return [
        paths.join(directory, n)
        for n in paths.listdir(directory)
        if n.startswith("entropies-") and n.endswith(".array_record")
    ]


def iter_stored(directory: str) -> Iterator[tuple[bytes, np.ndarray, str]]:
    """Every stored document of a pass directory: (bytes, float16 entropies, origin)."""
    shards = shard_paths(paths.resolve(directory))
    if not shards:
        raise NotFound(f"{directory}: no entropy shards (run `blt-jax patch` first)")
    for shard in shards:
        yield from read_shard(shard)


def sample_stored(directory: str, max_tokens: int | None = None, seed: int = 0) -> list[np.ndarray]:
    """Entropies (float32) of stored documents: all of them, or a deterministic random sample of
    about `max_tokens` tokens spread over the whole corpus."""
    manifest = load_manifest(directory) or {}
    total = (manifest.get("counts") or {}).get("tokens") or sum(s.get("tokens", 0) for s in manifest.get("shards", []))
    keep = 1.0 if not max_tokens or not total else min(1.0, max_tokens / total)
    rng = np.random.default_rng(seed)
    out = []
    for _, entropies, _ in iter_stored(directory):
        if keep >= 1.0 or rng.random() < keep:
            out.append(entropies.astype(np.float32))
    return out
