"""Model kinds behind one interface: a third kind, defined here in one place and registered with one
line, trains, evaluates, counts, scans and reports FLOPs through code that never names it."""

import dataclasses

import flax.linen as nn
import jax
import numpy as np
import pytest

from blt_jax import models
from blt_jax.config import EntropyLMConfig, StackConfig, entropy_lm_from_dict
from blt_jax.experiment.config import experiment_from_dict, experiment_to_dict, resolve_scan
from blt_jax.metrics.flops import stack_forward_flops
from blt_jax.models import ModelKind
from blt_jax.nn.entropy_lm import EntropyLM
from blt_jax.parallel import MeshConfig, make_mesh
from blt_jax.params import count, init_params
from blt_jax.train.programs import TrainPrograms

# ---- the new kind: its configuration, module and ModelKind (what a new file would hold) ---------


@dataclasses.dataclass(frozen=True)
class ByteLMConfig:
    """A plain causal byte transformer baseline (no window, no patches)."""

    stack: StackConfig
    vocab_size: int = 260
    dtype: str = "float32"
    param_dtype: str = "float32"


class ByteLM(nn.Module):
    """The byte LM: an entropy LM without a window, as its own module."""

    STACK_PATH = ("inner",)
    config: ByteLMConfig

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        inner = EntropyLMConfig(
            stack=self.config.stack,
            vocab_size=self.config.vocab_size,
            dtype=self.config.dtype,
            param_dtype=self.config.param_dtype,
        )
        return EntropyLM(inner, name="inner")(tokens)


class ByteLMKind(ModelKind):
    name = "byte_lm"
    config_class = ByteLMConfig
    description = "a byte LM"

    @classmethod
    def config_from_dict(cls, raw, path):
        data = entropy_lm_from_dict({k: v for k, v in dict(raw).items() if k != "kind"}, path)
        return ByteLMConfig(data.stack, data.vocab_size, data.dtype, data.param_dtype)

    def module(self, options=None):
        return ByteLM(self.config)

    def inputs(self, batch, embeds=None):
        return (batch["tokens"],)

    def scan_stacks(self):
        return {}

    def training_flops_per_byte(self, row_bytes, mean_patch_len):
        stack = self.config.stack
        head = row_bytes * 2 * stack.dim * self.config.vocab_size
        return 3 * (stack_forward_flops(stack, row_bytes) + head) / row_bytes


# ---------------------------------------------------------------------------------------------------


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setattr(models, "KINDS", dict(models.KINDS))  # registered for this test only
    models.register_kind(ByteLMKind)


def raw_experiment():
    stack = dict(dim=32, n_layers=2, n_heads=2, ffn_hidden=96, window=None, rope_theta=10000.0)
    data = dict(source="default", batch_size=8, row_bytes=32, row_patches=8, shuffle=False, seed=0)
    return {
        "model": {"kind": "byte_lm", "stack": stack},
        "data": data,
        "train": dict(steps=4, warmup_steps=1, log_every=1, checkpoint_every=0),
    }


def test_a_third_kind_trains_evaluates_and_round_trips(registered):
    experiment = experiment_from_dict(raw_experiment())
    assert isinstance(experiment.model, ByteLMConfig)
    assert experiment.data.row_patches == 0  # no patches: plain byte rows
    assert experiment_from_dict(experiment_to_dict(experiment)) == experiment  # saved and read back
    assert resolve_scan("all", experiment.model) == ()
    kind = models.model_kind(experiment.model)
    assert kind.entropy_lm is None and kind.patching is None and kind.companions == {}
    assert count(init_params(experiment.model, jax.random.key(0))) > 0
    assert kind.training_flops_per_byte(32, 1.0) > 0

    programs = TrainPrograms(experiment, make_mesh(MeshConfig(1, -1, 1)))
    state = programs.init()
    rng = np.random.default_rng(0)
    tokens = rng.integers(4, 260, size=(8, 32)).astype(np.int32)
    batch = {"tokens": tokens, "targets": np.roll(tokens, -1, axis=1), "mask": np.ones((8, 32), bool)}
    losses = []
    for _ in range(3):
        state, metrics = programs.step(state, programs.global_batch(batch))
        losses.append(float(metrics["loss"]))
    assert losses[-1] < losses[0]  # it learns the batch
    result = programs.evaluate(state.params, [batch])
    assert result["eval_bytes"] == 8 * 32 and np.isfinite(result["eval_bpb"])


def test_an_unregistered_kind_is_named_in_one_line():
    with pytest.raises(ValueError, match=r"model.kind: unknown model kind 'byte_lm'; expected 'blt' or 'entropy_lm'"):
        experiment_from_dict(raw_experiment())
