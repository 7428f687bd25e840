"""A model kind defined in this file alone, plus its registration, goes through the library unchanged.

`ConvLMKind` below is a byte LM the library has never heard of: an embedding, a causal convolution
over the last `window` bytes, and an unembedding. Registered as a plugin (an entry point of an
installed distribution, which is how a user's package would declare it), the `blt-jax` commands
train it, evaluate it, score lm-eval tasks with it, export it to a model directory and read that
directory back, each in a fresh process, with no change anywhere else.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from blt_jax.config import require
from blt_jax.models import ModelKind
from blt_jax.nn import axes

# --- The kind -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ConvLMConfig:
    """A causal convolution byte LM.

    Attributes:
      dim: width D of the byte embeddings and the convolution.
      window: bytes the convolution sees (the current one and window - 1 before it).
      vocab_size: byte ids and specials V (260).
    """

    dim: int = 32
    window: int = 4
    vocab_size: int = 260

    def __post_init__(self):
        require(isinstance(self.dim, int) and self.dim > 0, "dim", f"must be a positive integer, got {self.dim!r}")
        require(
            isinstance(self.window, int) and self.window > 0,
            "window",
            f"must be a positive integer, got {self.window!r}",
        )


class ConvLM(nn.Module):
    """tokens int [B, N] -> next-byte logits float32 [B, N, V]."""

    config: ConvLMConfig

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        c = self.config
        init = nn.initializers.normal(0.02)
        embed = self.param("embed", nn.with_logical_partitioning(init, (axes.VOCAB, axes.EMBED)), (c.vocab_size, c.dim))
        kernel = self.param(
            "conv", nn.with_logical_partitioning(init, (None, axes.EMBED, axes.MLP)), (c.window, c.dim, c.dim)
        )
        unembed = self.param(
            "unembed", nn.with_logical_partitioning(init, (axes.MLP, axes.VOCAB)), (c.dim, c.vocab_size)
        )
        x = embed[tokens]  # [B, N, D]
        n = tokens.shape[1]
        # Causal: position t sees bytes t - window + 1 .. t (zeros before the row starts).
        padded = jnp.pad(x, ((0, 0), (c.window - 1, 0), (0, 0)))
        windows = jnp.stack([padded[:, s : s + n] for s in range(c.window)], axis=2)  # [B, N, W, D]
        hidden = jax.nn.gelu(jnp.einsum("bnwd,wde->bne", windows, kernel))
        return (hidden @ unembed).astype(jnp.float32)


class ConvLMKind(ModelKind):
    """The kind: what the library asks of a model, answered for ConvLM."""

    name = "conv_lm"
    config_class = ConvLMConfig
    description = "a convolutional byte LM"
    config: ConvLMConfig

    def module(self, options=None) -> nn.Module:
        return ConvLM(self.config)

    def inputs(self, batch, embeds=None):
        return (batch["tokens"],)

    def scan_stacks(self):
        return {}

    def training_flops_per_byte(self, row_bytes: int, mean_patch_len: float) -> float:
        c = self.config
        return 3 * 2 * (c.window * c.dim * c.dim + c.dim * c.vocab_size)


# --- The tests ------------------------------------------------------------------------------------

TESTS = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory):
    """The environment of a user who installed a distribution declaring the kind: its metadata (an
    entry point in group blt_jax.model_kinds) on the path, and this file importable."""
    site = tmp_path_factory.mktemp("site")
    info = site / "conv_lm_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: conv-lm-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[blt_jax.model_kinds]\nconv_lm = test_model_kind_plugin:ConvLMKind\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), TESTS, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def blt_jax(*args, cwd, env):
    return subprocess.run(
        [sys.executable, "-m", "blt_jax", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )


EXPERIMENT = """
import ml_collections
from blt_jax.experiment import tiny

def get_config(arg=None):
    config = tiny.get_config()
    config.model = ml_collections.ConfigDict(dict(kind="conv_lm", dim=32, window=4, vocab_size=260))
    config.data.source = "corpus"
    config.eval.source = "held.txt"
    config.train.steps = 60
    config.train.learning_rate = 2e-2
    config.train.warmup_steps = 3
    config.train.eval_every = 0
    config.train.checkpoint_every = 30
    return config
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory, plugin_env):
    """A user's directory: a corpus, held-out text, the experiment file, and the kind trained by
    `blt-jax train` for 60 steps."""
    work = tmp_path_factory.mktemp("kind")
    (work / "corpus").mkdir()
    for i in range(8):
        (work / "corpus" / f"{i}.py").write_text("".join(f"def f{i}_{j}(x):\n    return x + {j}\n" for j in range(80)))
    (work / "held.txt").write_text("".join(f"def g{j}(x):\n    return x + {j}\n" for j in range(120)))
    (work / "conv.py").write_text(EXPERIMENT)
    result = blt_jax("train", "--config", "conv.py", "--workdir", "run", "--no-progress", cwd=work, env=plugin_env)
    assert result.returncode == 0, result.stderr[-3000:]
    return work, result


def test_a_kind_unknown_to_the_library_trains_from_its_experiment_file(trained):
    work, result = trained
    rows = [json.loads(line) for line in (work / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses[-1] < losses[0] - 1.0, losses  # it learned (from about ln 260 = 5.6 nats)
    saved = json.loads((work / "run" / "config.json").read_text())
    assert saved["model"]["kind"] == "conv_lm"
    assert (work / "run" / "checkpoints" / "60").is_dir()


def test_it_evaluates_and_exports_and_the_export_reads_back(trained, plugin_env):
    work, _ = trained
    result = blt_jax("eval", "--checkpoint", "run", "--data", "held.txt", cwd=work, env=plugin_env)
    assert result.returncode == 0, result.stderr[-3000:]
    run_bpb = float(result.stdout.split("bits per byte ")[1].split()[0])
    assert 0 < run_bpb < 6.0, result.stdout
    result = blt_jax("export", "run", "exported", cwd=work, env=plugin_env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "a convolutional byte LM" in result.stdout or "conv" in result.stdout.lower(), result.stdout
    # The exported directory is a model of its own: scored on the same text, the same bits per byte.
    code = (
        "from blt_jax.api import from_pretrained; import numpy as np; "
        "m = from_pretrained('exported'); r = from_pretrained('run'); "
        "t = np.frombuffer(open('held.txt','rb').read()[:200], np.uint8).astype(np.int32)[None] + 4; "
        "a = np.asarray(m.logits(t)); b = np.asarray(r.logits(t)); "
        "print(type(m).__name__, a.shape, float(np.abs(a - b).max()))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=work, env=plugin_env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    name, *_, diff = result.stdout.split()
    assert float(diff) == 0.0, result.stdout


def test_it_scores_lm_eval_tasks(trained, plugin_env):
    """A loglikelihood task written as a user would (a YAML beside a JSONL), scored through the
    plugin kind: the right continuations are the ones the corpus taught."""
    work, _ = trained
    tasks = work / "tasks"
    tasks.mkdir()
    items = [{"context": f"def f0_{j}(x):\n    return x + ", "right": f"{j}\n", "wrong": "zebra\n"} for j in range(20)]
    (tasks / "next.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
    (tasks / "next.yaml").write_text(
        "task: conv_next\n"
        "dataset_path: json\n"
        "dataset_kwargs:\n  data_files:\n    test: " + str(tasks / "next.jsonl") + "\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        "doc_to_text: '{{context}}'\n"
        "doc_to_choice: '{{[right, wrong]}}'\n"
        "doc_to_target: 0\n"
        "metric_list:\n  - metric: acc\n"
    )
    result = blt_jax(
        "lm-eval",
        "--checkpoint",
        "run",
        "--tasks",
        "conv_next",
        "--include-path",
        "tasks",
        "--no-progress",
        "--output",
        "scores.json",
        cwd=work,
        env=plugin_env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    scores = json.loads((work / "scores.json").read_text())
    acc = scores["results"]["conv_next"]["acc,none"]
    assert acc >= 0.9, scores["results"]


def test_without_its_plugin_the_kind_is_one_line_naming_the_known_kinds(trained):
    work, _ = trained
    result = blt_jax("eval", "--checkpoint", "run", "--data", "held.txt", cwd=work, env=dict(os.environ))
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("blt-jax eval: error:")]
    assert len(lines) == 1 and "unknown model kind 'conv_lm'" in lines[0], result.stderr[-2000:]
