"""Device-mesh parallelism: mesh axes, the one table mapping logical axes onto them, and shardings.

Mesh axes: `data` (pure data parallel), `fsdp` (parameters and optimizer state sharded, batch split
too), `tensor` (attention heads and FFN hidden split). Parameters and activations name logical axes
(`blt_jax.nn.axes`); nothing else in the code mentions mesh axes.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from blt_jax.config import ConfigError, require
from blt_jax.errors import InputError
from blt_jax.nn import axes

logger = logging.getLogger("blt_jax.parallel")

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # the batch is split over both data-parallel axes

# Logical axis -> mesh axis (None = replicated). Order matters to flax: the first rule whose mesh
# axis is still free for a given array wins.
LOGICAL_RULES: tuple[tuple[str, Any], ...] = (
    (axes.EMBED, "fsdp"),
    (axes.HEADS, "tensor"),
    (axes.MLP, "tensor"),
    (axes.HEAD_DIM, None),
    (axes.VOCAB, None),
    (axes.NORM, None),
    (axes.HASH_TABLES, None),
    # 500,002 buckets divide by no mesh size > 2; the tables are sharded over their width instead.
    (axes.HASH_VOCAB, None),
    (axes.PATCH_SLOTS, "tensor"),
    (axes.LATENT_IN, "tensor"),
    (axes.LAYERS, None),  # scanned stacks: every device holds its shard of every layer
    # Activations.
    (axes.ACT_BATCH, BATCH_AXES),
    (axes.ACT_LENGTH, None),
    (axes.ACT_EMBED, None),
)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Sizes of the mesh axes; one of them may be -1 (fill with the remaining devices).

    Attributes:
      data: pure data-parallel replicas.
      fsdp: fully sharded data-parallel degree (parameters sharded over it).
      tensor: tensor-parallel degree (heads and FFN hidden split).
    """

    data: int = 1
    fsdp: int = -1
    tensor: int = 1

    def __post_init__(self):
        sizes = (self.data, self.fsdp, self.tensor)
        for name, size in zip(MESH_AXES, sizes):
            require(size == -1 or size >= 1, name, f"must be >= 1 or -1 (fill), got {size}")
        require(sizes.count(-1) <= 1, "fsdp", "at most one mesh axis may be -1")

    def shape(self, num_devices: int) -> tuple[int, int, int]:
        """Concrete axis sizes for `num_devices` devices."""
        sizes = [self.data, self.fsdp, self.tensor]
        known = math.prod(s for s in sizes if s != -1)
        if -1 in sizes:
            if num_devices % known:
                raise ConfigError("mesh", f"{num_devices} devices do not divide by data*fsdp*tensor={known}")
            sizes[sizes.index(-1)] = num_devices // known
        if math.prod(sizes) != num_devices:
            raise ConfigError("mesh", f"data*fsdp*tensor = {math.prod(sizes)} but there are {num_devices} devices")
        return tuple(sizes)


def make_mesh(config: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh over `devices` (default: all) with axes (data, fsdp, tensor), in Auto sharding mode."""
    devices = list(devices if devices is not None else jax.devices())
    shape = config.shape(len(devices))
    try:  # topology-aware device order on TPUs
        grid = mesh_utils.create_device_mesh(shape, devices)
    except (ValueError, NotImplementedError, AssertionError):
        grid = np.array(devices).reshape(shape)
    return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def _fit(spec: PartitionSpec, shape: tuple[int, ...], mesh: Mesh, where: str) -> PartitionSpec:
    """Drops the sharding of dimensions the mesh axes do not divide (logged), so any size works."""
    out = []
    for dim, axis in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        names = axis if isinstance(axis, tuple) else (axis,) if axis else ()
        size = math.prod(mesh.shape[n] for n in names) if names else 1
        if size > 1 and dim % size:
            logger.warning(
                "%s: dimension %d is not divisible by mesh axes %s (%d): replicated", where, dim, names, size
            )
            axis = None
        out.append(axis)
    return PartitionSpec(*out)


def logical_to_shardings(logical_specs: Any, abstract: Any, mesh: Mesh) -> Any:
    """NamedShardings of a tree from its logical PartitionSpecs (tree of logical names) and shapes."""
    mesh_specs = nn.logical_to_mesh(logical_specs, LOGICAL_RULES)
    paths = jax.tree_util.tree_leaves_with_path(abstract)
    specs = jax.tree_util.tree_leaves(mesh_specs, is_leaf=lambda x: isinstance(x, PartitionSpec))
    shardings = [
        NamedSharding(mesh, _fit(spec, tuple(leaf.shape), mesh, jax.tree_util.keystr(path)))
        for (path, leaf), spec in zip(paths, specs)
    ]
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(abstract), shardings)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Batches: leading axis split over (data, fsdp), everything else replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def describe_shardings(shardings: Any, abstract: Any) -> dict[str, dict]:
    """{parameter path: {"shape": [...], "spec": [...]}} for writing to a workdir."""
    out = {}
    for (path, leaf), sharding in zip(
        jax.tree_util.tree_leaves_with_path(abstract), jax.tree_util.tree_leaves(shardings)
    ):
        out[jax.tree_util.keystr(path)] = {
            "shape": list(leaf.shape),
            "spec": [list(a) if isinstance(a, tuple) else a for a in sharding.spec],
        }
    return out


_barriers = [0]  # barriers passed by this process: every process passes the same ones in order


def wait_for_all_processes(name: str, timeout_s: int = 3600) -> None:
    """A barrier of every process of the run, through JAX's coordination service (the host side:
    no device collective, so no 30 s limit on the slowest process). No-op with one process."""
    if jax.process_count() == 1:
        return
    from jax._src import distributed  # the coordination client has no public barrier in jax 0.10

    _barriers[0] += 1
    distributed.global_state.client.wait_at_barrier(f"blt_jax/{_barriers[0]}/{name}", timeout_s * 1000)


_gathers = [0]  # gathers done by this process: every process does the same ones in order


def gather_from_processes(name: str, text: str, timeout_s: int = 3600) -> list[str]:
    """Every process's `text`, in process order, through JAX's coordination service (host side, for
    small values such as data-iterator states; call on every process at once). One process: [text]."""
    if jax.process_count() == 1:
        return [text]
    from jax._src import distributed  # the coordination client has no public key-value API in jax 0.10

    client = distributed.global_state.client
    _gathers[0] += 1
    key = f"blt_jax/gather/{_gathers[0]}/{name}"
    client.key_value_set(f"{key}/{jax.process_index()}", text)
    return [client.blocking_key_value_get(f"{key}/{i}", timeout_s * 1000) for i in range(jax.process_count())]


def process_rows(sharding: jax.sharding.Sharding, batch_size: int) -> list[int]:
    """The rows of a [batch_size, ...] global batch laid out by `sharding` that this process's
    devices hold, ascending: the rows its input pipeline must produce, in the order
    `jax.make_array_from_process_local_data` expects them."""
    rows: set[int] = set()
    for index in sharding.addressable_devices_indices_map((batch_size,)).values():
        rows.update(range(batch_size)[index[0]])
    return sorted(rows)


# Set by `launch/local_multihost.py` (and any launcher without a cluster JAX detects by itself):
# the number of processes of the run and this one's id; the coordinator is JAX_COORDINATOR_ADDRESS.
NUM_PROCESSES = "JAX_NUM_PROCESSES"
PROCESS_ID = "JAX_PROCESS_ID"


def maybe_initialize_distributed() -> None:
    """Joins the other processes of a multi-process run, before any device is used (a no-op for a
    single process).

    Cloud TPU pods (and SLURM, Open MPI) set the environment JAX detects by itself. Several
    processes on one machine (`launch/local_multihost.py`) name the run's size and this process in
    JAX_NUM_PROCESSES / JAX_PROCESS_ID beside JAX_COORDINATOR_ADDRESS.

    Raises:
      InputError: a process id outside [0, JAX_NUM_PROCESSES).
    """
    if os.environ.get(NUM_PROCESSES):
        count, index = int(os.environ[NUM_PROCESSES]), int(os.environ.get(PROCESS_ID, "-1"))
        if not 0 <= index < count:
            raise InputError(f"{PROCESS_ID}={os.environ.get(PROCESS_ID)!r}: expected a process id in [0, {count})")
        if count > 1:
            jax.distributed.initialize(num_processes=count, process_id=index)
        return
    multi_host = any(
        os.environ.get(k)
        for k in ("TPU_WORKER_HOSTNAMES", "JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS", "SLURM_JOB_ID")
    )
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    if multi_host and (len(hosts.split(",")) > 1 or not hosts):
        jax.distributed.initialize()
