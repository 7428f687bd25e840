"""Process set-up before any command runs: jax kept off a TPU probe on hosts without one, and the
persistent compilation cache."""

from __future__ import annotations

import glob
import logging
import os


def quiet_tpu_probe() -> None:
    """On a host without TPUs, keep jax from starting libtpu (installed by the `tpu` extra), whose
    start-up prints alarming errors there. Explicit JAX_PLATFORMS settings are left alone."""
    if any(
        os.environ.get(k)
        for k in ("JAX_PLATFORMS", "JAX_FORCE_TPU_INIT", "TPU_ACCELERATOR_TYPE", "TPU_WORKER_HOSTNAMES")
    ):
        return  # the user (or a TPU launcher's environment) decides
    if glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"):
        return  # TPU device files: let jax find the chips
    try:
        from jax._src import hardware_utils

        chips, _ = hardware_utils.num_available_tpu_chips_and_device_id()
        gpus = hardware_utils.has_visible_nvidia_gpu() or bool(
            getattr(hardware_utils, "num_available_amd_gpus", lambda: 0)()
        )
    except Exception:  # noqa: BLE001 - a jax without these helpers: leave platform choice to jax
        return
    if chips == 0 and not gpus:
        import jax

        logging.getLogger("blt_jax").debug("no TPU or GPU on this host: running on the CPU")
        jax.config.update("jax_platforms", "cpu")


def compilation_cache() -> None:
    """Keeps compiled XLA programs across runs, so a command run again on the same shapes (a second
    `blt-jax lm-eval` on a task, a restarted training launch) skips compilation: in
    `$XDG_CACHE_HOME/blt_jax/xla` (default `~/.cache/blt_jax/xla`), or BLT_JAX_COMPILATION_CACHE (a
    directory: relative, `~` or gs://; `off` turns it off). JAX's own JAX_COMPILATION_CACHE_DIR wins."""
    import jax

    from blt_jax import paths

    if jax.config.jax_compilation_cache_dir:
        return
    choice = os.environ.get("BLT_JAX_COMPILATION_CACHE", "").strip()
    if choice.lower() == "off":
        return
    default = os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "blt_jax", "xla")
    jax.config.update("jax_compilation_cache_dir", paths.resolve(choice or default))
