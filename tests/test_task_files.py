"""`blt-jax make-tasks`: task files for lm-eval (CUTE from a word list, cloze from a corpus), written
from a fresh directory with the paths a user types, loadable by lm-eval from anywhere; cloze items
have exactly one right answer."""

import json

import pytest
from user import blt_jax as run

from blt_jax.errors import InputError
from blt_jax.evals import cloze

SOURCE = [
    "import os\n\n\ndef area(width, height):\n    return width * height\n\n\ndef perimeter(width, height):\n"
    "    return 2 * (width + height)\n",
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n"
    "        self.items.append(item)\n\n    def pop(self):\n        return self.items.pop()\n",
] + [
    f"def function_number_{i}(argument_{i}):\n    value_{i} = argument_{i} * {i}\n"
    f"    result_{i} = compute_something(value_{i}, factor={i}) + offset_{i}\n    return result_{i} + {i}\n"
    for i in range(40)
]


@pytest.mark.parametrize("cut", ["line", "midline"])
def test_cloze_items_have_one_right_line_right_after_their_context(cut):
    items = cloze.make_items(SOURCE, n=30, seed=1, context_bytes=48, cut=cut)
    assert items == cloze.make_items(SOURCE, n=30, seed=1, context_bytes=48, cut=cut)
    assert items != cloze.make_items(SOURCE, n=30, seed=2, context_bytes=48, cut=cut)
    labels = set()
    for item in items:
        truth = item["choices"][item["label"]]
        labels.add(item["label"])
        assert len(item["choices"]) == 4 and len(set(item["choices"])) == 4
        (document,) = [d for d in SOURCE if item["context"] + truth in d]  # the true line follows the context
        # No distractor could be right too: none continues the context in its document.
        assert [c for c in item["choices"] if item["context"] + c in document] == [truth]
        assert all(0.5 <= len(c) / len(truth) <= 2 for c in item["choices"])
        last = item["context"].rsplit("\n", 1)[-1]
        if cut == "line":  # the line's indentation ends the context
            assert last.strip() == "" and truth == truth.strip()
        else:  # the context ends inside the line, before a space; the choice is the line's rest
            assert last.strip() and truth.startswith(" ") and "\n" not in truth
    assert labels == {0, 1, 2, 3}
    with pytest.raises(InputError, match=r"^the corpus gives \d+ items, fewer than the 500 asked for"):
        cloze.make_items(SOURCE, n=500, seed=1, context_bytes=48, cut=cut)


def test_make_tasks_from_a_fresh_directory(tmp_path, monkeypatch):
    (tmp_path / "home").mkdir()
    (tmp_path / "corpus").mkdir()
    for i, text in enumerate(SOURCE):
        (tmp_path / "corpus" / f"{i:02d}.py").write_text(text)
    words = (
        "planet river garden silver window orange button pencil rocket castle mirror forest candle "
        "bridge ladder jacket guitar island magnet needle pepper rabbit saddle tunnel violin walnut"
    )
    (tmp_path / "words.txt").write_text(words.replace(" ", "\n"))

    result = run(
        "make-tasks",
        "cute",
        "~/tasks",
        "--words",
        "words.txt",
        "--n",
        "6",
        "--kinds",
        "spelling,contains_char",
        cwd=tmp_path,
        home=tmp_path / "home",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "blt-jax lm-eval --include-path ~/tasks --tasks cute" in result.stdout
    written = sorted(p.name for p in (tmp_path / "home" / "tasks").iterdir())
    assert written == [
        "cute.yaml",
        "cute_contains_char.jsonl",
        "cute_contains_char.yaml",
        "cute_spelling.jsonl",
        "cute_spelling.yaml",
    ]
    rows = [json.loads(line) for line in (tmp_path / "home" / "tasks" / "cute_spelling.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(r["answer"] == " ".join(r["prompt"].rsplit('"', 2)[1]) for r in rows)

    result = run(
        "make-tasks", "cloze", "tasks", "--corpus", "corpus", "--n", "20", "--context-bytes", "48", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert len((tmp_path / "tasks" / "cloze.jsonl").read_text().splitlines()) == 20

    # lm-eval reads both from another working directory (the YAMLs name their data absolutely).
    from lm_eval.tasks import TaskManager, get_task_dict

    monkeypatch.chdir(tmp_path / "home")
    manager = TaskManager(
        include_path=[str(tmp_path / "tasks"), str(tmp_path / "home" / "tasks")], include_defaults=False
    )
    tasks = get_task_dict(["cloze", "cute"], manager)
    (doc, *_) = tasks["cloze"].test_docs()
    assert tasks["cloze"].doc_to_choice(doc)[tasks["cloze"].doc_to_target(doc)] in "".join(SOURCE)

    for args, error in [
        (("cute", "t", "--words", "nope.txt"), "nope.txt: no such file"),
        (("cute", "t", "--kinds", "spelling,bogus"), "unknown CUTE task 'bogus'"),
        (("cloze", "t", "--corpus", "missing"), "missing: no such file or directory"),
        (
            ("cloze", "gs://bucket/tasks", "--corpus", "corpus"),
            "gs://bucket/tasks: task files are read by lm-eval from a local disk; write them to a local directory",
        ),
    ]:
        result = run("make-tasks", *args, cwd=tmp_path)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 2 and len(lines) == 1 and error in lines[0], (args, result.stderr[-1000:])
