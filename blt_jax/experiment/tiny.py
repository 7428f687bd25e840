"""The tiny experiment: a BLT with a tiny entropy LM, for tests and smoke runs on a CPU (~0.2M
parameters). It ships in the package because `blt-jax smoke` runs it by default (from a wheel too);
`experiments/tiny.py` is the same experiment where users look for experiment files.

  blt-jax smoke --config experiments/tiny.py
"""

import os

import ml_collections

from blt_jax import presets

PATH = os.path.abspath(__file__)  # an experiment file like any other: load_experiment(PATH)


def get_config(arg=None) -> ml_collections.ConfigDict:
    del arg
    config = ml_collections.ConfigDict()
    config.model = model()
    # Training on the embedded default corpus (Python's standard library), space patching.
    config.data = data()
    config.eval = ml_collections.ConfigDict(config.data.to_dict())
    config.eval.source = "default:validation"
    config.eval.shuffle = False
    config.train = train()
    config.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))
    # lm-eval tasks scored during training (the eval extra); tasks="" scores none, e.g.
    # --config.lm_eval.tasks=arc_easy --config.lm_eval.noise=none,drop --config.lm_eval.limit=100
    config.lm_eval = lm_eval()
    return config


def model() -> ml_collections.ConfigDict:
    """A BLT of ~0.2M parameters with its entropy LM (entropy patching at the released threshold)."""
    return ml_collections.ConfigDict(
        dict(
            kind="blt",
            encoder=presets.stack(32, 1, 4, window=64, ffn_hidden=96),
            latent=presets.stack(64, 2, 4, window=None, ffn_hidden=192),
            decoder=presets.stack(32, 2, 4, window=64, ffn_hidden=96),
            cross_attn_k=2,
            cross_attn_heads=4,
            cross_attn_all_layers_encoder=False,
            cross_attn_all_layers_decoder=True,
            hash=dict(group_sizes=(3, 4, 5), vocab=1021, n_functions=1),
            patching=dict(
                mode="entropy",
                threshold=presets.RELEASED_THRESHOLD,
                monotonic=False,
                threshold_add=None,
                static_size=4,
                max_patch_length=None,
            ),
            entropy_model=dict(
                stack=presets.stack(32, 2, 4, window=64, rope_theta=10000.0, ffn_hidden=96),
                vocab_size=260,
                dtype="float32",
                param_dtype="float32",
            ),
            vocab_size=260,
            dtype="float32",
            param_dtype="float32",
        )
    )


def data() -> ml_collections.ConfigDict:
    """Rows of 128 bytes from the embedded default corpus, patched at spaces."""
    return ml_collections.ConfigDict(
        dict(
            source="default",
            text_field="text",
            batch_size=8,
            shards=0,
            row_bytes=128,
            row_patches=48,
            patching=dict(
                mode="space",
                threshold=presets.RELEASED_THRESHOLD,
                monotonic=False,
                threshold_add=None,
                static_size=4,
                max_patch_length=16,
            ),
            seed=0,
            shuffle=True,
            num_epochs=None,
            strict=False,
            read_threads=2,
            prefetch=64,
            hf_subset=None,
        )
    )


def train() -> ml_collections.ConfigDict:
    """200 steps of AdamW, an evaluation and a checkpoint every 100."""
    return ml_collections.ConfigDict(
        dict(
            steps=200,
            learning_rate=3e-3,
            warmup_steps=20,
            min_lr_ratio=0.1,
            weight_decay=0.1,
            b1=0.9,
            b2=0.95,
            eps=1e-8,
            clip_norm=1.0,
            grad_accum=1,
            seed=0,
            remat="none",
            scan="",
            log_every=10,
            eval_every=100,
            eval_batches=4,
            checkpoint_every=100,
            keep_checkpoints=3,
            init_from=None,
            peak_flops=0.0,
        )
    )


def lm_eval() -> ml_collections.ConfigDict:
    """No lm-eval tasks during training."""
    return ml_collections.ConfigDict(
        dict(
            tasks="",
            every=0,
            noise="",
            noise_seed=0,
            limit=0.0,
            num_fewshot=-1,
            include_path="",
            batch_size=8,
            max_length=2048,
            entropy_model="",
        )
    )
