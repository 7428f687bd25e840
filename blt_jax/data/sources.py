"""Corpus sources: random-access documents (raw bytes + origin), in a deterministic order.

A corpus is named by one string:
  * "default" (or "default:validation"): the running Python's own standard library sources, split
    deterministically by path hash into train and validation; needs no download;
  * "hf:<name>[:<split>]": a Hugging Face dataset in streaming mode (optional `datasets` package;
    a stream, not random access: see `HFStream`);
  * a directory written by `blt-jax patch` (it holds `manifest.json`): documents with stored entropies;
  * a directory: every regular file below it (sorted, hidden files skipped), each read by extension;
  * a glob pattern (`data/*.jsonl`); a single file.
By extension: `.jsonl` / `.json` -> one document per line (a JSON object; text field configurable),
`.parquet` -> one document per row (column configurable), `.array_record` -> stored entropy shards,
anything else -> the whole file is one document (bytes untouched: BLT is a byte model).

Sources are random access (`len`, `[i]`) so that grain can shuffle and shard them; `[i]` returns None
for an item that is skipped: an empty document, or bad input (unreadable file, invalid JSON line,
missing field), which is also logged with file and line and counted in `SourceStats` (`strict=True`
raises `SourceError` instead). A path that does not exist fails when the corpus is opened.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import glob
import hashlib
import itertools
import json
import logging
import os
import sysconfig
import threading
from collections.abc import Iterator, Sequence

import grain
import numpy as np

from blt_jax import paths
from blt_jax.errors import InputError, MissingDependency
from blt_jax.patching.store import decode_record, shard_paths

logger = logging.getLogger("blt_jax.data")

JSONL_EXTENSIONS = (".jsonl", ".json")
PARQUET_EXTENSIONS = (".parquet",)
ARRAY_RECORD_EXTENSIONS = (".array_record",)
DEFAULT_CORPUS = "default"
VALIDATION_PERCENT = 3  # share of the default corpus's files held out (by path hash)


class SourceError(InputError):
    """The corpus cannot be read (missing path), or bad input met with strict=True."""


@dataclasses.dataclass(frozen=True)
class Document:
    """One document.

    Attributes:
      data: raw bytes.
      origin: where it came from ("file", "file:line" or "file#row").
      entropies: float16 [len(data) + 2] stored entropies of BOS + bytes + EOS, if any.
    """

    data: bytes
    origin: str
    entropies: np.ndarray | None = None


@dataclasses.dataclass
class SourceStats:
    """Counters of what reading met (process-local), for logs and manifests."""

    files: int = 0
    documents: int = 0
    bytes: int = 0
    empty: int = 0
    bad: int = 0

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


class _Reporter:
    """Counts and reports skipped items; thread-safe (grain may read from several threads)."""

    def __init__(self, strict: bool, stats: SourceStats):
        self.strict, self.stats = strict, stats
        self._lock = threading.Lock()

    def bad(self, message: str) -> None:
        with self._lock:
            self.stats.bad += 1
        if self.strict:
            raise SourceError(message)
        logger.warning("skipped: %s", message)

    def emit(self, data: bytes, origin: str, entropies: np.ndarray | None = None) -> Document | None:
        with self._lock:
            if not data:
                self.stats.empty += 1
                return None
            self.stats.documents += 1
            self.stats.bytes += len(data)
        return Document(data, origin, entropies)


class TextFiles:
    """One document per file."""

    def __init__(self, files: Sequence[str], report: _Reporter):
        self.files, self.report = list(files), report

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Document | None:
        path = self.files[index]
        try:
            data = paths.read_bytes(path)
        except (OSError, InputError) as e:
            self.report.bad(f"{path}: cannot read ({e.strerror or e})")
            return None
        return self.report.emit(data, path)


class JsonlFile:
    """One document per line of a JSON-lines file (line offsets indexed once, at open)."""

    def __init__(self, path: str, text_field: str, report: _Reporter):
        self.path, self.text_field, self.report = path, text_field, report
        offsets, position = [], 0
        with paths.open_file(path, "rb") as f:
            for line in f:
                offsets.append(position)
                position += len(line)
        self.offsets = offsets
        self._local = threading.local()

    def __len__(self) -> int:
        return len(self.offsets)

    def _line(self, index: int) -> bytes:
        handle = getattr(self._local, "handle", None)
        if handle is None:
            handle = self._local.handle = paths.open_file(self.path, "rb")
        handle.seek(self.offsets[index])
        return handle.readline()

    def __getitem__(self, index: int) -> Document | None:
        where = f"{self.path}:{index + 1}"
        line = self._line(index)
        if not line.strip():
            return self.report.emit(b"", where)
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            self.report.bad(f"{where}: invalid JSON ({e})")
            return None
        if not isinstance(record, dict) or self.text_field not in record:
            self.report.bad(f"{where}: no {self.text_field!r} field in the JSON object")
            return None
        text = record[self.text_field]
        if not isinstance(text, str):
            self.report.bad(f"{where}: field {self.text_field!r} is {type(text).__name__}, expected a string")
            return None
        return self.report.emit(text.encode("utf-8", errors="ignore"), where)


class ParquetFile:
    """One document per row of one column of a Parquet file (row groups read on demand, cached)."""

    def __init__(self, path: str, column: str, report: _Reporter):
        import pyarrow.parquet as pq

        self.path, self.column, self.report = path, column, report
        self._file = pq.ParquetFile(paths.open_file(path, "rb") if paths.is_uri(path) else path)
        names = self._file.schema_arrow.names
        if column not in names:
            raise SourceError(f"{path}: no column {column!r} (columns: {', '.join(names)})")
        sizes = [self._file.metadata.row_group(g).num_rows for g in range(self._file.num_row_groups)]
        self.starts = list(np.cumsum([0] + sizes))
        self._read_group = functools.lru_cache(maxsize=2)(self._group)
        self._lock = threading.Lock()

    def _group(self, group: int) -> list:
        return self._file.read_row_group(group, columns=[self.column]).column(0).to_pylist()

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, index: int) -> Document | None:
        group = bisect.bisect_right(self.starts, index) - 1
        with self._lock:
            value = self._read_group(group)[index - self.starts[group]]
        where = f"{self.path}#{index + 1}"
        if value is None:
            return self.report.emit(b"", where)
        data = value if isinstance(value, bytes) else str(value).encode("utf-8", errors="ignore")
        return self.report.emit(data, where)


def _unreadable(shards: Sequence[str]) -> str:
    """The first of `shards` that array_record cannot open alone (all of them if each opens)."""
    for path in shards:
        try:
            grain.sources.ArrayRecordDataSource([str(path)])
        except Exception:  # noqa: BLE001 - any failure marks it
            return str(path)
    return ", ".join(str(p) for p in shards)


def _locate(shards: Sequence[str], index: int) -> tuple[str, int]:
    """(shard, record number in it) of record `index` of the shards read as one (each opened alone:
    only after a failure, so the usual path opens them once, together)."""
    for path in shards:
        count = len(grain.sources.ArrayRecordDataSource([str(path)]))
        if index < count:
            return str(path), index
        index -= count
    raise IndexError(index)


_REWRITE = "delete it and its .json record, and run `blt-jax patch` again: it rewrites only the missing shards"


class StoredShards:
    """Documents with stored entropies from `blt-jax patch` ArrayRecord shards.

    Riegeli hashes every chunk, so a shard altered in place fails when the altered record is read: that
    record's shard and number are named then (mid-run; a shard cut short fails when opened).
    """

    def __init__(self, shards: Sequence[str], report: _Reporter):
        self._shards = [str(p) for p in shards]
        self.report = report
        try:
            self._source = grain.sources.ArrayRecordDataSource(self._shards)
        except Exception as error:  # noqa: BLE001 - array_record names no file: find the one it cannot read
            raise InputError(
                f"{_unreadable(self._shards)}: not a readable ArrayRecord shard "
                f"({type(error).__name__}: {str(error).strip() or 'cut short or altered'}); "
                f"{_REWRITE}"
            ) from None

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> Document | None:
        try:
            data, entropies, origin = decode_record(self._source[index])
        except Exception as error:  # noqa: BLE001 - riegeli's hash check and msgpack name no file
            shard, number = _locate(self._shards, index)
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise InputError(f"{shard}: record {number} is corrupt ({reason}); {_REWRITE}") from None
        return self.report.emit(data, origin, entropies)


class Concat:
    """Several sources as one, in order."""

    def __init__(self, sources: Sequence):
        self.sources = [s for s in sources if len(s)]
        self.starts = list(np.cumsum([0] + [len(s) for s in self.sources]))

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, index: int) -> Document | None:
        if not 0 <= index < len(self):
            raise IndexError(index)
        which = bisect.bisect_right(self.starts, index) - 1
        return self.sources[which][index - self.starts[which]]


def stdlib_files(split: str = "train") -> list[str]:
    """The running Python's standard-library `.py` files of one split (deterministic by path)."""
    if split not in ("train", "validation"):
        raise SourceError(f"unknown split {split!r} of the default corpus; expected 'train' or 'validation'")
    root = sysconfig.get_paths()["stdlib"]
    files = []
    for directory, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in ("site-packages", "dist-packages", "__pycache__"))
        files += [os.path.join(directory, n) for n in names if n.endswith(".py")]
    topics = os.path.join(root, "pydoc_data", "topics.py")
    if os.path.exists(topics) and topics not in files:
        files.append(topics)

    def held_out(path: str) -> bool:
        digest = hashlib.sha256(os.path.relpath(path, root).encode()).digest()
        return int.from_bytes(digest[:4], "little") % 100 < VALIDATION_PERCENT

    chosen = [f for f in files if held_out(f) == (split == "validation")]
    if not chosen:
        raise SourceError(f"no Python standard-library sources found under {root}")
    return sorted(chosen)


def _list_uri(spec: str) -> list[str]:
    """Files of a directory, glob or file on an object store (`gs://...`)."""
    from etils import epath

    if any(ch in spec for ch in "*?["):
        scheme, _, rest = spec.partition("://")
        root, _, pattern = rest.partition("/")
        files = sorted(str(p) for p in epath.Path(f"{scheme}://{root}").glob(pattern) if p.is_file())
        if not files:
            raise SourceError(f"{spec}: pattern matches no files")
        return files
    if paths.isdir(spec):
        files = paths.walk_files(spec)
        if not files:
            raise SourceError(f"{spec}: directory holds no files")
        return files
    if paths.isfile(spec):
        return [spec]
    raise SourceError(f"{spec}: no such file or directory")


def resolve_spec(spec: str) -> str:
    """A corpus spec with its path resolved (`~`, relative); named corpora ("default", "hf:...") and
    URIs unchanged."""
    if spec == DEFAULT_CORPUS or spec.startswith((DEFAULT_CORPUS + ":", HF_PREFIX)) or paths.is_uri(spec):
        return spec
    return paths.resolve(spec)


def list_files(spec: str) -> list[str]:
    """The files of a corpus spec, sorted. Raises SourceError if there are none."""
    spec = resolve_spec(spec)
    if paths.is_uri(spec):
        return _list_uri(spec)
    if os.path.isdir(spec):
        files = paths.walk_files(spec)
        if not files:
            raise SourceError(f"{spec}: directory holds no files")
        return sorted(files)
    if any(ch in spec for ch in "*?["):
        files = sorted(f for f in glob.glob(spec, recursive=True) if os.path.isfile(f))
        if not files:
            raise SourceError(f"{spec}: pattern matches no files")
        return files
    if os.path.isfile(spec):
        return [spec]
    raise SourceError(f"{spec}: no such file or directory")


def _open_file(path: str, text_field: str, report: _Reporter):
    lower = path.lower()
    try:
        if lower.endswith(JSONL_EXTENSIONS):
            return JsonlFile(path, text_field, report)
        if lower.endswith(PARQUET_EXTENSIONS):
            return ParquetFile(path, text_field, report)
        if lower.endswith(ARRAY_RECORD_EXTENSIONS):
            return StoredShards([path], report)
    except SourceError as e:
        report.bad(str(e))
        return None
    except (OSError, ValueError) as e:  # unreadable file; pyarrow raises ArrowInvalid (a ValueError)
        kind = "unreadable Parquet" if lower.endswith(PARQUET_EXTENSIONS) else "cannot read"
        report.bad(f"{path}: {kind} ({getattr(e, 'strerror', None) or e})")
        return None
    return None  # plain files are grouped into TextFiles by the caller


def open_corpus(spec: str, text_field: str = "text", strict: bool = False, stats: SourceStats | None = None):
    """A random-access source of the corpus named by `spec` (see the module docstring).

    Args:
      spec: "default[:validation]", a `blt-jax patch` output directory, a directory, glob or file.
      text_field: JSON field / Parquet column holding the text.
      strict: raise SourceError on bad input instead of skipping it.
      stats: counters to update.

    Returns:
      An object with `len()` and `[i] -> Document | None`.

    Raises:
      SourceError: at once if the spec names nothing readable.
    """
    stats = stats if stats is not None else SourceStats()
    report = _Reporter(strict, stats)
    if spec == DEFAULT_CORPUS or spec.startswith(DEFAULT_CORPUS + ":"):
        files = stdlib_files(spec.partition(":")[2] or "train")
        stats.files += len(files)
        return TextFiles(files, report)
    spec = resolve_spec(spec)
    if paths.isdir(spec) and paths.exists(paths.join(spec, "manifest.json")):
        shards = shard_paths(spec)
        if not shards:
            raise SourceError(f"{spec}: the entropy pass wrote no shards")
        stats.files += len(shards)
        return StoredShards(shards, report)
    files = list_files(spec)
    stats.files += len(files)
    parts, plain = [], []
    for path in files:
        source = _open_file(path, text_field, report)
        if source is None and not path.lower().endswith(
            JSONL_EXTENSIONS + PARQUET_EXTENSIONS + ARRAY_RECORD_EXTENSIONS
        ):
            plain.append(path)
            continue
        if plain:
            parts.append(TextFiles(plain, report))
            plain = []
        if source is not None:
            parts.append(source)
    if plain:
        parts.append(TextFiles(plain, report))
    return Concat(parts)


def iter_documents(
    spec: str,
    text_field: str = "text",
    strict: bool = False,
    stats: SourceStats | None = None,
) -> Iterator[Document]:
    """Yields the non-empty documents of a corpus in order (the corpus is opened eagerly, so a wrong
    path fails here, before any document is read)."""
    source = open_corpus(spec, text_field, strict, stats)
    return (doc for doc in (source[i] for i in range(len(source))) if doc is not None)


HF_PREFIX = "hf:"


class HFStream(grain.IterDataset):
    """A Hugging Face `datasets` dataset read in streaming mode (optional dependency).

    Spec "hf:<name>[:<split>]" (split "train" by default). Streams are not random access: this
    process takes every `process_count`-th example from `process_index`, and the iterator state is
    the number of examples taken, so a restore re-streams and skips them.

    Args:
      name: dataset name on the Hub (or a local dataset script/directory).
      split: split name.
      text_field: field holding the text.
      subset: dataset configuration name, if any.
      process_index / process_count: this process's share.
      strict / stats: bad-input handling and counters.
    """

    def __init__(
        self,
        name: str,
        split: str = "train",
        text_field: str = "text",
        subset: str | None = None,
        process_index: int = 0,
        process_count: int = 1,
        strict: bool = False,
        stats: SourceStats | None = None,
    ):
        super().__init__()
        try:
            import datasets  # noqa: F401
        except ImportError:
            raise MissingDependency(
                "reading Hugging Face datasets needs the `datasets` package: pip install datasets"
            ) from None
        self._args = (name, split, text_field, subset, process_index, process_count)
        self._report = _Reporter(strict, stats if stats is not None else SourceStats())

    def __iter__(self) -> _HFStreamIterator:
        return _HFStreamIterator(*self._args, self._report)

    def __str__(self) -> str:
        return f"HFStream({self._args[0]!r}, split={self._args[1]!r})"


class _HFStreamIterator(grain.DatasetIterator):
    def __init__(self, name, split, text_field, subset, process_index, process_count, report):
        super().__init__()
        self._args = (name, split, subset)
        self._field, self._index, self._count, self._report = text_field, process_index, process_count, report
        self._taken = 0
        self._stream = None

    def _open(self):
        import datasets

        name, split, subset = self._args
        stream = iter(datasets.load_dataset(name, subset, split=split, streaming=True))
        # This process's examples: index, index + count, ...; then skip the ones already taken.
        self._stream = itertools.islice(stream, self._index, None, self._count)
        for _ in range(self._taken):
            next(self._stream)

    def __next__(self) -> Document:
        if self._stream is None:
            self._open()
        while True:
            example = next(self._stream)
            self._taken += 1
            where = f"{self._args[0]}[{self._index + (self._taken - 1) * self._count}]"
            text = example.get(self._field) if isinstance(example, dict) else None
            if not isinstance(text, (str, bytes)):
                self._report.bad(f"{where}: no string field {self._field!r}")
                continue
            data = text if isinstance(text, bytes) else text.encode("utf-8", errors="ignore")
            doc = self._report.emit(data, where)
            if doc is not None:
                return doc

    def get_state(self) -> dict:
        return {"taken": self._taken}

    def set_state(self, state: dict) -> None:
        self._taken = int(state["taken"])
        self._stream = None
