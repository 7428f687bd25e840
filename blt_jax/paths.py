"""Paths as users type them: relative, `~`, or a `gs://` URI (the one owner of path handling).

Every path a user gives (workdir, checkpoint, corpus, output, config file) goes through `resolve`
before anything else sees it: local paths become absolute (Orbax refuses relative ones, and a
resumed run must not depend on the working directory), `~` is expanded, and URIs (`gs://...`) are
kept as they are. File operations on such paths go through the functions here, which use the
local filesystem for local paths and etils `epath` (backed by fsspec / gcsfs) for URIs, so the
rest of the package never branches on where a file lives.

Object stores have no rename and no append: `write_text` replaces an object in one upload (which is
atomic there), and local files are written to a temporary name and renamed. Every operation on a URI
is retried through Cloud Storage's transient failures for the budget of `blt_jax.storage`.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import IO, Any

from etils import epath

from blt_jax.errors import DiskFull, InputError, MissingDependency, NotFound, no_space
from blt_jax.storage import retrying

_URI_SEP = "://"


def is_uri(path: str) -> bool:
    """True for `scheme://...` paths (gs://, s3://, ...), which only epath / fsspec can open."""
    return _URI_SEP in str(path)


def resolve(path: str | os.PathLike) -> str:
    """The absolute form of a user path: `~` expanded, relative paths made absolute; URIs unchanged
    (a trailing slash dropped)."""
    text = os.fspath(path)
    if not text:
        raise InputError("empty path")
    if is_uri(text):
        return text.rstrip("/") if not text.endswith(_URI_SEP) else text
    return os.path.abspath(os.path.expanduser(text))


def join(base: str, *parts: str) -> str:
    """`base/part/...` for local paths and URIs alike."""
    if is_uri(base):
        return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])
    return os.path.join(base, *parts)


def _epath(path: str) -> epath.Path:
    if path.startswith("gs://"):
        try:
            importlib.import_module("gcsfs")  # epath reaches buckets through it
        except ImportError as e:
            raise MissingDependency(
                f"{path}: gs:// paths need gcsfs, which is not installed ({e}); "
                "pip install -c constraints.txt -e '.[gcs]'"
            ) from None
    return epath.Path(path)


def exists(path: str) -> bool:
    """True if a file or directory (a prefix holding objects, on object stores) is there."""
    return retrying(path, _epath(path).exists) if is_uri(path) else os.path.exists(path)


def isdir(path: str) -> bool:
    """True for a directory (a prefix holding objects, on object stores)."""
    return retrying(path, _epath(path).is_dir) if is_uri(path) else os.path.isdir(path)


def isfile(path: str) -> bool:
    """True for a file (an object)."""
    return retrying(path, _epath(path).is_file) if is_uri(path) else os.path.isfile(path)


def makedirs(path: str) -> None:
    """Creates a directory and its parents (on object stores, what the store needs: nothing on a
    flat bucket, folders on a hierarchical one).

    Raises:
      NotFound: the bucket does not exist.
    """
    try:
        if is_uri(path):
            retrying(path, lambda: _epath(path).mkdir(parents=True, exist_ok=True))
        else:
            os.makedirs(path, exist_ok=True)
    except FileNotFoundError as e:
        raise NotFound(f"{path}: cannot create it ({e})") from e


def listdir(path: str) -> list[str]:
    """Names of the entries of a directory, sorted."""
    if is_uri(path):
        return retrying(path, lambda: sorted(p.name for p in _epath(path).iterdir()))
    return sorted(os.listdir(path))


def walk_files(path: str) -> list[str]:
    """Every file under a directory (recursively, hidden names skipped), sorted. Object stores are
    walked level by level (gcsfs refuses recursive globs)."""
    if not is_uri(path):
        found = []
        for root, dirs, names in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            found += [os.path.join(root, n) for n in names if not n.startswith(".")]
        return sorted(found)
    found, pending = [], [_epath(path)]
    while pending:
        level = pending.pop()
        listing = retrying(str(level), lambda level=level: [(e, e.is_dir()) for e in level.iterdir()])
        for entry, is_dir in listing:
            if entry.name.startswith("."):
                continue
            if is_dir:
                pending.append(entry)
            else:
                found.append(str(entry))
    return sorted(found)


def open_file(path: str, mode: str = "rb") -> IO[Any]:
    """A file object (local: the builtin `open`; URIs: fsspec's). No append mode on URIs.

    Raises:
      NotFound: reading a file that does not exist. InputError: a directory, or no permission.
    """
    try:
        if is_uri(path):
            if "a" in mode:
                raise InputError(f"{path}: object stores cannot append; rewrite the object instead")
            return _epath(path).open(mode)
        return open(path, mode)
    except FileNotFoundError as e:
        raise NotFound(f"{path}: no such file") from e
    except (IsADirectoryError, PermissionError) as e:
        raise InputError(f"{path}: cannot open ({e.strerror or e})") from e


def read_bytes(path: str) -> bytes:
    """The whole content of a file."""

    def read() -> bytes:
        with open_file(path, "rb") as f:
            return f.read()

    return retrying(path, read) if is_uri(path) else read()


def read_text(path: str) -> str:
    """The whole content of a UTF-8 text file."""
    return read_bytes(path).decode("utf-8")


@contextlib.contextmanager
def replacing(path: str) -> Iterator[str]:
    """A local file name to write the new content of `path` into; when the block ends without an
    error, that file replaces `path` as a whole, so a reader sees the old or the new content, never
    a part (for writers that only take a local file name, e.g. ArrayRecord's).

    Local paths: a temporary name beside `path`, renamed (atomic on one filesystem). URIs: a local
    temporary file uploaded in one piece (object stores replace an object atomically).
    """
    if is_uri(path):
        with tempfile.TemporaryDirectory(prefix="blt_jax_") as scratch:
            local = os.path.join(scratch, os.path.basename(path))
            yield local
            copy_file(local, path)
        return
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        yield tmp
    except Exception as error:
        if not no_space(error):
            raise
        written = os.path.getsize(tmp) if os.path.exists(tmp) else 0
        with contextlib.suppress(OSError):
            os.remove(tmp)  # the space it took goes back; the old content of `path` is untouched
        raise DiskFull(
            f"{path}: no space left on the device ({written:,} bytes written before it ran out, "
            f"{shutil.disk_usage(os.path.dirname(path) or '.').free:,} free now)"
        ) from error
    os.replace(tmp, path)


def write_text(path: str, text: str) -> None:
    """Replaces `path` with `text` as a whole: a reader sees the old or the new content, never a part."""
    try:
        if is_uri(path):
            retrying(path, lambda: _epath(path).write_text(text))  # one upload: no temporary file needed
            return
        with replacing(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    except FileNotFoundError as e:  # a missing bucket or parent directory
        where = "no such bucket, or no access to it" if is_uri(path) else "no such directory"
        raise NotFound(f"{path}: cannot write it: {where}") from e


def read_json(path: str) -> Any:
    """The JSON value in a file.

    Raises:
      NotFound: no such file. InputError: not JSON.
    """
    try:
        return json.loads(read_text(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not valid JSON ({e})") from e


def write_json(path: str, value: Any) -> None:
    """`value` as indented JSON, replacing `path` as a whole."""
    write_text(path, json.dumps(value, indent=2))


def copy_file(src: str, dst: str) -> None:
    """Copies one file between any two places (local or URI)."""

    def copy() -> None:
        with open_file(src, "rb") as fin, open_file(dst, "wb") as fout:
            shutil.copyfileobj(fin, fout, length=8 << 20)

    if is_uri(src) or is_uri(dst):
        retrying(dst if is_uri(dst) else src, copy)
    else:
        copy()


@contextlib.contextmanager
def local_dir(path: str) -> Iterator[str]:
    """A local directory with the content of `path`: `path` itself when local; for a URI, a
    temporary copy (for readers that need local files, e.g. memory-mapped safetensors), removed
    on exit."""
    if not is_uri(path):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="blt_jax_") as scratch:
        base = path.rstrip("/") + "/"
        for remote in walk_files(path):
            local = os.path.join(scratch, remote[len(base) :])
            os.makedirs(os.path.dirname(local), exist_ok=True)
            copy_file(remote, local)
        yield scratch


@contextlib.contextmanager
def staged_dir(path: str) -> Iterator[str]:
    """A local directory to write into that ends up at `path`: `path` itself when local; for a
    URI, a temporary directory uploaded file by file when the block ends without an error."""
    if not is_uri(path):
        os.makedirs(path, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="blt_jax_") as scratch:
        yield scratch
        for local in walk_files(scratch):
            copy_file(local, join(path, os.path.relpath(local, scratch)))
