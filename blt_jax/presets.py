"""Model shapes of the released checkpoints (facebook/blt), as ConfigDicts for experiment files.

Counts (checked by tests): blt-1b 4,533,879,808 parameters, blt-7b 10,553,570,560, entropy model
99,512,064. Experiment files start from these and add data, training and hardware settings.
"""

from __future__ import annotations

import ml_collections

from blt_jax.config import RELEASED_THRESHOLD, swiglu_hidden


def stack(
    dim: int,
    n_layers: int,
    n_heads: int,
    window: int | None,
    rope_theta: float = 500000.0,
    ffn_hidden: int | None = None,
) -> dict:
    """A stack description with the reference's FFN width rule unless given."""
    return dict(
        dim=dim,
        n_layers=n_layers,
        n_heads=n_heads,
        ffn_hidden=ffn_hidden or swiglu_hidden(dim),
        rope_theta=rope_theta,
        window=window,
        norm_eps=1e-5,
    )


def entropy_100m() -> ml_collections.ConfigDict:
    """The released entropy model: 14 layers, dim 768, 12 heads, window 512, RoPE theta 10000."""
    return ml_collections.ConfigDict(
        dict(
            kind="entropy_lm",
            stack=stack(768, 14, 12, window=512, rope_theta=10000.0),
            vocab_size=260,
            dtype="float32",
            param_dtype="float32",
        )
    )


def _blt(local_dim, local_heads, dec_layers, global_dim, global_layers, global_heads, k) -> ml_collections.ConfigDict:
    entropy = entropy_100m().to_dict()
    entropy.pop("kind")
    return ml_collections.ConfigDict(
        dict(
            kind="blt",
            encoder=stack(local_dim, 1, local_heads, window=512),
            latent=stack(global_dim, global_layers, global_heads, window=None),
            decoder=stack(local_dim, dec_layers, local_heads, window=512),
            cross_attn_k=k,
            cross_attn_heads=local_heads,
            cross_attn_all_layers_encoder=False,
            cross_attn_all_layers_decoder=True,
            hash=dict(group_sizes=(3, 4, 5, 6, 7, 8), vocab=500002, n_functions=1),
            patching=dict(
                mode="entropy",
                threshold=RELEASED_THRESHOLD,
                monotonic=False,
                threshold_add=None,
                static_size=4,
                max_patch_length=None,
            ),
            entropy_model=entropy,
            vocab_size=260,
            dtype="float32",
            param_dtype="float32",
        )
    )


def blt_1b() -> ml_collections.ConfigDict:
    """blt-1b: local 1024 (1 enc / 9 dec layers, 16 heads), global 2048 x 25, k = 2."""
    return _blt(1024, 16, 9, 2048, 25, 16, 2)


def blt_7b() -> ml_collections.ConfigDict:
    """blt-7b: local 1280 (1 enc / 6 dec layers, 20 heads), global 4096 x 32, k = 4 (input projection)."""
    return _blt(1280, 20, 6, 4096, 32, 32, 4)


# Hardware profiles: per TPU slice, the batch, mesh, rematerialisation and scan of a training run at
# the reference's sequence budgets (BLT rows of 24,576 bytes / 4,096 patches; entropy LM rows of 8,192
# bytes). Each is checked to compile and fit by `blt-jax aot --config <file>:<profile> --topology <name>`.
BLT_ROW_BYTES, BLT_ROW_PATCHES, ENTROPY_ROW_BYTES = 24_576, 4_096, 8_192


def training_profile(name: str, profiles: dict, row_bytes: int, row_patches: int) -> dict:
    """The data / train / mesh sections of a named profile (ValueError naming the known ones)."""
    if name not in profiles:
        raise ValueError(f"unknown hardware profile {name!r}; this config has: {', '.join(sorted(profiles))}")
    p = profiles[name]
    # A profile may set its own rows (longer context than the reference's budgets).
    row_bytes, row_patches = p.get("row_bytes", row_bytes), p.get("row_patches", row_patches)
    data = dict(
        source=p.get("source", "default"),
        batch_size=p["batch"],
        shards=0,
        row_bytes=row_bytes,
        row_patches=row_patches,
        patching=dict(
            mode="space",
            threshold=RELEASED_THRESHOLD,
            monotonic=False,
            threshold_add=None,
            static_size=4,
            max_patch_length=None,
        ),
    )
    train = dict(
        steps=p.get("steps", 100_000),
        learning_rate=p.get("learning_rate", 4e-4),
        warmup_steps=2_000,
        grad_accum=p.get("grad_accum", 1),
        remat=p["remat"],
        scan=p["scan"],
        log_every=50,
        eval_every=2_000,
        checkpoint_every=1_000,
    )
    return dict(data=data, train=train, mesh=dict(data=p.get("data", 1), fsdp=-1, tensor=p.get("tensor", 1)))


def with_profile(
    config: ml_collections.ConfigDict, arg: str | None, profiles: dict, row_bytes: int, row_patches: int
) -> ml_collections.ConfigDict:
    """`config` (a model section) plus the sections of hardware profile `arg` (none: model only)."""
    if arg:
        for section, values in training_profile(arg, profiles, row_bytes, row_patches).items():
            config[section] = ml_collections.ConfigDict(values)
    return config
