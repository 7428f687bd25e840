"""Ahead-of-time compilation for real TPU topologies on this CPU host (libtpu, no TPU).

Needs the `tpu` extra (libtpu); the README's test command installs it, so CI runs these.
"""

import json
import os

import flax.linen
import jax
import pytest

pytest.importorskip("libtpu", reason="AOT compilation for TPU needs libtpu: pip install -e '.[tpu]'")

from blt_jax.aot import aot_train_step, libtpu_name, require_fit, topology_devices
from blt_jax.cli import main
from blt_jax.experiment import load_experiment
from blt_jax.experiment.config import experiment_from_dict
from blt_jax.parallel import make_mesh
from blt_jax.train.programs import TrainPrograms

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "experiments", "tiny.py")
GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "shardings_bench_small_v5p_2x2x2.json")

pytestmark = pytest.mark.aot


def test_topology_names():
    assert libtpu_name("v5p-32") == "v5p:2x2x4"
    assert libtpu_name("v5litepod-256") == "v5e:16x16"
    assert libtpu_name("v6e:2x4") == "v6e:2x4"
    with pytest.raises(ValueError, match="unknown topology"):
        libtpu_name("v9-1")
    devices = topology_devices("v5e:2x2")
    assert len(devices) == 4 and devices[0].device_kind == "TPU v5 lite" and devices[0].platform == "tpu"
    single = topology_devices("v5litepod-1")  # smaller than libtpu's default host of 2x2 chips
    assert len(single) == 1 and single[0].device_kind == "TPU v5 lite"


def test_tiny_train_step_compiles_for_v5p():
    experiment = experiment_from_dict(load_experiment(TINY))
    report = aot_train_step(experiment, "v5p:2x2x2")
    assert report["devices"] == 8 and report["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1}
    assert report["fits"] is True and 0 < report["peak_bytes_per_device"] < report["hbm_bytes_per_device"]
    assert report["temp_bytes_per_device"] > 0 and report["argument_bytes_per_device"] > 0
    # XLA's memory report: the largest allocations, largest first, each no larger than the peak.
    sizes = [b["bytes"] for b in report["largest_buffers"]]
    assert len(sizes) == 5 and sizes == sorted(sizes, reverse=True) and sizes[-1] > 0
    assert sizes[0] <= report["peak_bytes_per_device"] and "f32[" in report["largest_buffers"][0]["shapes"]
    # XLA's count of the sharded program agrees with the analytic FLOPs (attention masks, norms and
    # softmaxes are the difference).
    assert 0.9 < report["compiled_over_analytic"] < 1.3, report
    json.dumps(report)  # JSON-able
    require_fit(report)
    too_big = dict(report, fits=False, hbm_bytes_per_device=report["peak_bytes_per_device"] // 2)
    with pytest.raises(ValueError, match="GiB over"):
        require_fit(too_big)


def test_aot_cli_for_v5e(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["aot", "--config", TINY, "--topology", "v5litepod-4", "--config.mesh.fsdp=2", "--config.mesh.data=2"])
    assert exit_info.value.code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["topology"] == "v5e:2x2" and report["device_kind"] == "TPU v5 lite"
    assert report["mesh"] == {"data": 2, "fsdp": 2, "tensor": 1} and report["fits"] is True


def parameter_specs(config: str, topology: str) -> dict:
    experiment = experiment_from_dict(load_experiment(config))
    programs = TrainPrograms(experiment, make_mesh(experiment.mesh, topology_devices(topology)))
    flat = jax.tree_util.tree_leaves_with_path(programs.param_shardings)
    return {
        jax.tree_util.keystr(path): [list(a) if isinstance(a, tuple) else a for a in sharding.spec]
        for path, sharding in flat
    }


def test_parameter_shardings_match_the_golden_file():
    """Every parameter's PartitionSpec of bench_small on a v5p:2x2x2 mesh, against a file in git.

    Regenerate after an intended change: BLT_JAX_WRITE_GOLDEN=1 pytest tests/test_aot.py -k golden
    """
    specs = parameter_specs(os.path.join(ROOT, "experiments", "bench_small.py"), "v5p:2x2x2")
    if os.environ.get("BLT_JAX_WRITE_GOLDEN"):
        with open(GOLDEN, "w") as f:
            json.dump(specs, f, indent=1, sort_keys=True)
    with open(GOLDEN) as f:
        golden = json.load(f)
    assert sorted(specs) == sorted(golden)
    changed = {k: (golden[k], specs[k]) for k in specs if specs[k] != golden[k]}
    assert not changed, changed
    # The big tables are sharded (not replicated) on this 8-device mesh.
    assert any(axis for axis in specs["['local_encoder']['hash_embeddings']['embedding']"])


def test_generation_step_and_entropy_pass_compile():
    from blt_jax.aot import aot_entropy_pass, aot_generation_step

    experiment = experiment_from_dict(load_experiment(TINY))
    generate = aot_generation_step(experiment, "v5e:2x2", capacity=256)
    assert generate["program"] == "generation_step" and generate["batch"] == {"prompts": 4, "capacity": 256}
    assert generate["fits"] is True and generate["compiled_flops_per_device"] > 0
    entropy = aot_entropy_pass(experiment, "v5e:2x2")
    assert entropy["program"] == "entropy_pass" and entropy["batch"] == {"rows": 8, "window": 128}
    assert entropy["fits"] is True and entropy["peak_bytes_per_device"] > 0


def test_a_config_that_does_not_fit_is_reported_with_the_numbers(capsys):
    """The TPU compiler refuses a program bigger than HBM: the aot command reports by how much."""
    args = [
        "aot",
        "--config",
        TINY,
        "--topology",
        "v5litepod-4",
        # Many rows of moderate length: rows of 262,144 bytes took 8 minutes to compile with the
        # splash kernels (their grid grows with the row); these compile in seconds and need 311 GiB.
        "--config.data.batch_size=4096",
        "--config.data.row_bytes=8192",
        "--config.data.row_patches=2048",
        "--require-fit",
    ]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 1
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["fits"] is False and report["device_kind"] == "TPU v5 lite"
    if "refused_by_compiler" in report:  # the TPU compiler stops at its own HBM check
        assert report["needed_bytes_per_device"] > report["available_bytes_per_device"] > 0, report
        assert report["over_bytes_per_device"] > 0
    else:
        assert report["peak_bytes_per_device"] > report["hbm_bytes_per_device"], report
    assert "GiB over" in captured.err


def test_compiler_refusal_is_parsed():
    from blt_jax.aot import DoesNotFit, compile_lowered

    class Refused:
        def compile(self):
            raise RuntimeError(
                "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
                "temporaries (139.07G) exceeds available HBM (15.75G)."
            )

    with pytest.raises(DoesNotFit) as info:
        compile_lowered(Refused())
    assert info.value.needed_bytes == int(139.07 * 2**30) and info.value.available_bytes == int(15.75 * 2**30)
    assert info.value.what == "HLO temporaries"

    class Broken:
        def compile(self):
            raise RuntimeError("INTERNAL: something else")

    with pytest.raises(RuntimeError, match="something else"):
        compile_lowered(Broken())


def _attention_temp_bytes(topology: str, rows_per_chip: int = 1, length: int = 4096) -> int:
    """Temporary bytes per chip of windowed attention (forward + backward) over a batch sharded like
    the train step's, `rows_per_chip` rows of `length` bytes per chip, compiled for `topology`."""
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec

    from blt_jax.aot import compile_lowered
    from blt_jax.nn.local_attention import banded_attention
    from blt_jax.nn.masks import CausalSpec
    from blt_jax.parallel import BATCH_AXES, LOGICAL_RULES, MeshConfig

    devices = topology_devices(topology)
    mesh = make_mesh(MeshConfig(1, -1, 1), devices)
    batch, heads, dim = rows_per_chip * len(devices), 4, 64
    rows = NamedSharding(mesh, PartitionSpec(BATCH_AXES))

    def loss(q, k, v, pos):
        spec = CausalSpec.self_attention(pos, jnp.zeros_like(pos), 512)
        return jnp.sum(banded_attention(q, k, v, spec) ** 2)

    qkv = jax.ShapeDtypeStruct((batch, length, heads, dim), jnp.float32, sharding=rows)
    pos = jax.ShapeDtypeStruct((batch, length), jnp.int32, sharding=rows)
    with jax.set_mesh(mesh), flax.linen.logical_axis_rules(LOGICAL_RULES):
        compiled = compile_lowered(jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(qkv, qkv, qkv, pos))
    return compiled.memory_analysis().temp_size_in_bytes


def test_memory_per_device_does_not_grow_with_the_global_batch():
    """One 4,096-byte row per chip on 8 and on 32 chips needs the same memory per chip: the loop over
    rows of windowed attention keeps the batch sharded instead of gathering every row onto every chip
    (which made the 1B profile need 139 GiB per v5e chip). Measured: 23.2 MB on both (34.6 MB with the
    earlier bands of 256 keys); the old loop needed 213 MB on 8 chips and 853 MB on 32."""
    temp_8, temp_32 = _attention_temp_bytes("v5p:2x2x2"), _attention_temp_bytes("v5p:2x4x4")
    assert temp_32 < 1.1 * temp_8, (temp_8, temp_32)


# The released sizes' profiles, byteify's and bench_small, compiled as configured: with the default
# attention ("auto": the splash kernels on a TPU), and bench_small once more with dense attention,
# where XLA counts every FLOP (it counts a Pallas kernel as none). Together ~40 minutes of
# compilation on 2 CPU cores (1B v5e-256 alone 7-12, byteify's stages ~8 and ~7), so they are a
# separate tier, not part of the suite: CI runs them after it, one at a time (the README's release
# command).
PROFILES = [
    ("bench_small.py", "v5p:2x2x2", "auto"),
    ("bench_small.py", "v5e:2x2", "auto"),
    ("bench_small.py", "v5e:2x2", "dense"),
    ("blt_1b.py:v5p-32", "v5p-32", "auto"),
    ("blt_1b.py:v5e-256", "v5litepod-256", "auto"),
    ("blt_7b.py:v5p-128", "v5p-128", "auto"),
    ("entropy_100m.py:v5p-32", "v5p-32", "auto"),
    ("entropy_100m.py:v5e-256", "v5litepod-256", "auto"),
    # Byteifying Llama-3.2-1B: stage 1 (the teacher frozen beside the BLT, unscanned) and stage 2.
    ("byteify_llama_1b.py:stage1:v5p-8", "v5p-8", "auto"),
    ("byteify_llama_1b.py:stage2:v5p-8", "v5p-8", "auto"),
    # Rows of 20,480 bytes on v5e-16: fits only with the kernels (`test_profile_fits_only_with_splash`).
    ("byteify_llama_1b.py:stage2:v5e-16-20k", "v5litepod-16", "auto"),
]
# Profiles the dense path does not fit: the README's claim that the kernels are what makes them fit.
ONLY_WITH_SPLASH = [("byteify_llama_1b.py:stage2:v5e-16-20k", "v5litepod-16")]


@pytest.mark.released
@pytest.mark.skipif(
    not os.environ.get("BLT_JAX_AOT_RELEASED"),
    reason="compiles a full-size train step (1-7 minutes each on 2 CPU cores; the release "
    "tier CI runs after the suite); set BLT_JAX_AOT_RELEASED=1",
)
@pytest.mark.parametrize(
    "config,topology,attention",
    PROFILES,
    ids=[f"{c.split('.py')[0]}{c.split('.py')[1]}-{t}-{a}" for c, t, a in PROFILES],
)
def test_profile_compiles_and_fits(config, topology, attention):
    """The train step of each profile compiles for its topology and its peak memory per chip stays
    under the chip's HBM (the figures of the README's Scaling table; printed with -rP)."""
    overrides = [f"model.attention_impl={attention}"]
    experiment = experiment_from_dict(load_experiment(os.path.join(ROOT, "experiments", config), overrides))
    report = aot_train_step(experiment, topology)
    print(json.dumps(report))
    assert report["attention"] == ("splash" if attention == "auto" else attention)  # auto means splash on a TPU
    assert report["fits"] is True, report
    assert 0 < report["peak_bytes_per_device"] < report["hbm_bytes_per_device"], report
    assert report["compiled_flops_per_device"] > 0
    assert (report["kernel_flops_per_device"] > 0) == (report["attention"] == "splash")
    if not experiment.train.scan:
        # Unscanned, XLA counts every layer: its FLOPs, plus the kernels' (which it counts as none),
        # agree with ours (scanned loops count once).
        assert 0.9 < report["compiled_over_analytic"] < 1.3, report


@pytest.mark.released
@pytest.mark.skipif(
    not os.environ.get("BLT_JAX_AOT_RELEASED"),
    reason="compiles a full-size train step; the release tier; set BLT_JAX_AOT_RELEASED=1",
)
@pytest.mark.parametrize("config,topology", ONLY_WITH_SPLASH)
def test_profile_fits_only_with_splash(config, topology):
    """With dense attention the TPU compiler refuses the profile for lack of HBM (it fits with splash:
    `test_profile_compiles_and_fits`); the report says by how much and what is largest."""
    overrides = ["model.attention_impl=dense"]
    experiment = experiment_from_dict(load_experiment(os.path.join(ROOT, "experiments", config), overrides))
    report = aot_train_step(experiment, topology)
    print(json.dumps(report))
    assert report["fits"] is False, report
    assert (
        report["over_bytes_per_device"] > 0 and report["needed_bytes_per_device"] > report["hbm_bytes_per_device"] * 0.9
    )
    assert report["largest_buffers"], report  # XLA's report of the refused program still names its buffers
