"""The command every process of a training run executes: one function for the TPU pod launcher
(`tpu.py`, the same command on every host) and the local multi-process launcher
(`local_multihost.py`, the same command N times on one machine)."""

from __future__ import annotations

from collections.abc import Sequence


def train_argv(config: str, workdir: str, overrides: Sequence[str] = (), extra: Sequence[str] = ()) -> list[str]:
    """`blt-jax train --config CONFIG --workdir WORKDIR [--config.a.b=v ...] [extra ...]` as arguments.

    Each process of a run gets exactly these; which process it is comes from its environment
    (a TPU pod's metadata, or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID)."""
    return ["blt-jax", "train", "--config", config, "--workdir", workdir, *overrides, *extra]
