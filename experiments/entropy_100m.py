"""The released entropy byte LM (99,512,064 parameters): 14 layers, dim 768, window 512.

  blt-jax params --config experiments/entropy_100m.py

With a hardware profile (v5p-32, v5e-256) it is a training experiment at the reference's sequence budgets:
  blt-jax aot --config experiments/entropy_100m.py:v5p-32 --topology v5p-32
  blt-jax train --config experiments/entropy_100m.py:v5p-32 --workdir gs://BUCKET/run --config.data.source=...
"""

import ml_collections

from blt_jax import presets

PROFILES = {
    # 16 chips: four 8,192-byte rows per chip.
    "v5p-32": dict(batch=64, remat="none", scan="entropy"),
    "v5e-256": dict(batch=256, remat="none", scan="entropy"),
}


def get_config(arg=None) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.model = presets.entropy_100m()
    return presets.with_profile(config, arg, PROFILES, presets.ENTROPY_ROW_BYTES, 0)
