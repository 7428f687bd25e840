"""Peak FLOP/s of the devices (for MFU): a table for TPUs, a one-off matmul probe on CPUs."""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp

# bf16 dense peak per chip (Cloud TPU documentation; MaxText and Levanter use the same figures).
TPU_PEAK_FLOPS = {
    "v4": 275e12,
    "v5 lite": 197e12,
    "v5e": 197e12,
    "v5p": 459e12,
    "v5": 459e12,
    "v6 lite": 918e12,
    "v6e": 918e12,
}


def tpu_peak(device_kind: str) -> float | None:
    """Peak FLOP/s of a TPU chip from its `device_kind` (e.g. "TPU v5 lite"), or None if unknown."""
    kind = device_kind.lower().replace("tpu", "").strip()
    for name in sorted(TPU_PEAK_FLOPS, key=len, reverse=True):  # "v5 lite" before "v5"
        if kind.startswith(name):
            return TPU_PEAK_FLOPS[name]
    return None


@functools.cache
def cpu_matmul_peak(size: int = 2048, runs: int = 5) -> float:
    """FLOP/s of the best of `runs` jitted fp32 size^3 matmuls on this host (measured once)."""
    a = jnp.ones((size, size), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def total_peak_flops(devices=None, override: float = 0.0) -> float:
    """Peak FLOP/s of all `devices` together: per-chip table x chips on TPU; on CPU the host's
    measured matmul peak (simulated CPU devices share one host, so they are not multiplied)."""
    devices = list(devices or jax.devices())
    if override:
        return override * len(devices)
    device = devices[0]
    if device.platform == "tpu":
        peak = tpu_peak(device.device_kind)
        if peak is not None:
            return peak * len(devices)
    return cpu_matmul_peak()
