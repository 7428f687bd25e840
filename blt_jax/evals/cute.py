"""CUTE-style character-manipulation tasks (Edman et al., 2024), generated from any word list and
written as lm-evaluation-harness 0.4 tasks (reported by the BLT paper, Table 5).

Every task asks about the letters inside a word (character level) or the words inside a short
"sentence" of 5-8 words drawn from the list (word level): spell, join, contains, insert, delete,
substitute, swap (see `TASKS`). An item is a prompt of `shots` worked examples followed by the
question, each block being an instruction line, the quoted input and `Answer:`:

    Spell out the word, with a space between its letters.
    "there"
    Answer: t h e r e

    Spell out the word, with a space between its letters.
    "hello"
    Answer:

The contains tasks are multiple choice (" Yes" / " No" after "Answer:", lm-eval's space delimiter
in front of each choice); the others are generation tasks scored by exact match on the output's
first line with surrounding whitespace stripped (a model naturally answers " h e l l o").

This module is pure Python (standard library only) and only writes files; lm-eval reads them:

    write_tasks("cute_tasks")            # default word list: the embedded corpus's words
    lm_eval --include_path cute_tasks --tasks cute ...

Every rule that makes an item have exactly one right answer is in `make_items`.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import keyword
import random
import re
from collections.abc import Callable, Iterable, Mapping, Sequence

from blt_jax.errors import InputError
from blt_jax.evals import taskfiles

TASKS: dict[str, str] = {
    "spelling": 'spell a word out letter by letter: "there" -> "t h e r e"',
    "spelling_inverse": 'join spelled-out letters into the word: "t h e r e" -> "there"',
    "contains_char": "does the word contain the letter? (Yes/No)",
    "contains_word": "does the sentence contain the word? (Yes/No)",
    "ins_char": "insert a letter after every occurrence of another letter in the word",
    "ins_word": "insert a word after every occurrence of another word in the sentence",
    "del_char": "delete every occurrence of a letter from the word",
    "del_word": "delete every occurrence of a word from the sentence",
    "sub_char": "replace every occurrence of a letter in the word with another letter",
    "sub_word": "replace every occurrence of a word in the sentence with another word",
    "swap_char": "swap two letters of the word (each occurs once)",
    "swap_word": "swap two words of the sentence (each occurs once)",
    # Not in CUTE: its spelling question scored by likelihood, which separates models too small to
    # spell a word out by generation (where every such model scores 0).
    "spelling_choice": "the spelling question, as a choice among the right spelling and three misspellings "
    "of the same length (two neighbouring letters swapped; a letter replaced, twice)",
}
YES_NO_KINDS = frozenset({"contains_char", "contains_word"})  # multiple choice between CHOICES
CHOICE_KINDS = YES_NO_KINDS | {"spelling_choice"}  # multiple choice; the rest generate
CHOICES = ("Yes", "No")
SPELLING = "Spell out the word, with a space between its letters."
GROUP = "cute"
MIN_WORDS = 20  # fewer usable words cannot give distinct items with few-shot examples on other words
SENTENCE_WORDS = (5, 8)  # a word-level input holds this many words (inclusive)
REPEAT_PROBABILITY = 1 / 3  # how often a word-level edit's target word is made to occur twice
GEN_MARGIN_BYTES = 16  # max_gen_toks beyond the longest answer (the leading space, a little slack)
DEFAULT_WORD_LENGTHS = (3, 10)  # default_words keeps words of this many letters (inclusive)

# A whole run of ASCII letters not right after a backslash or a digit: escapes and numbers such as
# "\nthe" or "0xfeed" would otherwise give "nthe" or "feed" (losing a few real words is harmless).
_SOURCE_WORD = re.compile(rb"(?<![\\0-9A-Za-z])[A-Za-z]+")
_PYTHON_WORDS = frozenset(keyword.kwlist + keyword.softkwlist)  # syntax, not identifiers or prose


@dataclasses.dataclass(frozen=True)
class _Example:
    """One question with its answer.

    Attributes:
      question: the instruction line and the quoted input line.
      answer: the expected text after "Answer: " ("Yes"/"No" for the contains tasks).
      used: the words the question is about; its few-shot examples avoid them.
      choices: the candidate answers of a kind with its own choices (the answer among them), else ().
    """

    question: str
    answer: str
    used: frozenset[str]
    choices: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class _Vocabulary:
    """What items are drawn from: distinct usable words and the letters they are made of."""

    words: tuple[str, ...]
    letters: tuple[str, ...]


# Draws one example (or None if the draw does not fit the task); `yes` is the wanted answer of the
# contains tasks and is ignored by the others.
_Draw = Callable[[random.Random, _Vocabulary, bool], _Example | None]


def _question(instruction: str, text: str) -> str:
    return f'{instruction}\n"{text}"'


def _sentence(rng: random.Random, words: Sequence[str]) -> list[str]:
    """5-8 words drawn with replacement (so a word can occur more than once)."""
    return [rng.choice(words) for _ in range(rng.randint(*SENTENCE_WORDS))]


def _maybe_repeat(rng: random.Random, sentence: list[str], word: str) -> list[str]:
    """The sentence, sometimes with `word` written over another position too: the edit tasks say
    "every occurrence", which a sentence holding each word once would never test."""
    others = [i for i, token in enumerate(sentence) if token != word]
    if others and rng.random() < REPEAT_PROBABILITY:
        sentence = list(sentence)
        sentence[rng.choice(others)] = word
    return sentence


def _distinct_letters(word: str) -> list[str]:
    return sorted(set(word))  # sorted: set order of str is salted per process


def _draw_spelling(rng: random.Random, vocab: _Vocabulary, yes: bool) -> _Example:
    word = rng.choice(vocab.words)
    return _Example(_question(SPELLING, word), " ".join(word), frozenset({word}))


def _draw_spelling_choice(rng: random.Random, vocab: _Vocabulary, yes: bool) -> _Example | None:
    """The spelling question with four choices of one length (so that likelihood does not simply
    favour the shortest): the right spelling, the word with two different neighbouring letters
    swapped, and the word with one letter replaced by another, at two different positions. The swap
    changes two letters and each replacement one, at different places, so no two choices are equal."""
    word = rng.choice(vocab.words)
    pairs = [i for i in range(len(word) - 1) if word[i] != word[i + 1]]
    if len(word) < 3 or not pairs or len(vocab.letters) < 2:
        return None
    i = rng.choice(pairs)
    swapped = word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    replaced = [
        word[:j] + rng.choice([c for c in vocab.letters if c != word[j]]) + word[j + 1 :]
        for j in rng.sample(range(len(word)), 2)
    ]
    choices = [" ".join(w) for w in (word, swapped, *replaced)]
    rng.shuffle(choices)
    return _Example(_question(SPELLING, word), " ".join(word), frozenset({word}), tuple(choices))


def _draw_spelling_inverse(rng: random.Random, vocab: _Vocabulary, yes: bool) -> _Example:
    word = rng.choice(vocab.words)
    return _Example(_question("Join the spelled-out letters into one word.", " ".join(word)), word, frozenset({word}))


def _draw_contains_char(rng: random.Random, vocab: _Vocabulary, yes: bool) -> _Example | None:
    word = rng.choice(vocab.words)
    pool = _distinct_letters(word) if yes else [c for c in vocab.letters if c not in word]
    if not pool:
        return None
    letter = rng.choice(pool)
    return _Example(
        _question(f'Does the word below contain the letter "{letter}"? Answer Yes or No.', word),
        CHOICES[0] if yes else CHOICES[1],
        frozenset({word}),
    )


def _draw_contains_word(rng: random.Random, vocab: _Vocabulary, yes: bool) -> _Example | None:
    sentence = _sentence(rng, vocab.words)
    text = " ".join(sentence)
    # An absent word must not even be part of another word, so no reading of "contain" says Yes.
    pool = sorted(set(sentence)) if yes else [w for w in vocab.words if w not in text]
    if not pool:
        return None
    word = rng.choice(pool)
    return _Example(
        _question(f'Does the sentence below contain the word "{word}"? Answer Yes or No.', text),
        CHOICES[0] if yes else CHOICES[1],
        frozenset(sentence) | {word},
    )


def _letter_edit(rng: random.Random, vocab: _Vocabulary) -> tuple[str, str, str] | None:
    """(word, one of its letters, another letter of the vocabulary) for a character-level edit."""
    word = rng.choice(vocab.words)
    old = rng.choice(_distinct_letters(word))
    pool = [c for c in vocab.letters if c != old]
    return (word, old, rng.choice(pool)) if pool else None


def _word_edit(rng: random.Random, vocab: _Vocabulary) -> tuple[list[str], str, str] | None:
    """(sentence, one of its words (sometimes made to occur twice), a word not in the sentence, so
    the edited sentence reads unambiguously) for a word-level edit."""
    sentence = _sentence(rng, vocab.words)
    old = rng.choice(sentence)
    sentence = _maybe_repeat(rng, sentence, old)
    pool = [w for w in vocab.words if w not in sentence]
    return (sentence, old, rng.choice(pool)) if pool else None


def _draw_ins_char(rng: random.Random, vocab: _Vocabulary, yes: bool) -> _Example | None:
    edit = _letter_edit(rng, vocab)
    if edit is None:
        return None
    word, after, new = edit
    answer = "".join(c + new if c == after else c for c in word)
    return _Example(
        _question(f'Write the word below with the letter "{new}" inserted after every "{after}".', word),
        answer,
        frozenset({word}),
    )


def _draw_ins_word(rng: random.Random, vocab: _Vocabulary, yes: bool) -> _Example | None:
    edit = _word_edit(rng, vocab)
    if edit is None:
        return None
    sentence, after, new = edit
    answer = []
    for token in sentence:
        answer += [token, new] if token == after else [token]
    instruction = f'Write the sentence below with the word "{new}" inserted after every "{after}".'
    return _Example(_question(instruction, " ".join(sentence)), " ".join(answer), frozenset(sentence) | {new})


def _draw_del_char(rng: random.Random, vocab: _Vocabulary, yes: bool) -> _Example | None:
    word = rng.choice(vocab.words)
    letter = rng.choice(_distinct_letters(word))
    answer = word.replace(letter, "")
    if not answer:  # a word of one repeated letter would leave nothing to write
        return None
    return _Example(
        _question(f'Write the word below with every letter "{letter}" deleted.', word), answer, frozenset({word})
    )


def _draw_del_word(rng: random.Random, vocab: _Vocabulary, yes: bool) -> _Example | None:
    sentence = _sentence(rng, vocab.words)
    word = rng.choice(sentence)
    sentence = _maybe_repeat(rng, sentence, word)
    answer = [token for token in sentence if token != word]
    if not answer:
        return None
    return _Example(
        _question(f'Write the sentence below with every word "{word}" deleted.', " ".join(sentence)),
        " ".join(answer),
        frozenset(sentence),
    )


def _draw_sub_char(rng: random.Random, vocab: _Vocabulary, yes: bool) -> _Example | None:
    edit = _letter_edit(rng, vocab)
    if edit is None:
        return None
    word, old, new = edit
    instruction = f'Write the word below with every letter "{old}" replaced by "{new}".'
    return _Example(_question(instruction, word), word.replace(old, new), frozenset({word}))


def _draw_sub_word(rng: random.Random, vocab: _Vocabulary, yes: bool) -> _Example | None:
    edit = _word_edit(rng, vocab)
    if edit is None:
        return None
    sentence, old, new = edit
    answer = [new if token == old else token for token in sentence]
    instruction = f'Write the sentence below with every word "{old}" replaced by "{new}".'
    return _Example(_question(instruction, " ".join(sentence)), " ".join(answer), frozenset(sentence) | {new})


def _draw_swap_char(rng: random.Random, vocab: _Vocabulary, yes: bool) -> _Example | None:
    word = rng.choice(vocab.words)
    once = [c for c in _distinct_letters(word) if word.count(c) == 1]  # "swap" of a repeated letter is ambiguous
    if len(once) < 2:
        return None
    first, second = rng.sample(once, 2)
    answer = word.translate({ord(first): second, ord(second): first})
    instruction = f'Write the word below with the letters "{first}" and "{second}" swapped.'
    return _Example(_question(instruction, word), answer, frozenset({word}))


def _draw_swap_word(rng: random.Random, vocab: _Vocabulary, yes: bool) -> _Example | None:
    sentence = _sentence(rng, vocab.words)
    once = sorted(w for w in set(sentence) if sentence.count(w) == 1)
    if len(once) < 2:
        return None
    first, second = rng.sample(once, 2)
    answer = [second if token == first else first if token == second else token for token in sentence]
    instruction = f'Write the sentence below with the words "{first}" and "{second}" swapped.'
    return _Example(_question(instruction, " ".join(sentence)), " ".join(answer), frozenset(sentence))


_DRAWS: dict[str, _Draw] = {
    "spelling": _draw_spelling,
    "spelling_inverse": _draw_spelling_inverse,
    "contains_char": _draw_contains_char,
    "contains_word": _draw_contains_word,
    "ins_char": _draw_ins_char,
    "ins_word": _draw_ins_word,
    "del_char": _draw_del_char,
    "del_word": _draw_del_word,
    "sub_char": _draw_sub_char,
    "sub_word": _draw_sub_word,
    "swap_char": _draw_swap_char,
    "swap_word": _draw_swap_word,
    "spelling_choice": _draw_spelling_choice,
}


def task_name(kind: str) -> str:
    """The lm-eval task name of a kind ("spelling" -> "cute_spelling")."""
    return f"{GROUP}_{kind}"


def _check_kind(kind: str) -> _Draw:
    if kind not in _DRAWS:
        raise InputError(f"unknown CUTE task {kind!r}; expected one of: {', '.join(TASKS)}")
    return _DRAWS[kind]


def usable_words(words: Iterable[str]) -> list[str]:
    """The distinct words items can use, in first-seen order: stripped, lowercased (so that a letter
    has one spelling), alphabetic only (no digits, spaces, quotes or punctuation)."""
    seen: dict[str, None] = {}
    for word in words:
        word = str(word).strip().lower()
        if word.isalpha():
            seen.setdefault(word, None)
    return list(seen)


def _vocabulary(words: Sequence[str]) -> _Vocabulary:
    usable = usable_words(words)
    if len(usable) < MIN_WORDS:
        raise InputError(
            f"the word list has {len(usable)} usable words (distinct, alphabetic); CUTE items need at least {MIN_WORDS}"
        )
    return _Vocabulary(tuple(usable), tuple(sorted({c for w in usable for c in w})))


def _kind_seed(seed: int, kind: str) -> int:
    """A seed per (seed, kind), stable across processes (str `hash()` is salted per process)."""
    digest = hashlib.sha256(f"cute:{seed}:{kind}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def _attempts(count: int) -> int:
    return 50 * count + 1000  # draws allowed before giving up on a word list that cannot fit


def _shots(
    draw: _Draw, rng: random.Random, vocab: _Vocabulary, item: _Example, count: int, kind: str
) -> list[_Example]:
    """`count` distinct worked examples on words other than the item's (contains tasks: Yes and No
    alternating from a random start, so both answers are shown)."""
    others = _Vocabulary(tuple(w for w in vocab.words if w not in item.used), vocab.letters)
    first_yes = rng.random() < 0.5
    shots: list[_Example] = []
    seen = {item.question}
    for _ in range(_attempts(count)):
        if len(shots) == count:
            break
        yes = (len(shots) % 2 == 0) == first_yes
        shot = draw(rng, others, yes) if others.words else None
        if shot is not None and shot.question not in seen:
            seen.add(shot.question)
            shots.append(shot)
    if len(shots) < count:
        raise InputError(
            f"cannot find {count} worked examples for {task_name(kind)} on other words than "
            f"the item's; give a longer word list or fewer shots"
        )
    return shots


def _prompt(shots: Sequence[_Example], item: _Example) -> str:
    blocks = [f"{shot.question}\nAnswer: {shot.answer}" for shot in shots]
    return "\n\n".join(blocks + [f"{item.question}\nAnswer:"])


def _row(kind: str, shots: Sequence[_Example], item: _Example) -> dict:
    prompt = _prompt(shots, item)
    if kind in CHOICE_KINDS:
        choices = item.choices or CHOICES
        return {"prompt": prompt, "choices": list(choices), "label": choices.index(item.answer)}
    return {"prompt": prompt, "answer": item.answer}


def make_items(kind: str, words: Sequence[str], n: int, seed: int, shots: int = 4) -> list[dict]:
    """`n` distinct items of one task kind, reproducible from (`words`, `seed`, `shots`).

    Rules that give every item exactly one right answer:
      * words are lowercased and only alphabetic ones are kept (`usable_words`); a letter is one
        character; a sentence is 5-8 words from the list joined by single spaces;
      * contains_char / contains_word: half the items (to within one) are Yes, in random order; a
        Yes letter/word occurs in the input; a No letter is absent from the word and a No word is
        not even a substring of the sentence;
      * ins / del / sub: the letter or word acted on occurs in the input, so the answer differs from
        the input; the inserted or substituted letter differs from the one acted on, an inserted or
        substituted word does not occur in the sentence; a deletion leaves something;
        the word-level edits sometimes make their word occur twice ("every occurrence");
      * swap_char / swap_word: the two letters/words differ and each occurs exactly once;
      * spelling_choice: four distinct choices, one the spelling (see `_draw_spelling_choice`);
      * no question is repeated within a kind; the `shots` worked examples before the question are
        distinct, do not repeat it and use none of its words.

    Args:
      kind: a key of `TASKS`.
      words: the word list (at least `MIN_WORDS` usable words).
      n: how many items.
      seed: the seed; each kind draws from its own stream derived from it.
      shots: worked examples in each prompt (0 for none).

    Returns:
      JSON-ready rows: {"prompt", "answer"} for generation tasks, {"prompt", "choices", "label"}
      (label: the index of the right choice) for the multiple-choice ones (["Yes", "No"] for the
      contains tasks).

    Raises:
      InputError: an unknown kind, n < 1 or shots < 0, too few usable words, or words that cannot
        give `n` distinct items (with their examples).
    """
    draw = _check_kind(kind)
    if n < 1 or shots < 0:
        raise InputError(f"need n >= 1 items and shots >= 0, got n={n}, shots={shots}")
    vocab = _vocabulary(words)
    rng = random.Random(_kind_seed(seed, kind))
    rows: list[dict] = []
    seen: set[str] = set()
    for _ in range(_attempts(n)):
        if len(rows) == n:
            break
        item = draw(rng, vocab, len(rows) % 2 == 0)  # Yes and No alternate (contains tasks)
        if item is None or item.question in seen:
            continue
        seen.add(item.question)
        rows.append(_row(kind, _shots(draw, rng, vocab, item, shots, kind), item))
    if len(rows) < n:
        raise InputError(
            f"only {len(rows)} distinct {task_name(kind)} items could be drawn from "
            f"{len(vocab.words)} usable words; ask for fewer or give more words"
        )
    if kind in YES_NO_KINDS:
        rng.shuffle(rows)  # the alternation above must not be a pattern in the file
    return rows


def source_words(data: bytes) -> list[str]:
    """The words of Python source bytes, lowercased: runs of ASCII letters (so identifiers split at
    underscores) that are all lowercase or capitalized (camelCase and ACRONYMS are skipped), of
    `DEFAULT_WORD_LENGTHS` letters, keywords excluded."""
    low, high = DEFAULT_WORD_LENGTHS
    out = []
    for match in _SOURCE_WORD.findall(data):
        token = match.decode("ascii")
        if not low <= len(token) <= high or not (token.islower() or token[1:].islower() and token[0].isupper()):
            continue
        word = token.lower()
        if word not in _PYTHON_WORDS:
            out.append(word)
    return out


def rank_words(counts: Mapping[str, int]) -> list[str]:
    """Words by count, most frequent first; ties alphabetical (so the order never depends on the
    order the counts were gathered in)."""
    return sorted(counts, key=lambda word: (-counts[word], word))


def default_words(n: int = 500) -> list[str]:
    """The `n` most frequent words (at most) of the project's embedded corpus, the running Python's
    standard-library sources (train split): lowercase alphabetic words of 3-10 letters from
    comments, docstrings and identifiers (`source_words`). Deterministic for a Python version."""
    from blt_jax.data.sources import stdlib_files  # the data stack is only needed here

    if n < 1:
        raise InputError(f"need n >= 1 words, got {n}")
    counts: collections.Counter[str] = collections.Counter()
    for path in stdlib_files("train"):
        with open(path, "rb") as f:
            counts.update(source_words(f.read()))
    return rank_words(counts)[:n]


def task_config(kind: str, rows: Sequence[dict]) -> dict:
    """The lm-eval 0.4 task config of one kind (`taskfiles.write_task` adds the name and data file)."""
    config: dict = {
        "doc_to_text": "prompt",  # a column name: lm-eval returns the field untouched (no template)
        # lm-eval puts this between the prompt ("... Answer:") and a choice or a few-shot answer.
        "target_delimiter": " ",
    }
    if kind in CHOICE_KINDS:
        config |= {
            "output_type": "multiple_choice",
            "doc_to_choice": "choices",
            "doc_to_target": "label",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        }
        if kind not in YES_NO_KINDS:  # choices of different lengths: also per byte (lm-eval's acc_norm)
            config["metric_list"].append({"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True})
    else:
        longest = max(len(row["answer"].encode("utf-8")) for row in rows)
        config |= {
            "output_type": "generate_until",
            "doc_to_target": "answer",
            "generation_kwargs": {"until": ["\n"], "max_gen_toks": longest + GEN_MARGIN_BYTES, "do_sample": False},
            # The generation follows "Answer:" with a space that the target lacks; exact_match
            # compares strings as they are, so strip first.
            "filter_list": [
                {"name": "strip", "filter": [{"function": "remove_whitespace"}, {"function": "take_first"}]}
            ],
            "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
        }
    return config


def group_aggregate(kinds: Sequence[str]) -> list[dict]:
    """The `cute` group's `aggregate_metric_list`: the mean of the tasks' metric when they share one.

    lm-eval 0.4.13 aggregates each metric key ("exact_match,strip", "acc,none") over the tasks that
    report it and warns about the others; it has no mean across different metrics, so a group mixing
    generation and multiple-choice kinds is a plain group (the per-task scores are the result).
    """
    choice = {k in CHOICE_KINDS for k in kinds}
    if len(choice) != 1:
        return []
    metric, name = ("acc", "none") if choice.pop() else ("exact_match", "strip")
    return [{"metric": metric, "filter_list": [name], "aggregation": "mean", "weight_by_size": False}]


def write_tasks(
    directory: str,
    words: Sequence[str] | None = None,
    n: int = 100,
    seed: int = 0,
    shots: int = 4,
    kinds: Sequence[str] | None = None,
) -> list[str]:
    """Writes the CUTE tasks for lm-eval: `cute_<kind>.jsonl` (rows of `make_items`) and
    `cute_<kind>.yaml` per kind, and the group `cute.yaml`.

    The YAMLs name their JSONL by absolute path (see `taskfiles`): a moved directory is written again.

    Args:
      directory: where to write (created if missing).
      words: the word list (default: `default_words()`).
      n: items per kind.
      seed: the seed of every kind's items.
      shots: worked examples in each prompt.
      kinds: the kinds to write (default: all of `TASKS`, in its order).

    Returns:
      The task names written ("cute_spelling", ...); the group is `GROUP` ("cute").

    Raises:
      InputError: as `make_items` (before anything is written).
    """
    kinds = list(dict.fromkeys(TASKS if kinds is None else kinds))
    for kind in kinds:
        _check_kind(kind)
    if not kinds:
        raise InputError("no CUTE task kinds given")
    words = default_words() if words is None else words
    rows = {kind: make_items(kind, words, n, seed, shots) for kind in kinds}
    directory = taskfiles.task_directory(directory)
    for kind in kinds:
        taskfiles.write_task(directory, task_name(kind), rows[kind], task_config(kind, rows[kind]))
    taskfiles.write_group(directory, GROUP, [task_name(k) for k in kinds], group_aggregate(kinds))
    return [task_name(kind) for kind in kinds]
