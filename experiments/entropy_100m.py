"""The released entropy byte LM (99,512,064 parameters): 14 layers, dim 768, window 512.

  blt-jax params --config experiments/entropy_100m.py
"""

import ml_collections

from blt_jax import presets


def get_config(arg=None) -> ml_collections.ConfigDict:
    del arg  # hardware profiles arrive with the TPU scale-out work
    config = ml_collections.ConfigDict()
    config.model = presets.entropy_100m()
    return config
