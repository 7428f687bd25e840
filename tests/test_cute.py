"""CUTE-style tasks (`blt_jax.evals.cute`): every item's answer recomputed here by an independent
rule, reproducibility, balance, no repeats; the task files loaded and scored by lm-eval itself
from another working directory (an oracle model scores 1, a wrong one 0)."""

from __future__ import annotations

import json
import re

import pytest

from blt_jax.errors import InputError
from blt_jax.evals import cute

WORDS = [
    "there",
    "apple",
    "banana",
    "letter",
    "window",
    "garden",
    "yellow",
    "planet",
    "rocket",
    "silver",
    "orange",
    "candle",
    "bridge",
    "stone",
    "river",
    "forest",
    "mirror",
    "pencil",
    "basket",
    "jungle",
    "copper",
    "marble",
    "tunnel",
    "spider",
    "falcon",
    "guitar",
    "harbor",
    "island",
    "kettle",
    "lantern",
    "meadow",
    "napkin",
    "oyster",
    "puzzle",
    "quartz",
    "rabbit",
    "saddle",
    "throne",
    "velvet",
    "walnut",
]
CHAR_KINDS = {
    "spelling",
    "spelling_choice",
    "spelling_inverse",
    "contains_char",
    "ins_char",
    "del_char",
    "sub_char",
    "swap_char",
}
EDIT_KINDS = {k for k in cute.TASKS if k.split("_")[0] in ("ins", "del", "sub", "swap")}
N = 30


def blocks(prompt: str) -> list[tuple[str, str, str | None]]:
    """(instruction, input, answer or None) of every block of a prompt, the question last."""
    out = []
    for block in prompt.split("\n\n"):
        instruction, quoted, answer = block.split("\n")
        assert quoted.startswith('"') and quoted.endswith('"'), block
        assert answer == "Answer:" or answer.startswith("Answer: "), block
        out.append((instruction, quoted[1:-1], answer[len("Answer: ") :] if answer != "Answer:" else None))
    return out


def expected(kind: str, instruction: str, text: str, answer: str) -> str:
    """The one right answer, by rules written independently of the generator; asserts the
    conditions that make it the only one."""
    args = re.findall(r'"([^"]*)"', instruction)
    tokens = text.split(" ")
    if kind in ("spelling", "spelling_choice"):
        assert text.isalpha() and args == []
        return " ".join(text)
    if kind == "spelling_inverse":
        assert all(len(t) == 1 for t in tokens)
        return text.replace(" ", "")
    if kind == "contains_char":
        (letter,) = args
        assert len(letter) == 1
        return "Yes" if letter in text else "No"
    if kind == "contains_word":
        (word,) = args
        if word in tokens:
            return "Yes"
        assert word not in text  # not even part of another word
        return "No"
    first, *rest = args
    if kind == "ins_char":  # '"new" inserted after every "old"'
        new, old = args
        assert old in text and new != old and len(new) == 1
        return text.replace(old, old + new)
    if kind == "ins_word":
        new, old = args
        assert old in tokens and new not in tokens
        return re.sub(rf"\b{old}\b", f"{old} {new}", text)
    if kind == "del_char":
        assert first in text and rest == [] and text.replace(first, "")
        return text.replace(first, "")
    if kind == "del_word":
        assert first in tokens and rest == [] and set(tokens) != {first}
        return re.sub(r" +", " ", re.sub(rf"\b{first}\b", "", text)).strip()
    if kind == "sub_char":
        (new,) = rest
        assert first in text and new != first and len(new) == 1
        return text.replace(first, new)
    if kind == "sub_word":
        (new,) = rest
        assert first in tokens and new not in tokens
        return re.sub(rf"\b{first}\b", new, text)
    (second,) = rest
    assert first != second
    units = list(text) if kind == "swap_char" else tokens
    assert units.count(first) == 1 and units.count(second) == 1
    i, j = units.index(first), units.index(second)
    units[i], units[j] = units[j], units[i]
    return ("" if kind == "swap_char" else " ").join(units)


def subject_words(kind: str, instruction: str, text: str) -> set[str]:
    """The list words a block is about (its examples must avoid the question's)."""
    if kind in CHAR_KINDS:
        return {text.replace(" ", "")}
    return set(text.split(" ")) | set(re.findall(r'"([^"]*)"', instruction))


def assert_misspellings(word: str, choices: list[str], answer: str) -> None:
    """Four distinct spelled-out choices of one length: the answer, the word with two different
    neighbouring letters swapped, and the word with one letter replaced at two different places."""
    assert len(choices) == 4 == len(set(choices)) and answer in choices
    assert all(c == " ".join(c.replace(" ", "")) and len(c) == len(answer) for c in choices)
    swaps, replaced = 0, set()
    for wrong in (c.replace(" ", "") for c in choices if c != answer):
        diff = [i for i in range(len(word)) if word[i] != wrong[i]]
        if len(diff) == 1:
            replaced.add(diff[0])
        else:
            i, j = diff
            assert j == i + 1 and wrong[i] == word[j] and wrong[j] == word[i]
            swaps += 1
    assert swaps == 1 and len(replaced) == 2


def item_answer(row: dict) -> str:
    return row["choices"][row["label"]] if "choices" in row else row["answer"]


@pytest.mark.parametrize("kind", list(cute.TASKS))
def test_items_have_exactly_one_right_answer(kind):
    rows = cute.make_items(kind, WORDS, N, seed=3, shots=4)
    assert len(rows) == N
    assert rows == cute.make_items(kind, WORDS, N, seed=3, shots=4)
    assert rows != cute.make_items(kind, WORDS, N, seed=4, shots=4)
    questions = []
    for row in rows:
        json.dumps(row)
        *shots, (instruction, text, none) = blocks(row["prompt"])
        assert none is None and len(shots) == 4 and row["prompt"].endswith("\nAnswer:")
        answer = item_answer(row)
        assert answer == expected(kind, instruction, text, answer)
        if kind in EDIT_KINDS:
            assert answer != text
        questions.append((instruction, text))
        about = subject_words(kind, instruction, text)
        for shot in shots:
            assert shot[2] == expected(kind, *shot)
            assert shot[:2] != (instruction, text)
            assert not subject_words(kind, *shot[:2]) & about, (shot, about)
        assert len({shot[:2] for shot in shots}) == len(shots)
        if kind in cute.YES_NO_KINDS:
            assert row["choices"] == ["Yes", "No"] and {s[2] for s in shots} == {"Yes", "No"}
        if kind == "spelling_choice":
            assert_misspellings(text, row["choices"], answer)
    assert len(set(questions)) == N
    if kind == "spelling_choice":  # the right spelling is not always in one place
        assert len({row["label"] for row in rows}) == 4
    if kind in cute.YES_NO_KINDS:
        yes = sum(row["label"] == 0 for row in rows)
        assert yes == N // 2
        assert [row["label"] for row in rows] != [i % 2 for i in range(N)]  # shuffled, not alternating
    if kind in ("ins_word", "del_word", "sub_word"):  # "every occurrence" is exercised
        repeated = [
            t
            for i, t, _ in (blocks(r["prompt"])[-1] for r in rows)
            if t.split(" ").count(re.findall(r'"([^"]*)"', i)[-1 if kind == "ins_word" else 0]) > 1
        ]
        assert repeated


def test_balance_with_odd_counts_and_no_shots():
    rows = cute.make_items("contains_word", WORDS, 7, seed=0, shots=0)
    labels = [row["label"] for row in rows]
    assert sorted(labels) == [0, 0, 0, 0, 1, 1, 1]
    assert all(len(blocks(row["prompt"])) == 1 for row in rows)


def test_words_are_normalized_and_every_kind_has_its_own_stream():
    messy = [w.upper() for w in WORDS] + ["two words", "x1", "", "it's"] + WORDS
    assert cute.usable_words(messy) == WORDS
    assert cute.make_items("spelling", messy, 10, seed=1) == cute.make_items("spelling", WORDS, 10, seed=1)
    spelled = [row["answer"].replace(" ", "") for row in cute.make_items("spelling", WORDS, 10, seed=1)]
    joined = [row["answer"] for row in cute.make_items("spelling_inverse", WORDS, 10, seed=1)]
    assert spelled != joined


def test_bad_kind_or_word_list_is_a_one_line_input_error(tmp_path):
    with pytest.raises(InputError) as error:
        cute.make_items("reverse", WORDS, 5, seed=0)
    assert "reverse" in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(InputError) as error:
        cute.make_items("spelling", WORDS[:12] + ["a b", "1234"] * 10, 5, seed=0)
    assert "12 usable words" in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(InputError) as error:  # 20 words give fewer than 100 distinct questions
        cute.make_items("spelling", WORDS[:20], 100, seed=0)
    assert "\n" not in str(error.value)
    with pytest.raises(InputError):
        cute.write_tasks(str(tmp_path / "out"), WORDS, n=4, kinds=["spelling", "reverse"])
    assert not (tmp_path / "out").exists()  # nothing written before the check


def test_default_words_from_the_embedded_corpus():
    words = cute.default_words(250)
    assert len(words) == 250 == len(set(words))
    assert all(w.isascii() and w.isalpha() and w.islower() and 3 <= len(w) <= 10 for w in words)
    assert cute.default_words(40) == words[:40]
    assert "def" not in words and "the" in words[:10]


def test_source_words_and_ranking_rules():
    source = b'def getLogger(max_gen_toks):\n    """Return the Value."""  # TODO: fix\n    s = "\\nthe 0xfeed"\n'
    assert cute.source_words(source) == ["max", "gen", "toks", "the", "value", "fix"]  # keywords dropped
    assert cute.rank_words({"bee": 2, "ant": 2, "cat": 5}) == ["cat", "ant", "bee"]


def test_group_averages_only_a_shared_metric():
    assert cute.group_aggregate(list(cute.TASKS)) == []
    (only,) = cute.group_aggregate(["spelling", "swap_word"])
    assert (only["metric"], only["filter_list"]) == ("exact_match", ["strip"])
    (only,) = cute.group_aggregate(["contains_char"])
    assert (only["metric"], only["filter_list"]) == ("acc", ["none"])


class _Oracle:
    """An lm-eval model that knows every item's answer (or, `wrong`, never gives it)."""

    @staticmethod
    def build(rows: list[dict], wrong: bool):
        from lm_eval.api.model import LM

        answers = {row["prompt"]: item_answer(row) for row in rows}
        choices = {row["prompt"]: row.get("choices") for row in rows}

        class Oracle(LM):
            def loglikelihood(self, requests):
                out = []
                for request in requests:
                    context, continuation = request.args
                    assert continuation[:1] == " " and continuation[1:] in choices[context]  # lm-eval's delimiter
                    right = continuation == " " + answers[context]
                    out.append((0.0 if right != wrong else -9.0, right != wrong))
                return out

            def loglikelihood_rolling(self, requests):
                raise AssertionError("no rolling requests expected")

            def generate_until(self, requests):
                out = []
                for request in requests:
                    context, kwargs = request.args
                    answer = answers[context]
                    assert kwargs["until"] == ["\n"] and kwargs["max_gen_toks"] > len(answer.encode()) + 1
                    out.append(" " + answer + ("x" if wrong else ""))  # as a model writes after "Answer:"
                return out

        return Oracle()


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """Runs in a working directory away from the task files, with the datasets cache in tmp_path."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    return tmp_path


def _manager(directory):
    from lm_eval.tasks import TaskManager

    # The built-in index adds 7 s and no cute_* name (checked by hand: TaskManager().all_tasks).
    return TaskManager(include_path=str(directory), include_defaults=False)


def _rows(directory, name: str) -> list[dict]:
    return [json.loads(line) for line in (directory / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()]


def test_lm_eval_loads_the_tasks_from_another_directory(elsewhere):
    directory = elsewhere / "tasks"
    names = cute.write_tasks(str(directory), WORDS, n=8, seed=1, shots=2)
    assert names == [f"cute_{k}" for k in cute.TASKS]
    assert sorted(p.name for p in directory.iterdir()) == sorted(
        [f"{n}.jsonl" for n in names] + [f"{n}.yaml" for n in names] + ["cute.yaml"]
    )
    manager = _manager(directory)
    assert set(names) | {"cute"} <= set(manager.all_tasks) and "cute" in manager.all_groups
    tasks = manager.load(["cute_spelling", "cute_contains_char"])["tasks"]
    spelling, contains = tasks["cute_spelling"], tasks["cute_contains_char"]
    assert spelling.config.dataset_kwargs["data_files"]["test"] == str(directory / "cute_spelling.jsonl")

    rows = _rows(directory, "cute_spelling")
    docs = list(spelling.test_docs())
    assert docs == rows
    assert [spelling.doc_to_text(d) for d in docs] == [r["prompt"] for r in rows]
    assert [spelling.doc_to_target(d) for d in docs] == [r["answer"] for r in rows]
    assert spelling.config.generation_kwargs["until"] == ["\n"]
    assert spelling.config.generation_kwargs["max_gen_toks"] >= max(len(r["answer"]) for r in rows) + 1

    rows = _rows(directory, "cute_contains_char")
    docs = list(contains.test_docs())
    assert docs == rows and contains.OUTPUT_TYPE == "multiple_choice"
    for doc, row in zip(docs, rows):
        assert contains.doc_to_text(doc) == row["prompt"] and contains.doc_to_choice(doc) == ["Yes", "No"]
        assert contains.doc_to_target(doc) == row["label"]
        # The scored text: the prompt, lm-eval's space, the choice.
        requests = contains.construct_requests(doc, contains.doc_to_text(doc), metadata=("x", 0, 1))
        assert [r.args for r in requests] == [(row["prompt"], " Yes"), (row["prompt"], " No")]


@pytest.mark.parametrize("wrong", [False, True])
def test_lm_eval_scores_an_oracle_fully_and_a_wrong_model_zero(elsewhere, wrong):
    import lm_eval

    directory = elsewhere / "tasks"
    kinds = list(cute.TASKS) if not wrong else ["spelling", "swap_word"]  # the second: one metric, averaged
    names = cute.write_tasks(str(directory), WORDS, n=6, seed=2, shots=1, kinds=kinds)
    rows = [row for name in names for row in _rows(directory, name)]
    out = lm_eval.simple_evaluate(
        model=_Oracle.build(rows, wrong),
        tasks=["cute"],
        task_manager=_manager(directory),
        bootstrap_iters=0,
        log_samples=False,
    )
    results = out["results"]
    want = 0.0 if wrong else 1.0
    for kind, name in zip(kinds, names):
        key = "acc,none" if kind in cute.CHOICE_KINDS else "exact_match,strip"
        assert results[name][key] == want, (name, results[name])
        if kind == "spelling_choice":
            assert results[name]["acc_norm,none"] == want, (name, results[name])
    if wrong:
        assert results["cute"]["exact_match,strip"] == 0.0
