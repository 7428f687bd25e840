"""Corpus readers: documents as raw bytes with their origin, in a deterministic order.

A corpus is named by one string:
  * a directory: every regular file below it (sorted, hidden files skipped), each read by extension;
  * a glob pattern (`data/*.jsonl`);
  * a single file.
By extension: `.jsonl` / `.json` -> one document per line (a JSON object; text field configurable),
`.parquet` -> one document per row (column configurable), anything else -> the whole file is one
document (bytes untouched: BLT is a byte model).

Bad input never crashes a pass: an unreadable file, an invalid JSON line or a row without the field
is reported with file and line, counted and skipped (`strict=True` makes it fatal); empty documents
are skipped and counted. A path that does not exist fails at once, before any work.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os
from collections.abc import Iterator

logger = logging.getLogger("blt_jax.data")

JSONL_EXTENSIONS = (".jsonl", ".json")
PARQUET_EXTENSIONS = (".parquet",)


class SourceError(ValueError):
    """The corpus cannot be read (missing path), or bad input met with strict=True."""


@dataclasses.dataclass(frozen=True)
class Document:
    """One document: its raw bytes and where it came from ("file", "file:line" or "file#row")."""

    data: bytes
    origin: str


@dataclasses.dataclass
class SourceStats:
    """Counters of what a read met, for logs and manifests."""

    files: int = 0
    documents: int = 0
    bytes: int = 0
    empty: int = 0
    bad: int = 0

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def list_files(spec: str) -> list[str]:
    """The files of a corpus spec, sorted. Raises SourceError if there are none."""
    if os.path.isdir(spec):
        files = []
        for root, dirs, names in os.walk(spec):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            files += [os.path.join(root, n) for n in names if not n.startswith(".")]
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


class _Reader:
    def __init__(self, text_field: str, strict: bool, stats: SourceStats):
        self.text_field, self.strict, self.stats = text_field, strict, stats

    def bad(self, message: str) -> None:
        self.stats.bad += 1
        if self.strict:
            raise SourceError(message)
        logger.warning("skipped: %s", message)

    def emit(self, data: bytes, origin: str) -> Iterator[Document]:
        if not data:
            self.stats.empty += 1
            return
        self.stats.documents += 1
        self.stats.bytes += len(data)
        yield Document(data, origin)

    def text_file(self, path: str) -> Iterator[Document]:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            self.bad(f"{path}: cannot read ({e.strerror or e})")
            return
        yield from self.emit(data, path)

    def jsonl(self, path: str) -> Iterator[Document]:
        try:
            f = open(path, "rb")
        except OSError as e:
            self.bad(f"{path}: cannot read ({e.strerror or e})")
            return
        with f:
            for number, line in enumerate(f, start=1):
                where = f"{path}:{number}"
                if not line.strip():
                    self.stats.empty += 1
                    continue
                try:
                    record = json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError) as e:
                    self.bad(f"{where}: invalid JSON ({e})")
                    continue
                if not isinstance(record, dict) or self.text_field not in record:
                    self.bad(f"{where}: no {self.text_field!r} field in the JSON object")
                    continue
                text = record[self.text_field]
                if not isinstance(text, str):
                    self.bad(f"{where}: field {self.text_field!r} is {type(text).__name__}, expected a string")
                    continue
                yield from self.emit(text.encode("utf-8", errors="ignore"), where)

    def parquet(self, path: str) -> Iterator[Document]:
        try:
            import pyarrow.parquet as pq

            table = pq.ParquetFile(path)
            if self.text_field not in table.schema_arrow.names:
                self.bad(f"{path}: no column {self.text_field!r} (columns: {', '.join(table.schema_arrow.names)})")
                return
            batches = table.iter_batches(columns=[self.text_field])
            row = 0
            for batch in batches:
                for value in batch.column(0).to_pylist():
                    row += 1
                    where = f"{path}#{row}"
                    if value is None:
                        self.stats.empty += 1
                        continue
                    data = value if isinstance(value, bytes) else str(value).encode("utf-8", errors="ignore")
                    yield from self.emit(data, where)
        except (OSError, ValueError) as e:  # pyarrow raises ArrowInvalid (a ValueError) on corrupt files
            if isinstance(e, SourceError):
                raise
            self.bad(f"{path}: unreadable Parquet ({e})")


def iter_documents(
    spec: str,
    text_field: str = "text",
    strict: bool = False,
    stats: SourceStats | None = None,
) -> Iterator[Document]:
    """Yields the non-empty documents of a corpus in a deterministic order.

    Args:
      spec: directory, glob pattern or file (see the module docstring).
      text_field: JSON field / Parquet column holding the text.
      strict: raise SourceError on bad input instead of skipping it.
      stats: counters to update (documents, bytes, empty, bad, files).

    Raises:
      SourceError: at once if the spec names no files; on bad input if strict.
    """
    files = list_files(spec)  # eager: a wrong path fails here, before any document is read
    stats = stats if stats is not None else SourceStats()
    return _read_all(files, _Reader(text_field, strict, stats))


def _read_all(files: list[str], reader: _Reader) -> Iterator[Document]:
    for path in files:
        reader.stats.files += 1
        lower = path.lower()
        if lower.endswith(JSONL_EXTENSIONS):
            yield from reader.jsonl(path)
        elif lower.endswith(PARQUET_EXTENSIONS):
            yield from reader.parquet(path)
        else:
            yield from reader.text_file(path)
