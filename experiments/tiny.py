"""A tiny BLT with a tiny entropy LM, for tests and smoke runs on a CPU (~0.2M parameters).

  blt-jax smoke --config experiments/tiny.py
"""

import ml_collections

from blt_jax import presets


def get_config(arg=None) -> ml_collections.ConfigDict:
    del arg
    config = ml_collections.ConfigDict()
    config.model = ml_collections.ConfigDict(dict(
        kind="blt",
        encoder=presets.stack(32, 1, 4, window=64, ffn_hidden=96),
        latent=presets.stack(64, 2, 4, window=None, ffn_hidden=192),
        decoder=presets.stack(32, 2, 4, window=64, ffn_hidden=96),
        cross_attn_k=2,
        cross_attn_heads=4,
        cross_attn_all_layers_encoder=False,
        cross_attn_all_layers_decoder=True,
        hash=dict(group_sizes=(3, 4, 5), vocab=1021, n_functions=1),
        patching=dict(mode="entropy", threshold=presets.RELEASED_THRESHOLD, monotonic=False,
                      threshold_add=None, static_size=4, max_patch_length=None),
        entropy_model=dict(stack=presets.stack(32, 2, 4, window=64, rope_theta=10000.0, ffn_hidden=96),
                           vocab_size=260, dtype="float32", param_dtype="float32"),
        vocab_size=260, dtype="float32", param_dtype="float32",
    ))
    return config
