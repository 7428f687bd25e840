"""Ahead-of-time compilation for real TPU topologies from any host (no TPU needed).

libtpu (the `tpu` extra) describes TPU slices as abstract devices
(`jax.experimental.topologies.get_topology_desc`); a mesh over them lowers and compiles the real
train step exactly as a pod would, and the compiled program reports its memory per device and its
FLOPs. This tells whether a configuration fits a chip's HBM, and how far the analytic FLOPs per byte
are from what XLA actually runs, before anyone pays for a slice.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tempfile
import time
from typing import Any

import jax
import jax.numpy as jnp

from blt_jax.errors import InputError
from blt_jax.experiment.config import ExperimentConfig
from blt_jax.models import model_kind, require_kind
from blt_jax.parallel import make_mesh

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
        raise InputError(
            f"unknown topology {topology!r}: use a libtpu name such as v5p:2x2x2 or one of "
            f"{', '.join(CLOUD_TOPOLOGIES)}"
        )
    return CLOUD_TOPOLOGIES[topology]


def _host_bounds(name: str) -> dict:
    """libtpu assumes hosts of 2x2x1 chips; a slice smaller than that ("v5e:1x1", "v6e:1x1") is one
    host of its own size, which must be said (`chips_per_host_bounds`)."""
    _, _, shape = name.partition(":")
    dims = [int(d) for d in shape.split("x") if d.isdigit()]
    if len(dims) < 2 or (dims[0] >= 2 and dims[1] >= 2):
        return {}
    return {"chips_per_host_bounds": (min(dims[0], 2), min(dims[1], 2), 1)}


def topology_devices(topology: str) -> list:
    """Abstract devices of a TPU topology (needs libtpu: `pip install -e ".[tpu]"`)."""
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")  # a single (virtual) host: no discovery
    # Without a TPU, libtpu would print a "Failed to find host bounds" error looking for this host's
    # place in a slice; the topology compiled for is named explicitly, so no bounds are needed.
    os.environ.setdefault("TPU_HOST_BOUNDS", "1,1,1")
    from jax.experimental import topologies

    name = libtpu_name(topology)
    try:
        return list(topologies.get_topology_desc(platform="tpu", topology_name=name, **_host_bounds(name)).devices)
    except Exception as e:
        hint = (
            "another process holds libtpu; when processes only compile (no TPU is opened), set "
            "ALLOW_MULTIPLE_LIBTPU_LOAD=1"
            if "lockfile" in str(e)
            else 'AOT compilation needs libtpu: pip install -c constraints.txt -e ".[tpu]"'
        )
        raise InputError(f"cannot describe TPU topology {name!r} ({type(e).__name__}: {e}); {hint}") from e


def hbm_bytes(device_kind: str) -> int | None:
    return HBM_BYTES.get(device_kind)


def _abstract(tree: Any, shardings: Any) -> Any:
    return jax.tree_util.tree_map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, shardings)


def abstract_batch(experiment: ExperimentConfig, sharding) -> dict:
    """ShapeDtypeStructs of one global training batch."""
    data = experiment.data
    shapes = model_kind(experiment.model).batch_shapes(data.batch_size, data.row_bytes, data.row_patches)
    return {key: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding) for key, s in shapes.items()}


def _memory(compiled) -> dict:
    stats = compiled.memory_analysis()
    fields = (
        "argument_size_in_bytes",
        "output_size_in_bytes",
        "temp_size_in_bytes",
        "alias_size_in_bytes",
        "generated_code_size_in_bytes",
    )
    out = {f.replace("_size_in_bytes", "_bytes"): int(getattr(stats, f, 0) or 0) for f in fields}
    # Donated inputs alias outputs: live at once are arguments + non-aliased outputs + temporaries.
    out["peak_bytes"] = out["argument_bytes"] + out["output_bytes"] - out["alias_bytes"] + out["temp_bytes"]
    return out


_OOM = re.compile(
    r"memory required for (?P<what>[^(]+?) \((?P<need>[\d.]+)(?P<unit>[KMGT]?)\) exceeds available HBM "
    r"\((?P<have>[\d.]+)(?P<have_unit>[KMGT]?)\)"
)
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


class DoesNotFit(Exception):
    """The TPU compiler refused the program: it needs more HBM than the chip has.

    Attributes:
      needed_bytes: what the compiler said it needs (of the kind in `what`).
      available_bytes: what it said is available.
      what: what it counted ("HLO temporaries", ...).
      message: the compiler's message.
    """

    def __init__(self, needed_bytes: int, available_bytes: int, what: str, message: str):
        super().__init__(message)
        self.needed_bytes, self.available_bytes, self.what, self.message = needed_bytes, available_bytes, what, message


def compile_lowered(lowered, dump_to: str | None = None):
    """`lowered.compile()`, with the TPU compiler's out-of-HBM refusal turned into `DoesNotFit` (the
    numbers of how far over it is), so a profile that does not fit is a report, not a traceback.
    With `dump_to`, XLA writes its dumps there (`largest_buffers` reads them), refused or not.

    The program is not kept in the persistent compilation cache: compiled for devices this host does
    not have, it could not be loaded back, and every later run would warn that it failed to read it."""
    min_compile_time = jax.config.jax_persistent_cache_min_compile_time_secs
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float("inf"))
    try:
        return lowered.compile() if dump_to is None else lowered.compile(compiler_options={"xla_dump_to": dump_to})
    except Exception as e:
        text = str(e)
        match = _OOM.search(text)
        if "RESOURCE_EXHAUSTED" not in text or match is None:
            raise
        need = int(float(match["need"]) * _UNITS[match["unit"]])
        have = int(float(match["have"]) * _UNITS[match["have_unit"]])
        raise DoesNotFit(need, have, match["what"].strip(), text.strip().splitlines()[-1]) from None
    finally:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_time)


_REPORT_ROW = re.compile(
    r"^\s*[\d.]+\w+\(\s*\d+%\);\s*(?P<size>[\d.]+)(?P<unit>[KMGT]?i?B);\s*\d+;\s*(?P<n>\d+);"
    r"\s*(?P<shapes>.*)$"
)
_TOTAL = re.compile(r"^Total bytes: (\d+)")


def largest_buffers(dump_dir: str, count: int = 5) -> list[dict]:
    """The largest allocations of the compiled program, from XLA's memory-usage report in `dump_dir`
    (the module with the most bytes, i.e. the step, not its helpers).

    Returns:
      Up to `count` dicts, largest first: bytes, and the shapes of the values that share the
      allocation at different times ("2×f32[16,2048,8192], f32[6,100002,1024]").
    """
    best, best_total = None, -1
    for name in os.listdir(dump_dir) if os.path.isdir(dump_dir) else ():
        if name.endswith("memory-usage-report.txt"):
            with open(os.path.join(dump_dir, name)) as f:
                text = f.read()
            total = _TOTAL.search(text.split("\n", 2)[1] if text.count("\n") > 1 else "")
            if total and int(total.group(1)) > best_total:
                best, best_total = text, int(total.group(1))
    rows = []
    for line in (best or "").splitlines():  # the first table: HBM ("default" memory space), largest first
        match = _REPORT_ROW.match(line)
        if match:
            unit = match["unit"].replace("i", "").rstrip("B")
            rows.append({"bytes": int(float(match["size"]) * _UNITS[unit]), "shapes": match["shapes"].strip()})
        elif rows:
            break
    return sorted(rows, key=lambda r: -r["bytes"])[:count]


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
      step, the analytic FLOPs of the attention kernels (`kernel_flops_per_device`, 0 without them;
      XLA counts a Pallas call as none), the ratio of compiled + kernel to analytic FLOPs, and the
      compile time.
    """
    from blt_jax.train.programs import TrainPrograms

    devices = topology_devices(topology)
    mesh = make_mesh(experiment.mesh, devices)
    start = time.perf_counter()
    options = experiment.options.replace(platform="tpu")  # "auto" attention means what it will on the TPU
    programs = TrainPrograms(experiment, mesh, options)
    state = _abstract(programs.abstract_state, programs.state_shardings)
    batch = abstract_batch(experiment, programs.batch_sharding)
    lowered = programs.lower_step(state, batch)

    data = experiment.data
    # The compiled program runs every patch slot: compare at the static budget's patch length.
    mean_patch = data.row_bytes / data.row_patches if data.row_patches else 1.0  # 0: rows without patches
    kind = model_kind(experiment.model)
    per_device = data.batch_size * data.row_bytes / len(devices)
    analytic = kind.training_flops_per_byte(data.row_bytes, mean_patch) * per_device
    # XLA's cost analysis counts a Pallas call as 0 FLOPs: what the kernels run is counted analytically.
    kernels = kind.self_attention_flops_per_byte(data.row_bytes, mean_patch) * per_device if options.splash else 0.0
    report = _report(
        "train_step",
        topology,
        devices,
        mesh,
        lowered,
        start,
        batch={
            "rows": data.batch_size,
            "row_bytes": data.row_bytes,
            "row_patches": data.row_patches,
            "grad_accum": experiment.train.grad_accum,
        },
        remat=experiment.train.remat,
        scan=experiment.train.scan,
        attention="splash" if options.splash else "dense",
    )
    report["analytic_flops_per_device"] = analytic
    report["kernel_flops_per_device"] = kernels
    if "compiled_flops_per_device" in report:  # absent when the compiler refused the program
        counted = report["compiled_flops_per_device"] + kernels
        report["compiled_over_analytic"] = counted / analytic if analytic else None
    return report


def _report(program: str, topology: str, devices: list, mesh, lowered, start: float, **extra) -> dict:
    """Compiles `lowered` and reports memory per device against HBM, FLOPs and compile time; a program
    the TPU compiler refuses for lack of HBM is reported too (`fits: false`, by how much), not raised."""
    kind = devices[0].device_kind
    hbm = hbm_bytes(kind)
    report = {
        "program": program,
        "topology": libtpu_name(topology),
        "requested": topology,
        "devices": len(devices),
        "device_kind": kind,
        "mesh": dict(mesh.shape),
        **extra,
        "hbm_bytes_per_device": hbm,
    }
    with tempfile.TemporaryDirectory(prefix="blt_jax_aot_") as dump:
        try:
            compiled = compile_lowered(lowered, dump)
        except DoesNotFit as error:
            return {
                **report,
                "fits": False,
                "refused_by_compiler": error.message,
                "needed_bytes_per_device": error.needed_bytes,
                "needed_for": error.what,
                "available_bytes_per_device": error.available_bytes,
                "over_bytes_per_device": error.needed_bytes - error.available_bytes,
                "largest_buffers": largest_buffers(dump),
                "compile_seconds": round(time.perf_counter() - start, 2),
            }
        buffers = largest_buffers(dump)
    memory = _memory(compiled)
    return {
        **report,
        **{f"{k}_per_device": v for k, v in memory.items()},
        "fits": None if hbm is None else memory["peak_bytes"] <= hbm,
        "hbm_headroom_bytes": None if hbm is None else hbm - memory["peak_bytes"],
        "largest_buffers": buffers,
        "compiled_flops_per_device": _flops(compiled),
        "compile_seconds": round(time.perf_counter() - start, 2),
    }


def aot_generation_step(experiment: ExperimentConfig, topology: str, capacity: int = 2048) -> dict:
    """Compiles one cached decoding step (`inference.decode.DecodeEngine.step`) of a BLT for a topology:
    one prompt per data-parallel shard, caches for `capacity` positions, parameters sharded by the
    rules table. Without an entropy LM in the config the step patches by spaces (same shapes)."""
    import flax.linen as nn

    from blt_jax.inference.decode import DecodeEngine
    from blt_jax.parallel import BATCH_AXES, LOGICAL_RULES, logical_to_shardings, replicated
    from blt_jax.params import abstract_params, logical_axes

    config = experiment.model
    require_kind(config, "blt", "the generation step")
    if config.patching.mode == "entropy" and config.entropy_model is None:
        config = dataclasses.replace(config, patching=dataclasses.replace(config.patching, mode="space"))
    devices = topology_devices(topology)
    mesh = make_mesh(experiment.mesh, devices)
    batch = mesh.shape["data"] * mesh.shape["fsdp"]
    start = time.perf_counter()
    decoder = DecodeEngine(config, capacity)
    params = abstract_params(config)
    params = _abstract(params, logical_to_shardings(logical_axes(config), params, mesh))
    entropy = None
    if config.patching.mode == "entropy":
        entropy = abstract_params(config.entropy_model)
        entropy = _abstract(entropy, logical_to_shardings(logical_axes(config.entropy_model), entropy, mesh))
    prompt = jax.ShapeDtypeStruct((batch, 16), jnp.int32)
    state = jax.eval_shape(decoder.prefill, params, entropy, prompt)[0]
    rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(BATCH_AXES))
    state = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(
            x.shape, x.dtype, sharding=rows if x.ndim and x.shape[0] == batch else replicated(mesh)
        ),
        state,
    )
    token = jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=rows)
    with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_RULES):
        lowered = jax.jit(decoder.step, donate_argnums=2).lower(params, entropy, state, token)
    return _report(
        "generation_step",
        topology,
        devices,
        mesh,
        lowered,
        start,
        batch={"prompts": batch, "capacity": capacity},
        patching=config.patching.mode,
    )


def aot_entropy_pass(experiment: ExperimentConfig, topology: str, window: int | None = None) -> dict:
    """Compiles the entropy pass's jitted forward (entropies of rows of `window` bytes, rows split over
    the data-parallel axes) of an entropy LM (or of a BLT's entropy model) for a topology."""
    import flax.linen as nn

    from blt_jax.nn.entropy_lm import entropies_fn
    from blt_jax.parallel import BATCH_AXES, LOGICAL_RULES, logical_to_shardings
    from blt_jax.params import abstract_params, logical_axes

    config = model_kind(experiment.model).entropy_lm
    if config is None:
        raise InputError("this config has no entropy LM")
    devices = topology_devices(topology)
    mesh = make_mesh(experiment.mesh, devices)
    window = window or experiment.data.row_bytes
    rows_n = experiment.data.batch_size
    start = time.perf_counter()
    params = abstract_params(config)
    params = _abstract(params, logical_to_shardings(logical_axes(config), params, mesh))
    rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(BATCH_AXES))
    tokens = jax.ShapeDtypeStruct((rows_n, window), jnp.int32, sharding=rows)
    with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_RULES):
        options = experiment.run.replace(platform="tpu")
        lowered = jax.jit(entropies_fn(config, options=options), out_shardings=rows).lower(params, tokens)
    return _report(
        "entropy_pass",
        topology,
        devices,
        mesh,
        lowered,
        start,
        batch={"rows": rows_n, "window": window},
        attention="splash" if options.splash else "dense",
    )


def require_fit(report: dict) -> None:
    """Raises ValueError with the numbers when a compiled program does not fit its chips' HBM."""
    if report.get("refused_by_compiler"):
        need, have = report["needed_bytes_per_device"], report["available_bytes_per_device"]
        raise InputError(
            f"{report['program']} does not fit {report['device_kind']} ({report['topology']}): the compiler needs "
            f"{need / 2**30:.2f} GiB per device for {report['needed_for']}, has {have / 2**30:.2f} GiB "
            f"({(need - have) / 2**30:.2f} GiB over); lower the batch per device, raise fsdp, or remat more"
        )
    if report.get("fits") is False:
        need, have = report["peak_bytes_per_device"], report["hbm_bytes_per_device"]
        raise InputError(
            f"{report['program']} does not fit {report['device_kind']} ({report['topology']}): needs "
            f"{need / 2**30:.2f} GiB per device, has {have / 2**30:.2f} GiB ({(need - have) / 2**30:.2f} GiB over); "
            "lower the batch per device, raise fsdp, or remat more"
        )
