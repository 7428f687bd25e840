"""`blt-jax study`: compute matching, the corpus split, the orderings of the report, one-line errors,
and (release tier, marker `long`) the tiny study end to end on a corpus written here, stopped by
SIGTERM and resumed."""

import json
import math
import os
import signal
import time

import numpy as np
import pytest
from user import TPU_NOISE, blt_jax, blt_jax_many, start

from blt_jax.config import ConfigError
from blt_jax.data.pipeline import build_dataset
from blt_jax.errors import InputError
from blt_jax.experiment.config import experiment_from_dict
from blt_jax.study import arms as arming
from blt_jax.study import plan as planning
from blt_jax.study import report as reporting
from blt_jax.study import stages

TINY = ["--scale", "tiny", "--minutes", "0.01", "--no-progress"]
WORDS = (
    "river stone light garden window paper silver morning quiet letter market winter harbor candle "
    "forest engine yellow travel number simple"
).split()


def write_corpus(directory, documents=40, seed=0):
    """Prose unlike the default corpus (Python code): sentences of common words, one file per document."""
    rng = np.random.default_rng(seed)
    os.makedirs(directory, exist_ok=True)
    for d in range(documents):
        lines = []
        for _ in range(int(rng.integers(20, 40))):
            words = rng.choice(WORDS, size=int(rng.integers(5, 12)))
            lines.append(" ".join(words).capitalize() + ".")
        with open(os.path.join(directory, f"doc{d:03d}.txt"), "w") as f:
            f.write(f"Document {d}.\n" + "\n".join(lines) + "\n")


# ---- compute matching ---------------------------------------------------------------------------


@pytest.mark.parametrize("scale", ["small", "tiny"])
@pytest.mark.parametrize("space_length", [2.5, 4.0, 8.0])
def test_every_arm_is_matched_to_the_reference_flops(scale, space_length):
    plan = planning.make_plan(scale=scale, patch_sizes=(6.0, 8.0))
    lengths = {
        "blt_entropy": 4.2,
        "blt_nohash": 4.2,
        "blt_space": space_length,
        "blt_static": 3.9,
        "bpe_lm": 3.4,
        "blt_entropy_p6": 5.6,
        "blt_entropy_p8": 7.1,
    }
    thresholds = {"blt_entropy": 2.5, "blt_nohash": 2.5, "blt_entropy_p6": 2.9, "blt_entropy_p8": 3.3}
    models = arming.matched_models(plan, thresholds, lengths, token_vocab=plan.bpe_vocab)
    assert list(models) == [*planning.ARMS, "blt_entropy_p6", "blt_entropy_p8"]
    target = models["blt_entropy"].train_flops_per_byte
    for arm, m in models.items():
        # The recorded FLOPs are recomputed from the model section, not taken on trust.
        flops = arming.flops_per_byte(m.model, m.row_length, m.mean_patch_length)
        assert flops == pytest.approx(m.train_flops_per_byte)
        assert abs(flops / target - 1) <= arming.MATCH_TOLERANCE, (arm, flops, target)
    assert models["blt_nohash"].model["hash"] is None and models["blt_entropy"].model["hash"] is not None
    assert models["blt_space"].model["patching"]["mode"] == "space"
    assert models["blt_static"].model["patching"]["static_size"] == round(plan.target_patch_length)
    assert models["blt_entropy_p8"].model["patching"]["threshold"] == 3.3
    # A token row holds about a byte row's bytes; the tokenizer's ids fit the model.
    bpe = models["bpe_lm"]
    assert bpe.model["kind"] == "token_lm" and bpe.model["vocab_size"] == plan.bpe_vocab
    assert abs(bpe.row_length * 3.4 / plan.spec.row_bytes - 1) < 0.15 and bpe.row_length % 8 == 0
    # Longer patches leave room for a bigger latent transformer at the same compute.
    latent = lambda arm: arming.flops_per_byte(models[arm].model, 512, 1.0)
    assert latent("blt_entropy_p8") > latent("blt_entropy_p6") > latent("blt_entropy")
    if space_length > 4.2:
        assert models["blt_space"].model["latent"] != models["blt_entropy"].model["latent"]
        assert latent("blt_space") > latent("blt_entropy")


def test_a_token_transformer_scores_held_out_bytes_through_its_tokenizer(tmp_path):
    """Bits per byte of a token model: the log-likelihood of a document's tokens (one window, BOS
    first, no EOS) from `score_documents`, equal to the log-softmax of its logits, over the bytes."""
    import jax

    from blt_jax.api import TokenLM
    from blt_jax.config import token_lm_from_dict
    from blt_jax.data.bpe import train_bpe
    from blt_jax.evals.scoring import score_documents
    from blt_jax.params import init_params

    write_corpus(tmp_path / "texts", documents=10)
    texts = [open(tmp_path / "texts" / f, "rb").read() for f in sorted(os.listdir(tmp_path / "texts"))]
    tokenizer = train_bpe(texts, 400, str(tmp_path / "tok.json"))
    config = token_lm_from_dict(
        dict(
            stack=dict(dim=32, n_layers=1, n_heads=2, ffn_hidden=64, rope_theta=10000.0, window=64, norm_eps=1e-5),
            vocab_size=400,
        ),
        "model",
    )
    model = TokenLM(config, init_params(config, jax.random.key(0)), tokenizer)
    document = texts[0][:150]
    ids = model.encode(document)
    assert ids[0] == 1 and 2 not in ids and len(ids) - 1 < len(document)  # BOS, no EOS; tokens span bytes
    logits = np.asarray(model.logits(ids[None]), np.float64)[0]
    logp = (
        logits
        - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
        - logits.max(-1, keepdims=True)
    )
    expected = sum(logp[i, ids[i + 1]] for i in range(len(ids) - 1))
    (got,) = score_documents(model, [document], batch_size=2, max_length=128)
    assert got == pytest.approx(expected, abs=1e-3)


def test_match_stack_says_when_no_shape_reaches():
    plan = planning.make_plan(scale="tiny")
    model = arming.base_model("blt_space", plan, 2.0)
    assert issubclass(arming.MatchError, InputError)  # one line from the CLI, with what to change
    with pytest.raises(arming.MatchError, match="no latent shape.*--target-patch-length"):
        arming.match_stack(model, ("latent",), 1e15, lambda m: arming.flops_per_byte(m, 128, 4.0))


def test_unknown_arms_and_bad_plans_are_one_line_errors():
    with pytest.raises(ConfigError, match="unknown arm 'bpe'.*blt_entropy"):
        planning.parse_arms("blt_space,bpe")
    with pytest.raises(ConfigError, match="patch_sizes.*6,8"):
        planning.parse_sizes("6,eight")
    with pytest.raises(ConfigError, match="patch_sizes.*differ from the target"):
        planning.make_plan(patch_sizes=(4.5,))
    with pytest.raises(ConfigError, match="bpe_vocab"):
        planning.make_plan(bpe_vocab=100)
    assert planning.make_plan(scale="tiny").bpe_vocab == 512 and planning.make_plan().bpe_vocab == 4096
    # The reference arm is trained whatever is asked.
    assert planning.parse_arms("byte_lm") == ("blt_entropy", "byte_lm")
    assert planning.parse_arms("all") == tuple(planning.ARMS)
    with pytest.raises(ConfigError, match="seeds"):
        planning.make_plan(seeds=0)
    with pytest.raises(ConfigError, match="minutes"):
        planning.make_plan(minutes=0)


def test_plan_spends_more_steps_with_more_minutes_and_fewer_with_more_seeds():
    short, long = planning.make_plan(minutes=30), planning.make_plan(minutes=120)
    assert long.arm_steps > short.arm_steps
    assert planning.make_plan(minutes=120, seeds=4).arm_steps < long.arm_steps
    assert long.corpus_bytes >= long.arm_steps * long.bytes_per_step


# ---- corpus split -------------------------------------------------------------------------------


def _read_split(directory):
    return [open(os.path.join(directory, f), "rb").read() for f in sorted(os.listdir(directory))]


def test_split_holds_whole_documents_out(tmp_path):
    write_corpus(tmp_path / "texts", documents=30)
    detail = stages.split_corpus(
        str(tmp_path / "texts"),
        str(tmp_path / "train"),
        str(tmp_path / "val"),
        train_bytes=20_000,
        validation_bytes=3_000,
    )
    train, held = _read_split(tmp_path / "train"), _read_split(tmp_path / "val")
    header = lambda text: text.split(b"\n", 1)[0]
    held_docs = {header(t) for t in held if t.startswith(b"Document ")}
    train_docs = {header(t) for t in train if t.startswith(b"Document ")}
    assert held_docs and train_docs and not held_docs & train_docs
    # No held-out text reaches the training text (its lines are random: a shared 120 bytes would be a leak).
    everything = b"".join(train)
    assert not any(piece[i : i + 120] in everything for piece in held for i in range(0, len(piece) - 120, 60))
    assert 3_000 <= detail["validation_bytes"] < 3_000 + 4096 and 20_000 <= detail["train_bytes"] < 20_000 + 4096
    assert sum(len(t) for t in held) == detail["validation_bytes"]
    # Pieces end at line ends.
    assert all(t.endswith(b"\n") for t in train + held)


def test_split_reads_jsonl_nested_directories_raw_bytes_and_a_single_file(tmp_path):
    corpus = tmp_path / "mixed"
    write_corpus(corpus / "prose" / "deeper", documents=12)
    with open(corpus / "notes.jsonl", "w") as f:
        for i in range(12):
            f.write(json.dumps({"text": f"note {i}: " + "tea and toast " * 40 + "\n"}) + "\n")
    (corpus / "latin1.txt").write_bytes(b"caf\xe9 \xff\xfe raw bytes\n" * 100)
    stages.split_corpus(str(corpus), str(tmp_path / "train"), str(tmp_path / "val"), 20_000, 3_000)
    text = b"".join(_read_split(tmp_path / "train") + _read_split(tmp_path / "val"))
    assert b"tea and toast" in text and b"Document " in text and b"\xff\xfe raw bytes" in text
    # One long file: its pieces are the documents.
    (tmp_path / "one.txt").write_bytes(b"".join(b"line %d of a single long text\n" % i for i in range(3000)))
    detail = stages.split_corpus(str(tmp_path / "one.txt"), str(tmp_path / "t1"), str(tmp_path / "v1"), 30_000, 4_000)
    assert detail["validation_bytes"] >= 4_000 and detail["train_bytes"] >= 30_000
    held, train = set(_read_split(tmp_path / "v1")), set(_read_split(tmp_path / "t1"))
    assert not held & train
    with pytest.raises(InputError, match="too little text"):
        (tmp_path / "short.txt").write_text("just one line\n")
        stages.split_corpus(str(tmp_path / "short.txt"), str(tmp_path / "t2"), str(tmp_path / "v2"), 30_000, 4_000)


def test_pieces_cut_at_line_ends_and_keep_every_byte():
    data = b"".join(b"line %d\n" % i for i in range(500)) + b"no newline at the end"
    parts = stages.pieces(data, 300)
    assert b"".join(parts) == data
    assert all(len(p) <= 300 for p in parts) and all(p.endswith(b"\n") for p in parts[:-1])
    assert stages.pieces(b"x" * 1000, 300) == [b"x" * 300] * 3 + [b"x" * 100]


# ---- orderings ----------------------------------------------------------------------------------


def _rows(values):
    return [dict(arm=arm, seed=s, val_bpb=v) for arm, vs in values.items() for s, v in enumerate(vs)]


def test_orderings_compare_the_gap_with_the_seed_spread():
    claims = {
        c["claim"]: c
        for c in reporting.orderings(
            _rows(
                {
                    "blt_entropy": [2.00, 2.02],
                    "blt_space": [2.10, 2.11],
                    "blt_static": [2.105, 2.09],
                    "blt_nohash": [1.99, 2.05],
                }
            )
        )
    }
    space = claims["entropy patching beats space patching"]
    assert space["held"] and space["beyond_spread"] and space["gap_bpb"] == pytest.approx(0.095)
    static = claims["space patching beats static patches"]  # 2.1 vs 2.0975: does not hold, within spread
    assert not static["held"] and static["beyond_spread"] is False
    hashing = claims["hash n-gram embeddings help"]
    assert hashing["held"] and hashing["seed_spread_bpb"] == pytest.approx(0.06) and not hashing["beyond_spread"]
    assert "a BLT beats a byte transformer of equal training compute" not in claims  # no byte_lm arm
    one = reporting.orderings(_rows({"blt_entropy": [2.0], "byte_lm": [2.3]}))
    assert one[0]["held"] and one[0]["beyond_spread"] is None
    text = reporting.markdown([], one)
    assert "one seed: no spread" in text
    # "Matches" allows the seed spread, and at least 1% of the other arm's bits per byte.
    matched = lambda values: reporting.orderings(_rows(values))[0]
    assert matched({"blt_entropy": [2.015], "bpe_lm": [2.0]})["held"]
    assert not matched({"blt_entropy": [2.03], "bpe_lm": [2.0]})["held"]
    assert matched({"blt_entropy": [2.03, 2.07], "bpe_lm": [2.0, 2.05]})["held"]  # within the spread (0.05)
    # A scaling arm is compared with the reference BLT and with the BPE transformer.
    scaling = {
        c["claim"]: c
        for c in reporting.orderings(_rows({"blt_entropy": [2.0], "bpe_lm": [1.9], "blt_entropy_p8": [1.95]}))
    }
    assert scaling["8-byte patches with a resized latent transformer beat the reference's at equal inference FLOPs"][
        "held"
    ]
    assert not scaling["a BLT of 8-byte patches beats the BPE-token transformer at equal inference FLOPs"]["held"]


# ---- the command --------------------------------------------------------------------------------


def _one_line_error(result, *needles):
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [ln for ln in result.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("blt-jax study: error:"), result.stderr[-2000:]
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_cli_errors_are_one_line(tmp_path):
    write_corpus(tmp_path / "texts", documents=3)
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "only.txt").write_text("a single document\n" * 100)  # one piece: nothing to hold out
    cases = [
        (["--corpus", "texts", "--arms", "blt_space,bpe"], ("unknown arm 'bpe'", "byte_lm")),
        (["--corpus", "no_such_dir"], ("no_such_dir",)),
        (["--corpus", "one", "--workdir", "runs/one"], ("too little text",)),
        (["--corpus", "texts", "--workdir", "gs://bucket/study"], ("local directory",)),
        (["--corpus", "texts", "--patch-sizes", "6,x"], ("6,8",)),
        (["--corpus", "texts", "--bpe-vocab", "12"], ("bpe_vocab",)),
    ]
    results = blt_jax_many([["study", *args, *TINY] for args, _ in cases], cwd=tmp_path)
    for (_, needles), result in zip(cases, results, strict=True):
        _one_line_error(result, *needles)
    assert not os.path.exists(tmp_path / "runs" / "study")  # nothing written by a refused command
    assert os.path.exists(tmp_path / "runs" / "one" / "plan.json")  # planned before the split failed


def test_a_plan_is_kept_once_the_corpus_is_split(tmp_path):
    from blt_jax.stages import StageResult, save_result
    from blt_jax.study import open_plan

    workdir = str(tmp_path / "study")
    first, other = planning.make_plan(scale="tiny"), planning.make_plan(scale="tiny", seeds=3)
    assert open_plan(workdir, first, "/a") == first
    # The corpus was never split (the first stage failed): nothing was done, another study may start.
    assert open_plan(workdir, other, "/b") == other
    save_result(stages.Paths(workdir), StageResult("corpus", 1.0))
    with pytest.raises(InputError, match="holds a study of /b.*--seeds 3"):
        open_plan(workdir, first, "/b")
    assert open_plan(workdir, other, "/b") == other


def _wait_for_step(path, step, process, timeout=900):
    """Waits until a training run's metrics.jsonl holds `step` (the run is past compilation)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert process.poll() is None, process.communicate()
        if os.path.exists(path):
            with open(path) as f:
                if any(json.loads(line).get("step", 0) >= step for line in f if line.strip()):
                    return
        time.sleep(0.5)
    raise AssertionError(f"no step {step} in {path} after {timeout}s")


@pytest.mark.long  # ~3-5 minutes on 2 cores: the release tier runs it
def test_tiny_study_stopped_resumed_and_reported(tmp_path):
    """The tiny study from a fresh directory with relative paths: SIGTERM during the first arm's
    training exits 130 in one line, the same command resumes it, and the report holds every arm and
    seed at matched FLOPs; a third run redoes nothing but the report."""
    write_corpus(tmp_path / "my texts", documents=40)
    args = ("study", "--corpus", "my texts", "--workdir", "runs/study", "--seeds", "2", "--patch-sizes", "6", *TINY)
    arms = [*planning.ARMS, "blt_entropy_p6"]
    workdir = tmp_path / "runs" / "study"
    process = start(*args, cwd=tmp_path)
    _wait_for_step(workdir / "arms" / "blt_entropy" / "seed0" / "metrics.jsonl", 5, process)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=600)
    assert process.returncode == 130, err[-3000:]
    assert "blt_entropy@0 stopped by SIGTERM" in err and "run the same command again" in err, err[-3000:]
    stopped = json.loads((workdir / "arms" / "blt_entropy" / "seed0" / stages.SPENT_FILE).read_text())["seconds"]
    assert stopped > 0

    result = blt_jax(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    for noise in (*TPU_NOISE, "Traceback"):
        assert noise not in result.stderr, result.stderr[-3000:]
    for name in ("corpus", "tokenizer", "entropy_lm", "entropy_pass", "calibrate", "arms"):
        assert f"{name}: done earlier" in result.stdout, result.stdout
    resumed = json.loads((workdir / "stages" / "blt_entropy@0.json").read_text())
    assert resumed["detail"]["resumed_from_step"] >= 5
    assert resumed["detail"]["earlier_seconds"] == stopped  # the stopped session's time is reported too

    report = json.loads((workdir / "report.json").read_text())
    rows = report["arms"]
    held_out = sum(len(t) for t in _read_split(workdir / "corpus" / "validation"))
    assert sorted((r["arm"], r["seed"]) for r in rows) == sorted((a, s) for a in arms for s in (0, 1))
    target = next(r for r in rows if r["arm"] == "blt_entropy")["train_flops_per_byte"]
    for row in rows:
        for key in (
            "arm",
            "seed",
            "val_bpb",
            "train_flops_per_byte",
            "inference_flops_per_byte",
            "params",
            "bytes_per_patch_or_token",
        ):
            assert key in row, key
        assert abs(row["train_flops_per_byte"] / target - 1) <= 0.05, row
        # Forty tiny steps learn something (below a uniform guess: 8 bits), and no arm beats the text's
        # own entropy: each word is one of len(WORDS), so a byte carries at least ~log2(20) / 7.3 bits.
        floor = math.log2(len(WORDS)) / (np.mean([len(w) for w in WORDS]) + 1)
        assert math.isfinite(row["val_bpb"]) and 0.9 * floor < row["val_bpb"] < 7.5, row
        assert row["heldout_bytes"] == held_out  # every arm scored every held-out byte
        if (row["arm"], row["seed"]) == ("blt_entropy", 0):
            assert row["wall_seconds"] > stopped + resumed["detail"]["train_seconds"]
        # Total compute: FLOPs per byte x bytes trained; the token rows hold about the bytes of a byte row.
        assert row["train_flops"] == pytest.approx(row["train_flops_per_byte"] * row["trained_bytes"])
        assert abs(row["trained_bytes"] / (row["steps"] * 8 * 128) - 1) < 0.25, row
        if row["arm"] != "byte_lm":
            assert row["bytes_per_patch_or_token"] > 1.5, row
        if planning.is_entropy_arm(row["arm"]):
            assert row["inference_flops_per_byte_with_entropy_lm"] > row["inference_flops_per_byte"]
    assert len(report["orderings"]) == 7 and all(c["beyond_spread"] in (True, False) for c in report["orderings"])
    table = (workdir / "report.md").read_text()
    for arm in arms:
        assert f"| {planning.label(arm)} | 2 |" in table
    for figure in ("bpb_vs_flops.png", "bpb_vs_patch_size.png"):
        with open(workdir / figure, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n", figure
    # Same bytes in the same order: every arm's first batch of a seed starts with the same bytes
    # (arms patched by entropy read the stored entropies, the others the text).
    first = {}
    for arm in [a for a in arms if a != "bpe_lm"]:  # token rows hold tokens, not bytes
        raw = stages.run_experiment(stages.Paths(str(workdir)), planning.load_plan(str(workdir / "plan.json")), arm, 1)
        first[arm] = next(iter(build_dataset(experiment_from_dict(raw).data)))["tokens"][:, :64]
    for arm, tokens in first.items():
        np.testing.assert_array_equal(tokens, first["blt_entropy"], err_msg=arm)
    # The arms are ordinary runs: the experiment file gives `blt-jax train` the one the study trained.
    experiments = os.path.join(os.path.dirname(__file__), "..", "experiments", "study.py")
    config = blt_jax(
        "train",
        "--config",
        f"{experiments}:blt_entropy_p6@1@runs/study",
        "--workdir",
        "runs/study/arms/blt_entropy_p6/seed1",
        "--no-progress",
        cwd=tmp_path,
    )
    assert config.returncode == 0, config.stderr[-3000:]
    # The BPE run keeps its tokenizer: it loads after the study's copy is gone.
    from blt_jax.api import TokenLM
    from blt_jax.evals.scoring import load_model

    os.remove(workdir / "bpe" / "tokenizer.json")
    model = load_model(str(workdir / "arms" / "bpe_lm" / "seed0"))
    assert isinstance(model, TokenLM) and model.tokenizer.vocab_size <= model.config.vocab_size

    again = blt_jax(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("done earlier") == 6 + 2 * len(arms), again.stdout
    # Other options on the same workdir are refused in one line.
    _one_line_error(
        blt_jax("study", "--corpus", "my texts", "--workdir", "runs/study", "--seeds", "3", *TINY, cwd=tmp_path),
        "re-run with those",
    )


@pytest.mark.long  # ~1.5 minutes on 2 cores: the release tier runs it
def test_a_study_reads_its_corpus_from_a_bucket_into_a_home_directory(tmp_path):
    """`--corpus gs://...` (a real Cloud Storage API on 127.0.0.1) and `--workdir ~/...`: the study
    splits the bucket's documents into local text under the user's home and trains from there; the
    bucket is only read."""
    import gcs_server

    write_corpus(tmp_path / "texts", documents=30, seed=3)
    server = gcs_server.start(tmp_path)  # its log: tmp_path/fake-gcs-server.log
    try:
        server.create_bucket("corpora")
        for name in sorted(os.listdir(tmp_path / "texts")):
            server.upload("corpora", f"prose/{name}", (tmp_path / "texts" / name).read_bytes())
        uploaded = server.names("corpora")
        home, cwd = tmp_path / "home", tmp_path / "fresh"
        home.mkdir()
        cwd.mkdir()
        result = blt_jax(
            "study",
            "--corpus",
            "gs://corpora/prose",
            "--workdir",
            "~/runs/study",
            "--arms",
            "bpe_lm",
            "--seeds",
            "1",
            *TINY,
            cwd=cwd,
            home=home,
            **server.client_env(),
        )
        assert server.names("corpora") == uploaded  # nothing written to the bucket
    finally:
        server.stop()
    assert result.returncode == 0, result.stderr[-3000:]
    assert not os.listdir(cwd)  # `~` is the home directory, not a folder named "~" here
    workdir = home / "runs" / "study"
    assert json.loads((workdir / "stages" / "corpus.json").read_text())["detail"]["source"] == "gs://corpora/prose"
    # The split text came from the bucket's documents, on both sides.
    sources = [p.read_bytes() for p in (tmp_path / "texts").iterdir()]
    train, held = _read_split(workdir / "corpus" / "train"), _read_split(workdir / "corpus" / "validation")
    assert train and held
    assert all(any(piece in doc for doc in sources) for piece in train + held)
    rows = json.loads((workdir / "report.json").read_text())["arms"]
    assert sorted(r["arm"] for r in rows) == ["blt_entropy", "bpe_lm"]
    assert all(math.isfinite(r["val_bpb"]) for r in rows), rows
