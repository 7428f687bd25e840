"""The sharded train step: equal on every mesh, exact gradient accumulation, optimizer schedule."""

import os

import jax
import numpy as np
import pytest

from blt_jax.config import ConfigError
from blt_jax.data.pipeline import build_dataset
from blt_jax.experiment import load_experiment
from blt_jax.experiment.config import experiment_from_dict
from blt_jax.models import model_kind
from blt_jax.nn.scan import unstack_layers
from blt_jax.parallel import MeshConfig, make_mesh
from blt_jax.train.optimizer import learning_rate
from blt_jax.train.programs import TrainPrograms

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "experiments", "tiny.py")


def tiny_experiment(**train):
    raw = load_experiment(TINY)
    for key, value in train.items():
        raw.train[key] = value
    return experiment_from_dict(raw)


@pytest.fixture(scope="module")
def batches():
    exp = tiny_experiment()
    it = iter(build_dataset(exp.data))
    return [next(it) for _ in range(3)]


def run(exp, mesh, batches):
    programs = TrainPrograms(exp, mesh)
    state = programs.init()
    losses = []
    for batch in batches:
        state, metrics = programs.step(state, programs.global_batch(batch))
        losses.append(float(metrics["loss"]))
    return losses, jax.device_get(state.params)


@pytest.fixture(scope="module")
def single_device(batches):
    exp = tiny_experiment()
    return run(exp, make_mesh(MeshConfig(1, 1, 1), jax.devices()[:1]), batches)


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 2, 2), (1, 4, 2)])
def test_sharded_step_equals_single_device(shape, batches, single_device):
    exp = tiny_experiment()
    losses, params = run(exp, make_mesh(MeshConfig(*shape)), batches)
    np.testing.assert_allclose(losses, single_device[0], rtol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(single_device[1])):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4)


def test_parameters_are_sharded_by_the_rules():
    programs = TrainPrograms(tiny_experiment(), make_mesh(MeshConfig(1, 4, 2)))
    state = programs.init()
    wq = state.params["global_transformer"]["layers_0"]["attention"]["wq"]  # [embed, heads, head_dim]
    assert wq.sharding.spec == jax.P("fsdp", "tensor", None)
    mu = state.opt_state[1][0].mu["global_transformer"]["layers_0"]["attention"]["wq"]
    assert mu.sharding.spec == wq.sharding.spec  # AdamW moments follow their parameters


def test_gradient_accumulation_is_exact(batches):
    mesh = make_mesh(MeshConfig(1, 1, 1), jax.devices()[:1])
    whole = run(tiny_experiment(), mesh, batches[:2])
    accumulated = run(tiny_experiment(grad_accum=2), mesh, batches[:2])
    np.testing.assert_allclose(accumulated[0], whole[0], rtol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(accumulated[1]), jax.tree_util.tree_leaves(whole[1])):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4)


def test_schedule_warmup_then_cosine_to_floor():
    exp = tiny_experiment(steps=110, warmup_steps=10, learning_rate=1e-3, min_lr_ratio=0.01)
    lr = learning_rate(exp.train)
    assert float(lr(0)) == 0.0 and float(lr(5)) == pytest.approx(5e-4)
    assert float(lr(10)) == pytest.approx(1e-3) and float(lr(60)) == pytest.approx(0.505e-3, rel=1e-4)
    assert float(lr(110)) == pytest.approx(1e-5, rel=1e-4)


def test_runs_differing_only_in_the_optimizers_numbers_share_one_compiled_step(batches):
    """Steps, warmup, learning rate, floor, AdamW's numbers and clipping are arguments of the train
    step, not constants of its program: a run resumed with more steps, or a sweep over learning rates,
    lowers to the same program (the persistent cache's key), so nothing is compiled again."""
    mesh = make_mesh(MeshConfig(1, 1, 1), jax.devices()[:1])
    numbers = dict(
        steps=77, warmup_steps=0, learning_rate=3e-3, min_lr_ratio=0.2, weight_decay=0.0, b1=0.8, b2=0.99, eps=1e-6
    )

    def program(**train):
        programs = TrainPrograms(tiny_experiment(**train), mesh)
        return programs.lower_step(programs.abstract_state, programs.global_batch(batches[0])).as_text()

    base = program()
    assert program(**numbers, clip_norm=0.5) == base
    assert program(grad_accum=2) != base  # the structure still makes a program of its own


@pytest.mark.parametrize("param_dtype", ["float32", "bfloat16"])
def test_a_step_gives_back_the_state_it_takes(param_dtype, batches):
    """The state after a step has the structure and dtypes of the state before it (bfloat16
    parameters keep bfloat16 Adam moments: the optimizer's numbers stay constants of their dtype)."""
    raw = load_experiment(TINY)
    raw.model.param_dtype = param_dtype
    programs = TrainPrograms(experiment_from_dict(raw), make_mesh(MeshConfig(1, 1, 1), jax.devices()[:1]))
    state_out, _ = programs.lower_step(programs.abstract_state, programs.global_batch(batches[0])).out_info
    dtypes = lambda tree: jax.tree_util.tree_map(lambda x: str(x.dtype), tree)
    assert dtypes(state_out) == dtypes(programs.abstract_state)
    assert {str(x.dtype) for x in jax.tree_util.tree_leaves(programs.abstract_state.params)} == {param_dtype}


@pytest.mark.parametrize(
    "section,key,value,field",
    [
        ("train", "warmup_steps", 5000, "train.warmup_steps"),
        ("train", "remat", "latent=sometimes", "train.remat"),
        ("train", "learnin_rate", 1.0, "train.learnin_rate"),
        ("mesh", "fsdp", 0, "mesh.fsdp"),
        ("data", "row_patches", 1, "data.row_patches"),
        ("train", "scan", "decoder", "train.scan"),
        ("train", "scan", "entropy", "train.scan"),  # a BLT has no entropy stack to scan
    ],
)
def test_bad_configs_fail_fast_naming_the_field(section, key, value, field):
    raw = load_experiment(TINY)
    raw[section][key] = value
    with pytest.raises(ConfigError) as info:
        experiment_from_dict(raw)
    assert info.value.field == field


def test_batch_must_split_into_micro_batches():
    raw = load_experiment(TINY)
    raw.train.grad_accum = 3
    with pytest.raises(ConfigError, match="data.batch_size"):
        experiment_from_dict(raw)


# "full" alone is covered with the scanned stack below. Compared with the shared single-device run
# (same 3 batches) rather than a fresh per-layer run: one compilation fewer.
@pytest.mark.parametrize("remat", ["latent=save_dots,decoder=full"])
def test_remat_changes_memory_not_maths(remat, batches, single_device):
    mesh = make_mesh(MeshConfig(1, 1, 1), jax.devices()[:1])
    rematted = run(tiny_experiment(remat=remat), mesh, batches)
    np.testing.assert_allclose(rematted[0], single_device[0], rtol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(rematted[1]), jax.tree_util.tree_leaves(single_device[1])):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5)


def test_bf16_compute_keeps_fp32_params(batches, single_device):
    raw = load_experiment(TINY)
    raw.model.dtype = "bfloat16"
    exp = experiment_from_dict(raw)
    programs = TrainPrograms(exp, make_mesh(MeshConfig(1, 1, 1), jax.devices()[:1]))
    state = programs.init()
    state, metrics = programs.step(state, programs.global_batch(batches[0]))
    leaves = jax.tree_util.tree_leaves(state.params)
    assert all(x.dtype == np.float32 for x in leaves)
    mu = jax.tree_util.tree_leaves(state.opt_state[1][0].mu)
    assert all(x.dtype == np.float32 for x in mu)
    assert abs(float(metrics["loss"]) - single_device[0][0]) < 0.05  # bf16 rounding only


@pytest.mark.parametrize("scan,remat", [("all", "latent=full")])  # "all" = the latent stack of a BLT
def test_scan_over_layers_changes_layout_not_maths(scan, remat, batches, single_device):
    """A scanned latent stack trains exactly like the per-layer one (same init, same updates)."""
    mesh = make_mesh(MeshConfig(1, 1, 1), jax.devices()[:1])
    plain = single_device  # the per-layer run over the same 3 batches
    programs = TrainPrograms(tiny_experiment(scan=scan, remat=remat), mesh)
    state = programs.init()
    stacked = state.params["global_transformer"]["layers"]["attention"]["wq"]
    assert stacked.shape[0] == programs.experiment.model.latent.n_layers
    assert "layers_0" not in state.params["global_transformer"]
    losses = []
    for batch in batches:
        state, metrics = programs.step(state, programs.global_batch(batch))
        losses.append(float(metrics["loss"]))
    np.testing.assert_allclose(losses, plain[0], rtol=1e-5)
    layout = model_kind(programs.experiment.model).scan_layout(programs.scan)
    canonical = jax.device_get(unstack_layers(state.params, layout))
    assert jax.tree_util.tree_structure(canonical) == jax.tree_util.tree_structure(plain[1])
    for a, b in zip(jax.tree_util.tree_leaves(canonical), jax.tree_util.tree_leaves(plain[1])):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5)
    # Round trip of the layouts, and the stacked axis is replicated by the rules.
    again = jax.device_get(programs.train_layout(canonical))
    for a, b in zip(jax.tree_util.tree_leaves(again), jax.tree_util.tree_leaves(jax.device_get(state.params))):
        np.testing.assert_array_equal(a, b)
    spec = programs.param_shardings["global_transformer"]["layers"]["attention"]["wq"].spec
    assert spec[0] is None and len(spec) == 4


def test_scanned_entropy_lm_equals_per_layer():
    from blt_jax.config import EntropyLMConfig, StackConfig
    from blt_jax.nn.entropy_lm import EntropyLM
    from blt_jax.nn.options import RunOptions
    from blt_jax.nn.scan import stack_layers
    from blt_jax.params import init_params

    config = EntropyLMConfig(StackConfig(32, 3, 4, 96, window=8))
    params = init_params(config, jax.random.key(0))
    tokens = np.random.default_rng(0).integers(4, 260, size=(2, 20)).astype(np.int32)
    plain = EntropyLM(config).apply({"params": params}, tokens)
    scanned = EntropyLM(config, RunOptions(scan=("entropy",))).apply(
        {"params": stack_layers(params, model_kind(config).scan_layout(("entropy",)))}, tokens
    )
    np.testing.assert_allclose(np.asarray(scanned), np.asarray(plain), atol=1e-5, rtol=1e-5)
