"""What training survives, each fault injected: steps whose loss is not finite (skipped, counted,
stopped after too many in a row, or rewound to the last checkpoint)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from user import TINY, TPU_NOISE, blt_jax


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("blt-jax") and not any(n in line for n in TPU_NOISE)]


def _rows(workdir) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_a_step_whose_loss_is_not_finite_changes_nothing_but_the_step_count():
    """The train step on a batch whose loss is NaN keeps the parameters and Adam's moments bit for bit
    and reports `skipped`; the next finite batch updates as if the bad one had not been there."""
    from blt_jax.train.state import TrainState
    from blt_jax.train.step import train_step

    def objective(params, batch):  # a linear model whose loss is NaN when the batch says so
        pred = batch["x"] @ params["w"]
        total = jnp.sum((pred - batch["y"]) ** 2) * jnp.where(batch["poison"], jnp.nan, 1.0)
        count = jnp.float32(batch["x"].shape[0])
        return total, (total, count, {})

    tx = optax.adamw(1e-2)
    params = {"w": jnp.ones((3, 2))}
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
    rng = np.random.default_rng(0)
    good = {"x": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32), "y": jnp.zeros((4, 2)),
            "poison": jnp.bool_(False)}
    bad = dict(good, poison=jnp.bool_(True))
    step = jax.jit(lambda s, b: train_step(s, b, objective=objective, tx=tx, schedule=lambda n: 1e-2))

    after_bad, metrics = step(state, bad)
    assert float(metrics["skipped"]) == 1.0 and not np.isfinite(float(metrics["loss"]))
    assert int(after_bad.step) == 1
    for before, after in zip(jax.tree_util.tree_leaves((state.params, state.opt_state)),
                             jax.tree_util.tree_leaves((after_bad.params, after_bad.opt_state))):
        np.testing.assert_array_equal(np.asarray(before), np.asarray(after))
    after_good, metrics = step(after_bad, good)
    assert float(metrics["skipped"]) == 0.0
    direct, _ = step(state, good)
    np.testing.assert_array_equal(np.asarray(after_good.params["w"]), np.asarray(direct.params["w"]))


def test_a_run_whose_loss_stays_nan_stops_in_one_line_with_its_checkpoints(tmp_path):
    """The issue's case: a learning rate of 1e30 used to run to the end, exit 0 and leave NaN
    checkpoints. Now every NaN step is skipped and counted, and after train.max_skipped_steps in a row
    the run stops naming the step; its newest checkpoint is finite and loads."""
    result = blt_jax("train", "--config", TINY, "--workdir", "run", "--no-progress",
                     "--config.train.learning_rate=1e30", "--config.train.steps=40", "--config.train.warmup_steps=4",
                     "--config.train.log_every=1", "--config.train.checkpoint_every=2",
                     "--config.train.max_skipped_steps=5", "--config.train.eval_every=0", cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = _errors(result.stderr)
    assert len(lines) == 1, lines
    assert lines[0].startswith("blt-jax train: error: training stopped at step ")
    assert "not finite in 5 steps in a row" in lines[0] and "train.max_skipped_steps=5" in lines[0]
    stopped = int(lines[0].split("training stopped at step ")[1].split(":")[0])
    assert stopped < 40
    rows = [r for r in _rows(tmp_path / "run") if "skipped_steps" in r]
    assert rows[-1]["step"] == stopped and rows[-1]["skipped_steps"] == 5
    assert "update was skipped" in result.stderr
    from blt_jax.api import from_pretrained

    model = from_pretrained(str(tmp_path / "run"))  # the newest checkpoint: the parameters before the skips
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree_util.tree_leaves(model.params))


@pytest.fixture(scope="module")
def poisoned(tmp_path_factory):
    """A user's directory with a corpus of ASCII files and one document holding 'þ' (UTF-8 C3 BE), and
    initial weights whose embedding of byte 0xBE is NaN: any batch holding that document has a NaN
    loss, every other batch trains normally (the table row of a byte no batch reads gets no
    gradient)."""
    from blt_jax.api import BLTModel
    from blt_jax.experiment import load_experiment
    from blt_jax.models import model_config_from_dict
    from blt_jax.tokenizer import OFFSET

    work = tmp_path_factory.mktemp("poisoned")
    corpus = work / "corpus"
    corpus.mkdir()
    words = ["alpha", "beta", "gamma", "delta", "pi", "rho", "sigma", "tau", "omega", "kappa"]
    rng = np.random.default_rng(0)
    for i in range(24):
        text = " ".join(rng.choice(words, 200)) + "\n"
        (corpus / f"doc{i:02d}.txt").write_text(text)
    (corpus / "doc_poison.txt").write_text("the thorn letter \u00fe appears only here\n")
    config = model_config_from_dict(load_experiment(TINY).model)
    model = BLTModel.random(config, seed=3)
    params = jax.tree_util.tree_map(np.array, model.params)
    params["local_encoder"]["tok_embeddings"]["embedding"][OFFSET + 0xBE] = np.nan
    BLTModel(config, params, model.entropy_params).save(str(work / "poisoned_init"))
    return work


def _train_poisoned(work, workdir: str, *extra):
    return blt_jax("train", "--config", TINY, "--workdir", workdir, "--no-progress",
                   "--config.data.source=corpus", "--config.eval.source=corpus", "--config.train.init_from=poisoned_init",
                   "--config.train.steps=24", "--config.train.warmup_steps=2", "--config.train.log_every=1",
                   "--config.train.checkpoint_every=4", "--config.train.eval_every=0", *extra, cwd=work)


def test_a_document_that_makes_the_loss_nan_is_skipped_and_training_goes_on(poisoned):
    result = _train_poisoned(poisoned, "skip")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [r for r in _rows(poisoned / "skip") if "skipped_steps" in r]
    skipped = rows[-1]["skipped_steps"]
    assert 1 <= skipped < 24 and rows[-1]["step"] == 24
    losses = [r["loss"] for r in rows]
    assert sum(loss is None for loss in losses) == skipped  # NaN is written as null, once per skipped step
    assert result.stderr.count("update was skipped") == skipped
    finite = [loss for loss in losses if loss is not None]
    assert finite[-1] < finite[0]  # the other batches trained
    evals = [r for r in _rows(poisoned / "skip") if "eval_bpb" in r]
    assert evals and all(r["eval_bpb"] is None or np.isfinite(r["eval_bpb"]) for r in evals)


def test_rewind_on_spike_goes_back_to_the_last_checkpoint_and_on_past_the_bad_batch(poisoned):
    result = _train_poisoned(poisoned, "rewind", "--config.train.rewind_on_spike=true")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [r for r in _rows(poisoned / "rewind") if "rewinds" in r]
    assert rows[-1]["rewinds"] >= 1 and rows[-1]["step"] == 24
    assert "rewound to checkpoint" in result.stderr
