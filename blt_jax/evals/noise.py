"""The input noisings of the BLT paper's robustness study (arXiv 2412.09871, section 6.1, "noised
HellaSwag"), as pure functions of (text, random generator):

    antspeak    every character in upper case, characters separated by single spaces
                ("Hi you" -> "H I   Y O U": the space itself is a character, so it stays, padded)
    drop        each character removed with probability 0.1 (10% of the characters)
    randomcase  each character upper-cased or lower-cased with probability 1/2 each
    repeat      each character, with probability 0.2, followed by 1 to 3 more copies of itself
                (uniform), so no character appears more than four times in a row from noising
    uppercase   every character in upper case

The paper noises the prompt and keeps the candidate continuations clean: the question is whether a
model still reads a corrupted context. `noise_context` does that for one request.

Seeding: the generator of a text is derived from (seed, the text itself) through SHA-256, so a
context shared by the four choices of an item is noised the same way for each, the result does not
depend on request order or batching, and it is the same in every process and Python run (unlike the
salted built-in `hash`).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable

from blt_jax.errors import InputError

DROP_RATE = 0.1
RANDOMCASE_UPPER = 0.5
REPEAT_RATE = 0.2
MAX_EXTRA_COPIES = 3  # a repeated character appears at most 4 times


def antspeak(text: str, rng: random.Random) -> str:
    del rng  # deterministic
    return " ".join(text.upper())


def drop(text: str, rng: random.Random) -> str:
    return "".join(c for c in text if rng.random() >= DROP_RATE)


def randomcase(text: str, rng: random.Random) -> str:
    return "".join(c.upper() if rng.random() < RANDOMCASE_UPPER else c.lower() for c in text)


def repeat(text: str, rng: random.Random) -> str:
    pieces = []
    for c in text:
        copies = 1 + (rng.randint(1, MAX_EXTRA_COPIES) if rng.random() < REPEAT_RATE else 0)
        pieces.append(c * copies)
    return "".join(pieces)


def uppercase(text: str, rng: random.Random) -> str:
    del rng  # deterministic
    return text.upper()


NOISES: dict[str, Callable[[str, random.Random], str]] = {
    "antspeak": antspeak,
    "drop": drop,
    "randomcase": randomcase,
    "repeat": repeat,
    "uppercase": uppercase,
}


def check_noise(name: str | None) -> str | None:
    """`name` lower-cased if it is a noising (or None for none).

    Raises:
      InputError: naming the known noisings.
    """
    if name is None or name == "" or name == "none":
        return None
    key = name.lower()
    if key not in NOISES:
        raise InputError(f"unknown noise {name!r}; choose one of {', '.join(NOISES)} (or none)")
    return key


def text_rng(text: str, seed: int) -> random.Random:
    """A generator determined by (seed, text) alone (see the module docstring)."""
    digest = hashlib.sha256(f"{seed}\0{text}".encode("utf-8", errors="surrogatepass")).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def noise_context(name: str | None, text: str, seed: int = 0) -> str:
    """`text` noised by the noising `name` (None: unchanged), reproducibly from (seed, text)."""
    key = check_noise(name)
    if key is None:
        return text
    return NOISES[key](text, text_rng(text, seed))


def noise_list(spec: str | None) -> list[str | None]:
    """The noisings a `--noise` value names: comma-separated names, "none" for the clean run,
    "all" for the clean run and every noising.

    Raises:
      InputError: on an unknown name.
    """
    names: list[str | None] = []
    for part in (spec or "none").split(","):
        part = part.strip().lower()
        if not part:
            continue
        picked = [None, *NOISES] if part == "all" else [check_noise(part)]
        names += [n for n in picked if n not in names]
    return names or [None]
