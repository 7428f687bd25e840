"""blt-7b, the released 7B BLT (10,553,570,560 parameters; global input projection 5120 -> 4096).

  blt-jax params --config experiments/blt_7b.py

With a hardware profile (v5p-128) it is a training experiment at the reference's sequence budgets:
  blt-jax aot --config experiments/blt_7b.py:v5p-128 --topology v5p-128
  blt-jax train --config experiments/blt_7b.py:v5p-128 --workdir gs://BUCKET/run --config.data.source=...
"""

import ml_collections

from blt_jax import presets

PROFILES = {
    # 64 chips x 95 GiB: one row per chip.
    "v5p-128": dict(batch=64, remat="full", scan="latent"),
}


def get_config(arg=None) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.model = presets.blt_7b()
    return presets.with_profile(config, arg, PROFILES, presets.BLT_ROW_BYTES, presets.BLT_ROW_PATCHES)
