"""`bench_small`: the model of side-by-side benchmarks against the PyTorch reference (~102M parameters).

Local dim 256 (8 heads, FFN 768): encoder 1 layer (cross-attention after it), decoder 3 layers
(cross-attention before each); global dim 512 (8 heads, FFN 1536) x 6; k = 2; hash n = 3..8,
1 function, 50,002 buckets; window 512; RoPE theta 500000. Batch 8 x 1024 bytes with patch lengths
1 then alternating 4, 5 (mean 4.5).

  blt-jax params --config experiments/bench_small.py
"""

import ml_collections

from blt_jax import presets


def get_config(arg=None) -> ml_collections.ConfigDict:
    del arg
    config = ml_collections.ConfigDict()
    config.model = ml_collections.ConfigDict(
        dict(
            kind="blt",
            encoder=presets.stack(256, 1, 8, window=512),
            latent=presets.stack(512, 6, 8, window=None),
            decoder=presets.stack(256, 3, 8, window=512),
            cross_attn_k=2,
            cross_attn_heads=8,
            cross_attn_all_layers_encoder=False,
            cross_attn_all_layers_decoder=True,
            hash=dict(group_sizes=(3, 4, 5, 6, 7, 8), vocab=50002, n_functions=1),
            patching=dict(
                mode="entropy",
                threshold=presets.RELEASED_THRESHOLD,
                monotonic=False,
                threshold_add=None,
                static_size=4,
                max_patch_length=None,
            ),
            entropy_model=None,
            vocab_size=260,
            dtype="float32",
            param_dtype="float32",
        )
    )
    config.data = ml_collections.ConfigDict(
        dict(
            source="default",
            batch_size=8,
            shards=0,
            row_bytes=1024,
            row_patches=240,
            patching=dict(
                mode="space",
                threshold=presets.RELEASED_THRESHOLD,
                monotonic=False,
                threshold_add=None,
                static_size=4,
                max_patch_length=9,
            ),
        )
    )
    config.train = ml_collections.ConfigDict(dict(steps=1000, learning_rate=4e-4, warmup_steps=100))
    config.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))
    return config
