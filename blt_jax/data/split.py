"""Held-out text and training text of a corpus, documents apart (`blt-jax study`, `blt-jax byteify`)."""

from __future__ import annotations

import os

import numpy as np

from blt_jax.errors import InputError


def pieces(data: bytes, cap: int) -> list[bytes]:
    """A document cut into pieces of at most `cap` bytes, at line ends where there is one."""
    out, start = [], 0
    while start < len(data):
        end = min(len(data), start + cap)
        if end < len(data):
            cut = data.rfind(b"\n", start, end)
            end = cut + 1 if cut >= start else end
        out.append(data[start:end])
        start = end
    return [p for p in out if p.strip()]


def _up_to(items: list[bytes], budget: int) -> list[bytes]:
    """The first pieces of a document, up to the one that reaches `budget` bytes."""
    out, total = [], 0
    for item in items:
        if total >= budget:
            break
        out.append(item)
        total += len(item)
    return out


def _write_pieces(directory: str, items: list[bytes]) -> None:
    tmp = directory + ".partial"
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    for i, data in enumerate(items):
        with open(os.path.join(tmp, f"{i:05d}.txt"), "wb") as f:
            f.write(data)
    shutil.rmtree(directory, ignore_errors=True)
    os.replace(tmp, directory)


def check_corpus(spec: str):
    """The corpus opened for random access (`open_corpus`), checked to hold a document.

    Raises:
      InputError: no documents; SourceError: the corpus cannot be read.
    """
    from blt_jax.data.sources import open_corpus

    source = open_corpus(spec)
    if len(source) < 1:
        raise InputError(f"{spec}: the corpus holds no documents")
    return source


def split_corpus(
    spec: str, train_dir: str, validation_dir: str, train_bytes: int, validation_bytes: int, seed: int = 0
) -> dict:
    """Writes held-out and training text of a corpus as plain files, documents apart.

    Documents are taken in a seeded order: the first ones are held out (about `validation_bytes`,
    at most a fifth of the documents), the next ones are training text (up to `train_bytes`). Long
    documents are cut into pieces at line ends (1/16 of the held-out budget, 1/64 of the training
    budget), so both samples mix many documents; a held-out document never reaches the training text.
    A corpus of one document (a single text file) is first cut into pieces of a quarter of the
    held-out budget, which then play the documents' part.

    Raises:
      InputError: too little text to hold some out and train on the rest.
      SourceError: the corpus cannot be read.
    """
    source = check_corpus(spec)
    if len(source) == 1:
        lone = source[0]
        units = pieces(lone.data, max(2048, validation_bytes // 4)) if lone is not None else []
        read = lambda i: units[i]
    else:
        units = range(len(source))
        read = lambda i: None if source[i] is None else source[i].data
    count = len(units)
    if count < 2:
        raise InputError(f"{spec}: too little text to hold some out and train on the rest")
    order = np.random.default_rng(seed).permutation(count)
    held, train, held_docs, train_docs = [], [], 0, 0
    held_cap, train_cap = max(2048, validation_bytes // 16), max(2048, train_bytes // 64)
    size = lambda items: sum(len(x) for x in items)
    for index in order:
        data = read(int(index))
        if data is None or not data.strip():
            continue
        if size(held) < validation_bytes and held_docs < max(1, count // 5):
            held += _up_to(pieces(data, held_cap), validation_bytes - size(held))
            held_docs += 1
        elif size(train) < train_bytes:
            train += _up_to(pieces(data, train_cap), train_bytes - size(train))
            train_docs += 1
        else:
            break
    if not held or not train:
        raise InputError(f"{spec}: too little text to hold some out and train on the rest")
    _write_pieces(validation_dir, held)
    _write_pieces(train_dir, train)
    return dict(
        train_documents=train_docs,
        train_pieces=len(train),
        train_bytes=size(train),
        validation_documents=held_docs,
        validation_pieces=len(held),
        validation_bytes=size(held),
    )


def sample_corpus(spec: str, directory: str, budget: int, seed: int = 0) -> dict:
    """Writes up to `budget` bytes of a corpus as plain files, documents in a seeded order, long ones
    cut into pieces at line ends (1/64 of the budget), as `split_corpus` writes its training text: for
    a corpus whose held-out text is given apart (`blt-jax byteify --heldout`).

    Raises:
      InputError: no text. SourceError: the corpus cannot be read.
    """
    source = check_corpus(spec)
    order = np.random.default_rng(seed).permutation(len(source))
    cap, items, documents, total = max(2048, budget // 64), [], 0, 0
    for index in order:
        if total >= budget:
            break
        item = source[int(index)]
        if item is None or not item.data.strip():
            continue
        taken = _up_to(pieces(item.data, cap), budget - total)
        items += taken
        total += sum(map(len, taken))
        documents += 1
    if not items:
        raise InputError(f"{spec}: the corpus holds no text")
    _write_pieces(directory, items)
    return dict(documents=documents, pieces=len(items), bytes=total)
