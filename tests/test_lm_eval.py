"""The lm-evaluation-harness backend: scores equal one forward pass over each text, whatever the
batching and padding; rolling windows score every byte once; generation stops at stop strings; and
`blt-jax lm-eval` runs task files written here (multiple choice, rolling bits per byte, generation)
on a run trained here, from a fresh directory with relative paths."""

import json
import math

import jax
import numpy as np
import pytest
from user import TINY, blt_jax_many
from user import blt_jax as run

import blt_jax
from blt_jax.evals import scoring
from blt_jax.experiment import load_experiment
from blt_jax.experiment.config import experiment_from_dict
from blt_jax.tokenizer import encode


@pytest.fixture(scope="module")
def model():
    """The tiny BLT with its entropy LM (entropy patching, the released threshold), random weights."""
    return blt_jax.BLTModel.random(experiment_from_dict(load_experiment(TINY)).model, seed=3)


REFERENCE_WIDTH = 256  # every reference row is padded to this one width (one compilation), none of the backend's


def one_forward(model, text: bytes, scored: int, max_length: int):
    """(log-probability, greedy) of the last `scored` bytes of BOS + text (cut to max_length bytes),
    from a forward pass over that text alone (right-padded to REFERENCE_WIDTH)."""
    tokens = encode(text, add_eos=False)[-(max_length + 1) :]
    row = np.zeros((1, REFERENCE_WIDTH), np.int32)
    row[0, : len(tokens)] = tokens
    logp = np.asarray(jax.nn.log_softmax(model.logits(row), axis=-1))[0]
    end = len(tokens) - 1
    targets = tokens[end - scored + 1 :]
    lp = logp[end - scored : end]
    return float(lp[np.arange(scored), targets].sum()), bool((lp.argmax(-1) == targets).all())


def test_each_loglikelihood_equals_one_forward_over_its_text(model):
    rng = np.random.default_rng(0)
    words = [b"def", b" return", b" x", b"(", b")", b":", b"\n    ", b" = ", b"1", b"self"]
    pairs = []
    for n in (3, 40, 260):  # rows of two widths (64 and 128 after padding); the longest is cut
        context = b"".join(rng.choice(words, size=n))
        pairs.append((context, b"".join(rng.choice(words, size=3))))
    pairs.append((b"", b"x"))  # the continuation alone, after BOS
    got = scoring.score_continuations(model, pairs, batch_size=2, max_length=120)
    for (context, continuation), scored in zip(pairs, got):
        want, greedy = one_forward(model, context + continuation, len(continuation), 120)
        assert scored.logprob == pytest.approx(want, abs=1e-4), (context[:20], continuation)
        assert scored.greedy == greedy


def test_choices_of_a_shared_context_score_as_one_forward_each(model, monkeypatch):
    """Multiple-choice requests: each context runs once for all its choices (BLTModel.continuation_logprobs),
    and every score still equals a forward over context + choice. Groups of 2 to 9 choices (9 is split
    over batches), a BOS-only context, multi-byte UTF-8, and a choice whose text is cut to max_length
    (scored as a row of its own, like an unshared request)."""
    rng = np.random.default_rng(1)
    words = [b"def", b" return", b" x", b"(", b")", b":", b"\n    ", b" = ", b"1", b"self", " größe".encode()]
    pairs = []
    for n, choices in ((5, 4), (30, 2), (12, 9), (0, 3), (18, 4), (36, 3)):
        context = b"".join(rng.choice(words, size=n))
        pairs += [(context, b"".join(rng.choice(words, size=int(rng.integers(1, 6))))) for _ in range(choices)]
    pairs.append((pairs[-1][0], b" x" * 40))  # the last context's texts no longer all fit 120 bytes
    order = rng.permutation(len(pairs))  # lm-eval's requests arrive in any order
    pairs = [pairs[i] for i in order]
    calls = []
    shared = model.continuation_logprobs
    monkeypatch.setattr(model, "continuation_logprobs", lambda *a: calls.append(a[2].shape) or shared(*a))
    got = scoring.score_continuations(model, pairs, batch_size=2, max_length=120)
    for (context, continuation), scored in zip(pairs, got):
        want, greedy = one_forward(model, context + continuation, len(continuation), 120)
        assert scored.logprob == pytest.approx(want, abs=1e-4), (context[:20], continuation)
        assert scored.greedy == greedy
    # Batches of 2 contexts and 2 x (mean choices per shared context, rounded up) continuation rows.
    groups: dict[bytes, int] = {}
    for context, continuation in pairs:
        if len(context) + len(continuation) <= 120:  # a text cut to fit is scored as a row of its own
            groups[context] = groups.get(context, 0) + 1
    sizes = [n for n in groups.values() if n > 1]
    assert len(sizes) >= 4 and max(sizes) == 9, groups
    assert len(calls) >= 3 and all(shape[0] == 2 * -(-sum(sizes) // len(sizes)) for shape in calls), calls


def test_rolling_windows_score_every_byte_once_with_enough_context():
    rows = scoring.document_rows(0, bytes(range(32, 132)) * 2, max_length=64, stride=16)
    seen = []
    for row in rows:
        assert len(row.tokens) <= 65 and 1 <= row.scored <= 64
        first = len(row.tokens) - row.scored  # index in row.tokens of the first scored token
        assert first >= min(49, len(seen) + 1)  # >= max_length - stride bytes of context once there are that many
        seen += list(row.tokens[first:])
    assert seen == list(encode(bytes(range(32, 132)) * 2, add_bos=False, add_eos=False))


def test_a_byte_lm_scores_as_one_forward_over_its_text(model):
    """A byte-level LM (here the tiny BLT's entropy LM) answers loglikelihood requests from its own
    logits: the quickstart's byte baseline is scored beside the BLT."""
    from lm_eval.api.instance import Instance

    from blt_jax.api import ByteLM
    from blt_jax.errors import InputError
    from blt_jax.evals.harness import BltLM
    from blt_jax.nn.entropy_lm import EntropyLM

    byte_lm = ByteLM(model.config.entropy_model, jax.device_get(model.entropy_params))
    context, continuation = "def area(w, h):\n    return", " w * h"
    ((logprob, greedy),) = BltLM(byte_lm, batch_size=2, max_length=120, progress=False).loglikelihood(
        [Instance("loglikelihood", {}, (context, continuation), 0)]
    )
    tokens = encode(context + continuation, add_eos=False)
    logits = EntropyLM(model.config.entropy_model).apply({"params": model.entropy_params}, tokens[None])
    logp = np.asarray(jax.nn.log_softmax(logits, axis=-1))[0]
    n = len(continuation)
    targets = tokens[-n:]
    assert logprob == pytest.approx(float(logp[-n - 1 : -1][np.arange(n), targets].sum()), abs=1e-4)
    with pytest.raises(InputError, match="^generation needs a BLT"):
        byte_lm.generate("x")


def test_a_short_document_scores_as_one_forward(model):
    document = b"for i in range(10):\n    print(i)\n"
    total = scoring.score_documents(model, [document, b""], batch_size=2, max_length=120)
    assert total[0] == pytest.approx(one_forward(model, document, len(document), 120)[0], abs=1e-4)
    assert total[1] == 0.0


def test_generation_stops_at_the_first_stop_string(model):
    from lm_eval.api.instance import Instance

    from blt_jax.evals.harness import BltLM, cut_at_stops

    assert cut_at_stops("abc\ndef END", ["END", "\n"]) == "abc"
    assert cut_at_stops("abc", ["zzz"]) == "abc"
    lm = BltLM(model, batch_size=1, progress=False)  # the batch shape of `model.generate` on one prompt
    requests = [
        Instance("generate_until", {}, ("def f(", {"until": ["\n", ")"], "max_gen_toks": 12}), 0),
        Instance("generate_until", {}, ("import ", {"until": ["\n", "s"], "max_gen_toks": 12}), 1),
    ]
    texts = lm.generate_until(requests)
    for request, text in zip(requests, texts):
        context, kwargs = request.args
        full = model.generate(context, max_new_bytes=kwargs["max_gen_toks"])  # greedy, one prompt alone
        assert text == cut_at_stops(full, kwargs["until"])


def test_a_noised_run_scores_the_noised_context_and_the_clean_continuation(model):
    from lm_eval.api.instance import Instance

    from blt_jax.evals.harness import BltLM
    from blt_jax.evals.noise import noise_context, noise_list

    assert noise_list(None) == [None] and noise_list("none,Drop,drop") == [None, "drop"]
    assert noise_list("all") == [None, "antspeak", "drop", "randomcase", "repeat", "uppercase"]
    context, continuation = "the color of the ball is", " red."
    lm = BltLM(model, batch_size=2, max_length=120, progress=False, noise="repeat", noise_seed=4)
    got = lm.loglikelihood([Instance("loglikelihood", {}, (context, continuation), 0)])[0]
    noised = noise_context("repeat", context, seed=4)
    assert noised != context
    want = scoring.score_continuations(model, [(noised.encode(), continuation.encode())], batch_size=2, max_length=120)[
        0
    ]
    assert got == (want.logprob, want.greedy)


TASKS = {
    "tiny_mc.yaml": """task: tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: tasks/mc.jsonl
test_split: test
output_type: multiple_choice
doc_to_text: "{{question}}"
doc_to_choice: "{{choices}}"
doc_to_target: "{{answer}}"
metric_list:
  - metric: acc
""",
    "tiny_roll.yaml": """task: tiny_roll
dataset_path: json
dataset_kwargs:
  data_files:
    test: tasks/docs.jsonl
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{text}}"
metric_list:
  - metric: bits_per_byte
""",
    "tiny_gen.yaml": """task: tiny_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: tasks/gen.jsonl
test_split: test
output_type: generate_until
doc_to_text: "{{prompt}}"
doc_to_target: "{{answer}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 8
metric_list:
  - metric: exact_match
""",
}
DOCS = ["def add(a, b):\n    return a + b\n", "class Point:\n    x = 0\n    y = 0\n"]


THINGS = ["ball", "car", "door", "lamp", "boat", "cup", "hat", "kite", "sock", "vase", "bell", "coat"]
COLORS = ["red", "blue", "green", "pink", "gray", "gold"]


@pytest.mark.long  # 120 training steps with lm-eval during training, then every task kind: the release tier
def test_lm_eval_command_on_a_trained_run_beats_chance(tmp_path):
    """A tiny BLT trained here (`blt-jax train`) on facts "the color of the X is Y." answers the
    multiple-choice task built from them through `blt-jax lm-eval` far above chance (1/2); the
    rolling and generation tasks run too, and rolling bits per byte equals direct forwards."""
    facts = {thing: COLORS[i % len(COLORS)] for i, thing in enumerate(THINGS)}
    (tmp_path / "facts").mkdir()
    for i in range(40):  # many small documents, in varied order
        order = np.random.default_rng(i).permutation(THINGS)
        (tmp_path / "facts" / f"{i:02d}.txt").write_text(
            " ".join(f"the color of the {t} is {facts[t]}." for t in order)
        )
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    for name, text in TASKS.items():
        (tasks / name).write_text(text)
    # lm-eval joins question and choice with a space (its target_delimiter).
    items = [
        {
            "question": f"the color of the {t} is",
            "answer": 0,
            "choices": [f"{c}.", f"{COLORS[(COLORS.index(c) + 1 + k % 5) % len(COLORS)]}."],
        }
        for k, (t, c) in enumerate(facts.items())
    ]
    (tasks / "mc.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
    (tasks / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS))
    (tasks / "gen.jsonl").write_text(json.dumps({"prompt": "the color of the cup is", "answer": " blue."}) + "\n")

    # Scored during training too (every 60 steps and at the end), clean and noised.
    result = run(
        "train",
        "--config",
        TINY,
        "--workdir",
        "run",
        "--config.data.source=facts",
        "--config.eval.source=facts",
        "--config.train.steps=120",
        "--config.train.warmup_steps=10",
        "--config.train.eval_every=0",
        "--config.train.checkpoint_every=0",
        "--config.lm_eval.tasks=tiny_mc",
        "--config.lm_eval.include_path=tasks",
        "--config.lm_eval.every=60",
        "--config.lm_eval.noise=none,antspeak",
        "--no-progress",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "lm-eval at step 120: tiny_mc/acc" in result.stdout, result.stdout
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    during = {row["step"]: row for row in logged if "lm_eval/tiny_mc/acc" in row}
    assert sorted(during) == [60, 120] and all("lm_eval/tiny_mc/antspeak/acc" in r for r in during.values()), logged
    events = b"".join(p.read_bytes() for p in (tmp_path / "run" / "tensorboard").iterdir())
    assert b"lm_eval/tiny_mc/acc" in events and b"lm_eval/tiny_mc/antspeak/acc" in events

    result = run(
        "lm-eval",
        "--checkpoint",
        "run",
        "--tasks",
        "tiny_mc,tiny_roll,tiny_gen",
        "--include-path",
        "tasks",
        "--batch-size",
        "4",
        "--noise",
        "none,antspeak",
        "--output",
        "results.json",
        "--no-progress",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "tiny_mc" in result.stdout and "tiny_mc@antspeak" in result.stdout and "bits_per_byte" in result.stdout
    results = json.loads((tmp_path / "results.json").read_text())["results"]
    assert results["tiny_mc"]["acc,none"] >= 0.8, results["tiny_mc"]  # chance: 0.5
    # The scores logged at the last step are the command's on the saved run: the same scoring.
    assert during[120]["lm_eval/tiny_mc/acc"] == results["tiny_mc"]["acc,none"]
    assert during[120]["lm_eval/tiny_mc/antspeak/acc"] == results["tiny_mc@antspeak"]["acc,none"]
    # Rolling documents are never noised; contexts in upper case, spaced out, are another text to this model.
    assert results["tiny_roll@antspeak"]["bits_per_byte,none"] == results["tiny_roll"]["bits_per_byte,none"]
    assert results["tiny_mc@antspeak"]["acc,none"] < results["tiny_mc"]["acc,none"]
    assert 0.0 <= results["tiny_gen"]["exact_match,none"] <= 1.0
    # Rolling bits per byte: the documents' log-likelihoods over their bytes, as one forward each gives them.
    from blt_jax.api import from_training_run

    trained = from_training_run(str(tmp_path / "run"))
    total = sum(one_forward(trained, d.encode(), len(d.encode()), 2048)[0] for d in DOCS)
    want = -total / (math.log(2) * sum(len(d.encode()) for d in DOCS))
    assert results["tiny_roll"]["bits_per_byte,none"] == pytest.approx(want, rel=1e-5)


def test_misspelt_task_and_noise_names_are_one_line_before_any_model_loads(tmp_path):
    """Each command line a process of its own (forked from one interpreter); no checkpoint is read."""
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    for name, text in TASKS.items():
        (tasks / name).write_text(text)
    misspelt, bad_noise = blt_jax_many(
        [
            ["lm-eval", "--checkpoint", "nowhere", "--tasks", "tiny_mcq", "--include-path", "tasks"],
            ["lm-eval", "--checkpoint", "nowhere", "--tasks", "tiny_mc", "--include-path", "tasks", "--noise", "dorp"],
        ],
        cwd=tmp_path,
    )
    lines = [line for line in misspelt.stderr.splitlines() if line.strip() and "not a git repository" not in line]
    assert misspelt.returncode == 2 and lines[-1].startswith(
        "blt-jax lm-eval: error: unknown task 'tiny_mcq'; did you mean tiny_mc"
    ), misspelt.stderr[-2000:]
    lines = [line for line in bad_noise.stderr.splitlines() if line.strip() and "not a git repository" not in line]
    assert bad_noise.returncode == 2 and lines[-1] == (
        "blt-jax lm-eval: error: unknown noise 'dorp'; choose one of "
        "antspeak, drop, randomcase, repeat, uppercase (or none)"
    ), lines


def test_without_the_eval_extra_the_command_says_what_to_install(tmp_path):
    """A user without lm-eval (simulated: an `lm_eval` package that is not importable, first on the
    path) is told the install command in one line, before anything is loaded."""
    import os

    shadow = tmp_path / "shadow" / "lm_eval"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text('raise ModuleNotFoundError("No module named \'lm_eval\'", name="lm_eval")\n')
    path = os.pathsep.join(p for p in (str(shadow.parent), os.environ.get("PYTHONPATH")) if p)
    result = run("lm-eval", "--checkpoint", "run", "--tasks", "arc_easy", cwd=tmp_path, PYTHONPATH=path)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0 and lines == [
        "blt-jax lm-eval: error: lm-evaluation-harness is not installed (the eval extra): pip install -c "
        'constraints.txt -e ".[eval]"'
    ], result.stderr[-2000:]


def test_training_with_an_unknown_lm_eval_task_fails_before_it_starts(tmp_path):
    result = run(
        "train",
        "--config",
        TINY,
        "--workdir",
        "run",
        "--config.lm_eval.tasks=color_quiz",
        "--config.lm_eval.noise=drop",
        cwd=tmp_path,
    )
    lines = [line for line in result.stderr.splitlines() if line.strip() and "not a git repository" not in line]
    assert result.returncode == 2 and lines[-1] == (
        "blt-jax train: error: unknown task 'color_quiz' (lm_eval.include_path adds a directory of task YAMLs)"
    ), lines[-3:]
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_lm_eval_task_names_are_indexed_once_and_kept(tmp_path, monkeypatch):
    """lm-eval's own task names are indexed once per lm-eval version (about 15 s on 2 cores) and kept
    under $XDG_CACHE_HOME/blt_jax: a later misspelt name is answered from there, with its close matches."""
    import lm_eval.tasks

    from blt_jax.errors import InputError
    from blt_jax.evals import harness

    indexed = []

    class Index:  # lm-eval's TaskManager, as far as the index goes
        def __init__(self, include_path=None, include_defaults=True):
            indexed.append(include_defaults)
            self.all_tasks = ["arc_easy", "hellaswag"] if include_defaults else []

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(lm_eval.tasks, "TaskManager", Index)
    assert harness.lm_eval_task_names() == ["arc_easy", "hellaswag"] and indexed == [True]
    kept = list((tmp_path / "cache" / "blt_jax").iterdir())
    assert [p.name for p in kept] == [f"lm_eval_tasks-{lm_eval.__version__}.json"], kept
    assert harness.lm_eval_task_names() == ["arc_easy", "hellaswag"] and indexed == [True]  # read, not indexed
    with pytest.raises(InputError, match="unknown task 'arc_eassy'; did you mean arc_easy"):
        harness.task_manager(["arc_eassy"], str(tmp_path))
    assert indexed == [True, False]  # only the include path was indexed again
    kept[0].write_text("{ torn")  # a damaged file is indexed again
    assert harness.lm_eval_task_names() == ["arc_easy", "hellaswag"] and indexed == [True, False, True]
