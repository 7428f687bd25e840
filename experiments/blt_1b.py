"""blt-1b, the released 1B BLT (4,533,879,808 parameters, 3.07B of them hash tables).

  blt-jax params --config experiments/blt_1b.py
"""

import ml_collections

from blt_jax import presets


def get_config(arg=None) -> ml_collections.ConfigDict:
    del arg  # hardware profiles arrive with the TPU scale-out work
    config = ml_collections.ConfigDict()
    config.model = presets.blt_1b()
    return config
