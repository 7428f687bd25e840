"""Ahead-of-time compilation for real TPU topologies from any host (no TPU needed).

libtpu (the `tpu` extra) describes TPU slices as abstract devices
(`jax.experimental.topologies.get_topology_desc`); a mesh over them lowers and compiles the real
train step exactly as a pod would, and the compiled program reports its memory per device and its
FLOPs. This tells whether a configuration fits a chip's HBM, and how far the analytic FLOPs per byte
are from what XLA actually runs, before anyone pays for a slice.
"""

from __future__ import annotations

import os
import time
from typing import Any

import jax
import jax.numpy as jnp

from blt_jax.config import BLTConfig
from blt_jax.metrics.flops import training_flops_per_byte
from blt_jax.parallel import make_mesh
from blt_jax.train.config import ExperimentConfig

# Cloud names -> libtpu topology names. v4 / v5p counts are TensorCores (2 per chip); v5e / v6e counts
# are chips.
CLOUD_TOPOLOGIES = {
    "v4-8": "v4:2x2x1",
    "v4-16": "v4:2x2x2",
    "v4-32": "v4:2x2x4",
    "v4-128": "v4:4x4x4",
    "v5p-8": "v5p:2x2x1",
    "v5p-16": "v5p:2x2x2",
    "v5p-32": "v5p:2x2x4",
    "v5p-64": "v5p:2x4x4",
    "v5p-128": "v5p:4x4x4",
    "v5p-256": "v5p:4x4x8",
    "v5litepod-1": "v5e:1x1",
    "v5litepod-4": "v5e:2x2",
    "v5litepod-8": "v5e:2x4",
    "v5litepod-16": "v5e:4x4",
    "v5litepod-64": "v5e:8x8",
    "v5litepod-256": "v5e:16x16",
    "v5e-256": "v5e:16x16",
    "v6e-8": "v6e:2x4",
    "v6e-64": "v6e:8x8",
    "v6e-256": "v6e:16x16",
}

# HBM per device (bytes) by `device_kind` (Cloud TPU documentation).
HBM_BYTES = {
    "TPU v4": 32 * 2**30,
    "TPU v5 lite": 16 * 2**30,
    "TPU v5": 95 * 2**30,  # v5p
    "TPU v6 lite": 32 * 2**30,
}


def libtpu_name(topology: str) -> str:
    """The libtpu topology name of a Cloud or libtpu name ("v5p-32" -> "v5p:2x2x4")."""
    if ":" in topology:
        return topology
    if topology not in CLOUD_TOPOLOGIES:
        raise ValueError(f"unknown topology {topology!r}: use a libtpu name such as v5p:2x2x2 or one of "
                         f"{', '.join(CLOUD_TOPOLOGIES)}")
    return CLOUD_TOPOLOGIES[topology]


def topology_devices(topology: str) -> list:
    """Abstract devices of a TPU topology (needs libtpu: `pip install -e ".[tpu]"`)."""
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")  # a single (virtual) host: no discovery
    from jax.experimental import topologies

    name = libtpu_name(topology)
    try:
        return list(topologies.get_topology_desc(platform="tpu", topology_name=name).devices)
    except Exception as e:  # noqa: BLE001 - libtpu missing or the name unknown to it
        raise ValueError(f"cannot describe TPU topology {name!r} ({type(e).__name__}: {e}); AOT compilation "
                         "needs libtpu: pip install -c constraints.txt -e \".[tpu]\"") from e


def hbm_bytes(device_kind: str) -> int | None:
    return HBM_BYTES.get(device_kind)


def _abstract(tree: Any, shardings: Any) -> Any:
    return jax.tree_util.tree_map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, shardings)


def abstract_batch(experiment: ExperimentConfig, sharding) -> dict:
    """ShapeDtypeStructs of one global training batch."""
    data = experiment.data
    shape = (data.batch_size, data.row_bytes)
    batch = {
        "tokens": jax.ShapeDtypeStruct(shape, jnp.int32, sharding=sharding),
        "targets": jax.ShapeDtypeStruct(shape, jnp.int32, sharding=sharding),
        "mask": jax.ShapeDtypeStruct(shape, jnp.bool_, sharding=sharding),
    }
    if isinstance(experiment.model, BLTConfig):
        batch["patch_lengths"] = jax.ShapeDtypeStruct((data.batch_size, data.row_patches), jnp.int32,
                                                      sharding=sharding)
    return batch


def _memory(compiled) -> dict:
    stats = compiled.memory_analysis()
    fields = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes", "alias_size_in_bytes",
              "generated_code_size_in_bytes")
    out = {f.replace("_size_in_bytes", "_bytes"): int(getattr(stats, f, 0) or 0) for f in fields}
    # Donated inputs alias outputs: live at once are arguments + non-aliased outputs + temporaries.
    out["peak_bytes"] = out["argument_bytes"] + out["output_bytes"] - out["alias_bytes"] + out["temp_bytes"]
    return out


def _flops(compiled) -> float:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", 0.0))


def aot_train_step(experiment: ExperimentConfig, topology: str) -> dict:
    """Compiles the train step of `experiment` for a TPU topology and reports memory and FLOPs.

    Returns:
      A JSON-able dict: topology, chips, device kind, mesh shape, per-device memory (arguments,
      outputs, temporaries, peak) against the chip's HBM, compiled and analytic FLOPs per device per
      step and their ratio, and the compile time.
    """
    from blt_jax.train.trainer import Trainer

    devices = topology_devices(topology)
    mesh = make_mesh(experiment.mesh, devices)
    start = time.perf_counter()
    trainer = Trainer(experiment, mesh)
    state = _abstract(trainer.abstract_state, trainer.state_shardings)
    batch = abstract_batch(experiment, trainer.batch_sharding)
    with trainer.context():
        compiled = trainer._step.lower(state, batch).compile()
    compile_s = time.perf_counter() - start

    data = experiment.data
    n = len(devices)
    step_bytes = data.batch_size * data.row_bytes
    # The compiled program runs every patch slot: compare at the static budget's patch length.
    mean_patch = data.row_bytes / data.row_patches if isinstance(experiment.model, BLTConfig) else 1.0
    analytic = training_flops_per_byte(experiment.model, data.row_bytes, mean_patch) * step_bytes / n
    compiled_flops = _flops(compiled)
    memory = _memory(compiled)
    kind = devices[0].device_kind
    hbm = hbm_bytes(kind)
    return {
        "program": "train_step",
        "topology": libtpu_name(topology),
        "requested": topology,
        "devices": n,
        "device_kind": kind,
        "mesh": dict(mesh.shape),
        "batch": {"rows": data.batch_size, "row_bytes": data.row_bytes, "row_patches": getattr(data, "row_patches", 0),
                  "grad_accum": experiment.train.grad_accum},
        "remat": experiment.train.remat,
        "scan": experiment.train.scan,
        **{f"{k}_per_device": v for k, v in memory.items()},
        "hbm_bytes_per_device": hbm,
        "fits": None if hbm is None else memory["peak_bytes"] <= hbm,
        "hbm_headroom_bytes": None if hbm is None else hbm - memory["peak_bytes"],
        "compiled_flops_per_device": compiled_flops,
        "analytic_flops_per_device": analytic,
        "compiled_over_analytic": compiled_flops / analytic if analytic else None,
        "compile_seconds": round(compile_s, 2),
    }


def require_fit(report: dict) -> None:
    """Raises ValueError with the numbers when a compiled program does not fit its chips' HBM."""
    if report.get("fits") is False:
        need, have = report["peak_bytes_per_device"], report["hbm_bytes_per_device"]
        raise ValueError(
            f"{report['program']} does not fit {report['device_kind']} ({report['topology']}): needs "
            f"{need / 2**30:.2f} GiB per device, has {have / 2**30:.2f} GiB ({(need - have) / 2**30:.2f} GiB over); "
            "lower the batch per device, raise fsdp, or remat more")

