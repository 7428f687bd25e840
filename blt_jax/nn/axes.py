"""Logical axis names of every parameter.

Layers only ever name these; `blt_jax.parallel.LOGICAL_RULES` is the single table that maps them to
mesh axes. Shape letters used in docstrings: B batch, N bytes, P patches, D width, H heads,
K head dim, F FFN hidden, V vocabulary, T hash tables, G hash buckets.
"""

EMBED = "embed"  # model width D of any stack
HEADS = "heads"  # attention heads H
HEAD_DIM = "head_dim"  # per-head width K
MLP = "mlp"  # SwiGLU hidden F
VOCAB = "vocab"  # byte vocabulary V (260)
NORM = "norm"  # RMSNorm scales
HASH_TABLES = "hash_tables"  # hash n-gram tables T
HASH_VOCAB = "hash_vocab"  # buckets per hash table G
PATCH_SLOTS = "patch_slots"  # k * D_local outputs of a patch projection
LATENT_IN = "latent_in"  # k * D_local input of the latent input projection
LAYERS = "layers"  # the stacked layer axis of a scanned stack (`nn.scan` over layers)

# Activations.
ACT_BATCH = "act_batch"
ACT_LENGTH = "act_length"
ACT_EMBED = "act_embed"
