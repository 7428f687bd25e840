"""Byteifying Llama-3.2-1B: the two stages of `blt-jax byteify` at full size, as training experiments
with hardware profiles that `blt-jax aot` compiles for a TPU slice on any host.

The latent transformer is Llama-3.2-1B's 16 blocks (d 2048, 32 heads, 8 key/value heads, head_dim 64,
FFN 8192, Llama 3 RoPE scaling with factor 32) and its final norm; its tied embeddings (128,256 x 2048)
are the teacher's ends in stage 1. The byte stacks are BLT-1B's width (1024, k = 2, so 2 x 1024 patch
slots make one latent input, no projection), with 1 encoder and 4 decoder layers and hash n-grams
3..8 of 100,002 buckets. Rows hold 8,192 bytes: about 1,870 Llama 3 tokens at 4.4 bytes per token,
with room for 2,640 patches.

  blt-jax aot --config experiments/byteify_llama_1b.py:stage1:v5p-8 --topology v5p-8
  blt-jax aot --config experiments/byteify_llama_1b.py:stage2:v5p-8 --topology v5p-8
  blt-jax train --config experiments/byteify_llama_1b.py:stage1:v5p-8 --workdir gs://BUCKET/stage1 \\
      --config.data.source=gs://BUCKET/corpus --config.data.patching.tokenizer=gs://BUCKET/llama-3.2-1b \\
      --config.train.init_from="blt/global_transformer=gs://BUCKET/llama-3.2-1b,teacher=gs://BUCKET/llama-3.2-1b"

(`blt-jax byteify --teacher DIR --config ...` runs both stages, the entropy LM and the report.)
"""

import ml_collections

from blt_jax import presets

ROW_BYTES = 8_192
ROW_PATCHES = 2_640  # 1.4 x ROW_BYTES / 4.4 bytes per token, rounded up to 16
TEACHER_VOCAB = 128_256

# Llama-3.2-1B (config.json of meta-llama/Llama-3.2-1B), as `convert.llama.config_from_llama` reads it.
LATENT = dict(
    dim=2048,
    n_layers=16,
    n_heads=32,
    ffn_hidden=8192,
    rope_theta=500000.0,
    window=None,
    norm_eps=1e-5,
    n_kv_heads=8,
    head_dim=64,
    qkv_bias=False,
    rope_scaling=dict(
        kind="llama3", factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position=8192
    ),
)

PROFILES = {
    # 4 chips x 95 GiB: stage 1 trains only the byte stacks (the latent and the teacher's ends are
    # frozen, with no optimizer state); stage 2 trains all 1.68B (0.97B latent, 0.63B local encoder, of
    # which 0.61B hash embeddings, 0.07B decoder). Stage 1 holds 1.94B, of which 0.71B train.
    # Stage 1 is unscanned (its hidden-state loss taps the latent after block k); stage 2 scans the
    # latent. Peaks per chip: the README's Scaling table.
    "stage1:v5p-8": dict(batch=16, remat="full", scan=""),
    "stage2:v5p-8": dict(batch=16, remat="full", scan="latent"),
    # 16 chips x 16 GiB, one row per chip.
    "stage2:v5e-16": dict(batch=16, remat="full", scan="latent"),
    # Rows of 20,480 bytes (~4,650 Llama 3 tokens) and 6,608 patches: these fit only with the splash
    # kernels (the default on a TPU). Dense attention's [32, 6608, 6608] scores per row need 19.9 GB per chip.
    "stage2:v5e-16-20k": dict(batch=16, remat="full", scan="latent", row_bytes=20_480, row_patches=6_608),
}


def blt(patching: dict, entropy_model: dict | None = None) -> dict:
    local = dict(dim=1024, n_heads=16, window=512)
    return dict(
        encoder=presets.stack(local["dim"], 1, local["n_heads"], window=local["window"]),
        latent=LATENT,
        decoder=presets.stack(local["dim"], 4, local["n_heads"], window=local["window"]),
        cross_attn_k=2,
        cross_attn_heads=16,
        cross_attn_all_layers_encoder=False,
        cross_attn_all_layers_decoder=True,
        hash=dict(group_sizes=(3, 4, 5, 6, 7, 8), vocab=100_002, n_functions=1),
        patching=patching,
        entropy_model=entropy_model,
        latent_norm=True,
        vocab_size=260,
    )


def get_config(arg=None) -> ml_collections.ConfigDict:
    stage, _, profile = (arg or "stage2").partition(":")
    if stage not in ("stage1", "stage2"):
        raise ValueError(
            f"unknown stage {stage!r}; expected stage1 or stage2 (then :PROFILE, one of "
            f"{', '.join(sorted({p.split(':')[1] for p in PROFILES}))})"
        )
    config = ml_collections.ConfigDict()
    if stage == "stage1":
        patching = dict(mode="bpe", tokenizer="gs://BUCKET/llama-3.2-1b")
        config.model = ml_collections.ConfigDict(
            dict(kind="blt_distill", blt=blt(patching), teacher_vocab=TEACHER_VOCAB, teacher_tied=True, hidden_layer=4)
        )
    else:
        entropy = presets.entropy_100m().to_dict()
        entropy.pop("kind")
        patching = dict(
            mode="entropy", threshold=1.3, monotonic=False, threshold_add=None, static_size=4, max_patch_length=None
        )
        config.model = ml_collections.ConfigDict(dict(kind="blt", **blt(patching, entropy)))
    if profile:
        config = presets.with_profile(config, arg, PROFILES, ROW_BYTES, ROW_PATCHES)
        config.data.patching = config.model.blt.patching if stage == "stage1" else config.model.patching
        if stage == "stage1":
            config.train.freeze = "blt/global_transformer,teacher"
        else:
            config.train.lr_multipliers = "global_transformer=0.5"
    return config
