"""A multiple-choice task made from any corpus: which of K lines comes next? HellaSwag's form
(pick the ending of a passage) on held-out bytes of your own data, so the paper's noised
evaluation (`noise.py`) runs on a corpus the model was trained for, with nothing downloaded.

An item is the text before a line (about `context_bytes` bytes, starting at a line start, ending
with the line's indentation) and K candidate lines: the true one and K - 1 lines drawn from
elsewhere in the corpus, of similar length (within a factor of two), so neither length nor
indentation gives the answer away:

    context:  "...def area(self):\\n        "
    choices:  ["return self.w * self.h", "raise ValueError(msg)", "for key in sorted(d):", "x = y"]
    label:    0

With `cut="midline"` (task `cloze_midline`) the context ends inside a line, before a space in its
second half, and the choices are rests of lines: "...self.transport" -> " = transport". Local
syntax then decides more of the answer, so small models score above chance sooner.

lm-eval scores each choice right after the context (`target_delimiter: ""`); `acc` compares the
choices' log-likelihoods, `acc_norm` their log-likelihoods per byte.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from blt_jax.errors import InputError
from blt_jax.evals import taskfiles

TASK = "cloze"
MIN_ENDING, MAX_ENDING = 12, 100  # bytes of a candidate line (its indentation stripped)
LENGTH_RATIO = 2.0  # a distractor's length is within this factor of the true line's
MAX_DOCUMENTS = 5000  # documents read at most (in a seeded random order)


CUTS = ("line", "midline")


def _lines(text: str, cut: str = "line") -> list[tuple[int, str]]:
    """(offset where the ending starts, the ending) of each candidate in `text`.

    cut "line": the ending is a whole line, stripped (the context ends with its indentation);
    "midline": the rest of a line from the first space in its second half (the context ends
    mid-line, before that space), for lines of 2 * MIN_ENDING bytes or more.
    """
    out, offset = [], 0
    for line in text.splitlines(keepends=True):
        body = line.rstrip("\r\n")
        stripped = body.strip()
        indent = len(body) - len(body.lstrip())
        if cut == "line":
            if MIN_ENDING <= len(stripped.encode("utf-8")) <= MAX_ENDING:
                out.append((offset + indent, stripped))
        elif 2 * MIN_ENDING <= len(stripped.encode("utf-8")) <= MAX_ENDING:
            space = body.find(" ", indent + len(stripped) // 2)
            ending = body[space:].rstrip() if space > 0 else ""
            if len(ending) >= MIN_ENDING // 2:
                out.append((offset + space, ending))
        offset += len(line)
    return out


def _context(text: str, start: int, context_bytes: int) -> str | None:
    """The text before `start`, about `context_bytes` long, starting at a line start (None if too
    short)."""
    window = text[max(0, start - context_bytes) : start]
    if start > context_bytes:
        newline = window.find("\n")
        window = window[newline + 1 :] if 0 <= newline < len(window) // 2 else window
    return window if len(window) >= context_bytes // 2 else None


def make_items(
    documents: Sequence[str], n: int, seed: int = 0, context_bytes: int = 256, choices: int = 4, cut: str = "line"
) -> list[dict]:
    """`n` items from the documents' lines, reproducibly from `seed`; `cut` as in `_lines`.

    Rules that give each item exactly one right answer: the distractors differ from the true line
    and from each other (as stripped text), and none of them is a line of the item's own context
    window or the true line's document at all (a repeated line there could be right too).

    Returns:
      JSON-ready rows `{"context", "choices", "label"}`.

    Raises:
      InputError: fewer than `n` items can be made, or bad sizes.
    """
    if n < 1 or choices < 2 or context_bytes < 16:
        raise InputError(f"need n >= 1, choices >= 2 and context_bytes >= 16, got {n}, {choices}, {context_bytes}")
    if cut not in CUTS:
        raise InputError(f"unknown cut {cut!r}; expected {' or '.join(CUTS)}")
    rng = random.Random(f"cloze:{seed}")
    candidates = []  # (document index, offset, stripped line)
    for index, text in enumerate(documents):
        candidates += [(index, offset, line) for offset, line in _lines(text, cut)]
    pool = sorted({line for _, _, line in candidates})
    if len(pool) < choices * 4:
        raise InputError(
            f"the corpus has {len(pool)} distinct candidate lines ({MIN_ENDING}-{MAX_ENDING} bytes); "
            f"{choices * 4} or more are needed"
        )
    rng.shuffle(candidates)
    items, used = [], set()
    for index, offset, truth in candidates:
        if len(items) == n:
            break
        context = _context(documents[index], offset, context_bytes)
        if context is None or truth in used:
            continue
        own = {line for _, line in _lines(documents[index], cut)}
        near = [line for line in pool if line not in own and 1 / LENGTH_RATIO <= len(line) / len(truth) <= LENGTH_RATIO]
        if len(near) < choices - 1:
            continue
        options = rng.sample(near, choices - 1)
        label = rng.randrange(choices)
        options.insert(label, truth)
        items.append({"context": context, "choices": options, "label": label})
        used.add(truth)
    if len(items) < n:
        raise InputError(
            f"the corpus gives {len(items)} items, fewer than the {n} asked for (a larger corpus, or a smaller --n)"
        )
    return items


def read_documents(corpus: str, seed: int = 0, limit: int = MAX_DOCUMENTS) -> list[str]:
    """Up to `limit` documents of a corpus (any spec `open_corpus` reads), in a seeded order."""
    from blt_jax.data.sources import open_corpus

    source = open_corpus(corpus)
    order = list(range(len(source)))
    random.Random(f"cloze-documents:{seed}").shuffle(order)
    texts = []
    for i in order[:limit]:
        document = source[i]
        if document is not None:
            texts.append(document.data.decode("utf-8", errors="replace"))
    return texts


def task_config() -> dict:
    """The lm-eval 0.4 config of the task (`taskfiles.write_task` adds the name and data file)."""
    return {
        "output_type": "multiple_choice",
        "doc_to_text": "context",
        "doc_to_choice": "choices",
        "doc_to_target": "label",
        "target_delimiter": "",  # the line follows its indentation directly
        "metric_list": [
            {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
            {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
        ],
    }


def task_name(cut: str) -> str:
    return TASK if cut == "line" else f"{TASK}_{cut}"


def write_task(
    directory: str,
    corpus: str = "default:validation",
    n: int = 200,
    seed: int = 0,
    context_bytes: int = 256,
    choices: int = 4,
    cut: str = "line",
) -> str:
    """Writes the task (`cloze`, or `cloze_midline`: items from `corpus`) into `directory`; returns
    its name."""
    directory = taskfiles.task_directory(directory)  # a bad directory fails before the corpus is read
    rows = make_items(read_documents(corpus, seed), n, seed, context_bytes, choices, cut)
    taskfiles.write_task(directory, task_name(cut), rows, task_config())
    return task_name(cut)
