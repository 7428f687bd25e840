"""blt-7b, the released 7B BLT (10,553,570,560 parameters; global input projection 5120 -> 4096).

  blt-jax params --config experiments/blt_7b.py
"""

import ml_collections

from blt_jax import presets


def get_config(arg=None) -> ml_collections.ConfigDict:
    del arg  # hardware profiles arrive with the TPU scale-out work
    config = ml_collections.ConfigDict()
    config.model = presets.blt_7b()
    return config
