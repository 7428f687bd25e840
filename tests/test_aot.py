"""Ahead-of-time compilation for real TPU topologies on this CPU host (libtpu, no TPU).

Needs the `tpu` extra (libtpu); the README's test command installs it, so CI runs these.
"""

import json
import os

import jax
import pytest

pytest.importorskip("libtpu", reason="AOT compilation for TPU needs libtpu: pip install -e '.[tpu]'")

from blt_jax.aot import aot_train_step, libtpu_name, require_fit, topology_devices  # noqa: E402
from blt_jax.cli import main  # noqa: E402
from blt_jax.experiment import load_experiment  # noqa: E402
from blt_jax.parallel import make_mesh  # noqa: E402
from blt_jax.train.config import experiment_from_dict  # noqa: E402
from blt_jax.train.trainer import Trainer  # noqa: E402

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


def test_tiny_train_step_compiles_for_v5p():
    experiment = experiment_from_dict(load_experiment(TINY))
    report = aot_train_step(experiment, "v5p:2x2x2")
    assert report["devices"] == 8 and report["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1}
    assert report["fits"] is True and 0 < report["peak_bytes_per_device"] < report["hbm_bytes_per_device"]
    assert report["temp_bytes_per_device"] > 0 and report["argument_bytes_per_device"] > 0
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
        main(["aot", "--config", TINY, "--topology", "v5litepod-4", "--set", "mesh.fsdp=2", "--set", "mesh.data=2"])
    assert exit_info.value.code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["topology"] == "v5e:2x2" and report["device_kind"] == "TPU v5 lite"
    assert report["mesh"] == {"data": 2, "fsdp": 2, "tensor": 1} and report["fits"] is True


def parameter_specs(config: str, topology: str) -> dict:
    experiment = experiment_from_dict(load_experiment(config))
    trainer = Trainer(experiment, make_mesh(experiment.mesh, topology_devices(topology)))
    flat = jax.tree_util.tree_leaves_with_path(trainer.param_shardings)
    return {jax.tree_util.keystr(path): [list(a) if isinstance(a, tuple) else a for a in sharding.spec]
            for path, sharding in flat}


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
