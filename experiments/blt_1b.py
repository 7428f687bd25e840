"""blt-1b, the released 1B BLT (4,533,879,808 parameters, 3.07B of them hash tables).

  blt-jax params --config experiments/blt_1b.py

With a hardware profile (v5p-32, v5e-256) it is a training experiment at the reference's sequence budgets:
  blt-jax aot --config experiments/blt_1b.py:v5p-32 --topology v5p-32
  blt-jax train --config experiments/blt_1b.py:v5p-32 --workdir gs://BUCKET/run --config.data.source=...
"""

import ml_collections

from blt_jax import presets

PROFILES = {
    # 16 chips x 95 GiB: one row per chip, FSDP over all of them.
    "v5p-32": dict(batch=16, remat="full", scan="latent"),
    # 256 chips x 16 GiB: one row per chip.
    "v5e-256": dict(batch=256, remat="full", scan="latent"),
}


def get_config(arg=None) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.model = presets.blt_1b()
    return presets.with_profile(config, arg, PROFILES, presets.BLT_ROW_BYTES, presets.BLT_ROW_PATCHES)
