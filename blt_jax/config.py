"""Typed, frozen, validated model configurations.

Experiment files under `experiments/` describe runs as `ml_collections.ConfigDict`s (easy to override on
the command line); the program turns them into these frozen dataclasses at start-up with
`model_config_from_dict`, so a typo or an impossible shape fails at once with the field's full path
(`model.encoder.n_heads: ...`) instead of deep inside a traced function.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from blt_jax.errors import InputError

# Largest hash-table size the 32-bit hash arithmetic supports (see nn/hash_embed.py).
MAX_HASH_VOCAB = 1 << 23
# Number of distinct hash functions the reference defines (one prime each).
MAX_HASH_FUNCTIONS = 11
PATCHING_MODES = ("entropy", "space", "static", "byte", "bpe")
# The latent transformer's mask: causal within EOS-delimited documents of patches (the released
# checkpoints), or causal over the whole row (Meta's code default: patches see earlier documents).
LATENT_MASKS = ("block_causal", "causal")
DTYPES = ("float32", "bfloat16", "float16")
# Largest vocabulary of a token transformer (a BPE vocabulary; `blt_jax.data.bpe.MAX_VOCAB`).
MAX_TOKEN_VOCAB = 1 << 20
# The global entropy threshold (nats) of the released checkpoints (facebook/blt): the default of
# entropy patching, and the fallback wherever a checkpoint or a user leaves it unset.
RELEASED_THRESHOLD = 1.335442066192627


# The file of a model directory in our format that holds its configuration (`convert.native`).
MODEL_CONFIG_FILE = "blt_jax.json"


class ConfigError(InputError):
    """A configuration value is invalid. `field` is the dotted path of the offending field."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason

    def under(self, prefix: str) -> ConfigError:
        """The same error with `prefix.` prepended to the field path."""
        return ConfigError(f"{prefix}.{self.field}" if prefix else self.field, self.reason)


def swiglu_hidden(dim: int, multiple_of: int = 256, multiplier: float | None = None) -> int:
    """Hidden width of the reference's SwiGLU FFN: 2/3 of 4*dim, scaled, rounded up to `multiple_of`.

    Examples: 768 -> 2048, 1024 -> 2816, 1280 -> 3584, 2048 -> 5632, 4096 -> 11008.
    """
    hidden = int(2 * (4 * dim) / 3)
    if multiplier is not None:
        hidden = int(multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def require(cond: bool, field: str, reason: str) -> None:
    if not cond:
        raise ConfigError(field, reason)


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


ROPE_SCALINGS = ("llama3",)


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """Llama 3's RoPE frequency scaling (`rope_type: llama3` in a Hugging Face config).

    Wavelengths longer than original_max_position / low_freq_factor are divided by `factor`, those
    shorter than original_max_position / high_freq_factor are kept, and the ones between are blended.

    Attributes:
      kind: "llama3" (the one scaling read; others are refused by name).
      factor: the division of long wavelengths (Llama 3.1: 8, Llama 3.2: 32).
      low_freq_factor / high_freq_factor: the band edges (Llama 3: 1 and 4).
      original_max_position: the context the frequencies were trained for (Llama 3: 8192).
    """

    kind: str = "llama3"
    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position: int = 8192

    def __post_init__(self):
        require(
            self.kind in ROPE_SCALINGS,
            "kind",
            f"unknown RoPE scaling {self.kind!r}; expected one of {', '.join(ROPE_SCALINGS)}",
        )
        require(self.factor > 0, "factor", f"must be > 0, got {self.factor!r}")
        require(
            0 < self.low_freq_factor < self.high_freq_factor,
            "high_freq_factor",
            f"must exceed low_freq_factor > 0, got {self.low_freq_factor!r} and {self.high_freq_factor!r}",
        )
        require(
            _is_int(self.original_max_position) and self.original_max_position >= 1,
            "original_max_position",
            f"must be a positive integer, got {self.original_max_position!r}",
        )


@dataclasses.dataclass(frozen=True)
class StackConfig:
    """One stack of pre-norm transformer blocks (local encoder/decoder, latent, entropy LM, or a token
    LM such as a Llama).

    Attributes:
      dim: model width D.
      n_layers: number of blocks.
      n_heads: query heads H.
      ffn_hidden: SwiGLU hidden width F (the reference uses `swiglu_hidden(dim)`).
      rope_theta: RoPE base (500000 for BLT stacks, 10000 for the entropy LM).
      window: sliding attention window W (key j visible to query i iff i - W < j <= i), or None for
        full causal attention (the latent transformer).
      norm_eps: RMSNorm epsilon.
      n_kv_heads: key/value heads (grouped-query attention: each serves H / n_kv_heads query heads);
        None = n_heads.
      head_dim: K, the width of one head (even: RoPE rotates pairs); None = dim // n_heads.
      rope_scaling: Llama 3's frequency scaling, or None.
      qkv_bias: query, key and value projections carry biases (Qwen2).

    `n_kv_heads` and `head_dim` are filled in at construction when left None.
    """

    dim: int
    n_layers: int
    n_heads: int
    ffn_hidden: int
    rope_theta: float = 500000.0
    window: int | None = None
    norm_eps: float = 1e-5
    n_kv_heads: int | None = None
    head_dim: int | None = None
    rope_scaling: RopeScaling | None = None
    qkv_bias: bool = False

    def __post_init__(self):
        for name in ("dim", "n_layers", "n_heads", "ffn_hidden"):
            value = getattr(self, name)
            require(_is_int(value) and value >= 1, name, f"must be a positive integer, got {value!r}")
        if self.head_dim is None:
            require(
                self.dim % self.n_heads == 0,
                "n_heads",
                f"dim={self.dim} is not divisible by n_heads={self.n_heads}; set head_dim, or heads that divide dim",
            )
            object.__setattr__(self, "head_dim", self.dim // self.n_heads)
        require(
            _is_int(self.head_dim) and self.head_dim >= 1,
            "head_dim",
            f"must be a positive integer, got {self.head_dim!r}",
        )
        derived = self.head_dim == self.dim // self.n_heads  # then the heads are what to change
        require(
            self.head_dim % 2 == 0,
            "n_heads" if derived else "head_dim",
            f"head_dim={self.head_dim}{' (dim/n_heads)' if derived else ''} must be even: RoPE rotates pairs",
        )
        if self.n_kv_heads is None:
            object.__setattr__(self, "n_kv_heads", self.n_heads)
        require(
            _is_int(self.n_kv_heads) and self.n_kv_heads >= 1 and self.n_heads % self.n_kv_heads == 0,
            "n_kv_heads",
            f"must divide n_heads={self.n_heads} (each key/value head serves a group of query "
            f"heads), got {self.n_kv_heads!r}",
        )
        require(self.rope_theta > 0, "rope_theta", f"must be > 0, got {self.rope_theta!r}")
        if self.window is not None:
            require(
                _is_int(self.window) and self.window >= 1,
                "window",
                f"must be None (full causal) or an integer >= 1, got {self.window!r}",
            )
        require(0 < self.norm_eps < 1, "norm_eps", f"must be in (0, 1), got {self.norm_eps!r}")
        require(isinstance(self.qkv_bias, bool), "qkv_bias", f"must be true or false, got {self.qkv_bias!r}")

    @property
    def kv_groups(self) -> int:
        """Query heads per key/value head (1 without grouped-query attention)."""
        return self.n_heads // self.n_kv_heads


@dataclasses.dataclass(frozen=True)
class HashConfig:
    """Hash n-gram embeddings of the local encoder.

    Attributes:
      group_sizes: the n of each n-gram table, in table order (released: 3..8).
      vocab: buckets per table (released: 500002).
      n_functions: hash functions (one prime each); tables = n_functions * len(group_sizes).
    """

    group_sizes: tuple[int, ...] = (3, 4, 5, 6, 7, 8)
    vocab: int = 500002
    n_functions: int = 1

    def __post_init__(self):
        object.__setattr__(self, "group_sizes", tuple(int(n) for n in self.group_sizes))
        require(len(self.group_sizes) >= 1, "group_sizes", "must name at least one n-gram size")
        for n in self.group_sizes:
            require(1 <= n <= 64, "group_sizes", f"every n must be in [1, 64], got {n}")
        require(
            _is_int(self.vocab) and 1 <= self.vocab <= MAX_HASH_VOCAB,
            "vocab",
            f"must be an integer in [1, {MAX_HASH_VOCAB}] (32-bit hash arithmetic), got {self.vocab!r}",
        )
        require(
            _is_int(self.n_functions) and 1 <= self.n_functions <= MAX_HASH_FUNCTIONS,
            "n_functions",
            f"must be in [1, {MAX_HASH_FUNCTIONS}] (the reference defines {MAX_HASH_FUNCTIONS} primes), "
            f"got {self.n_functions!r}",
        )

    @property
    def n_tables(self) -> int:
        return self.n_functions * len(self.group_sizes)


@dataclasses.dataclass(frozen=True)
class PatchingConfig:
    """How bytes are grouped into patches.

    Attributes:
      mode: "entropy" (threshold on the entropy LM), "space", "static" or "byte".
      threshold: global entropy threshold in nats (default: the released one, RELEASED_THRESHOLD).
      monotonic: use the approximate-monotonic rule H_t - H_{t-1} > threshold instead.
      threshold_add: if set, the combined rule H_t > threshold and H_t - H_{t-1} > threshold_add.
      static_size: patch size of the "static" mode.
      max_patch_length: split longer patches into chunks of this size (None: no limit).
      tokenizer: the "bpe" mode's tokenizer: patches are its tokens (the reference's name for
        patching by a token LM's tokenizer). A token LM directory of ours, a Hugging Face model
        directory with `tokenizer.json`, or a token LM's training run; read on the host, while the
        corpus is read (`data.token_patches`).
    """

    mode: str = "entropy"
    threshold: float = RELEASED_THRESHOLD
    monotonic: bool = False
    threshold_add: float | None = None
    static_size: int = 4
    max_patch_length: int | None = None
    tokenizer: str | None = None

    def __post_init__(self):
        require(
            self.mode in PATCHING_MODES,
            "mode",
            f"unknown patching mode {self.mode!r}; expected one of {', '.join(PATCHING_MODES)}",
        )
        require(math.isfinite(float(self.threshold)), "threshold", f"must be finite, got {self.threshold!r}")
        require(
            _is_int(self.static_size) and self.static_size >= 1,
            "static_size",
            f"must be an integer >= 1, got {self.static_size!r}",
        )
        if self.max_patch_length is not None:
            require(
                _is_int(self.max_patch_length) and self.max_patch_length >= 1,
                "max_patch_length",
                f"must be None or an integer >= 1, got {self.max_patch_length!r}",
            )
        require(
            not (self.monotonic and self.threshold_add is not None),
            "threshold_add",
            "the combined rule (threshold_add) and the monotonic rule are exclusive; set one",
        )
        require(
            (self.mode == "bpe") == bool(self.tokenizer),
            "tokenizer",
            "bpe patching needs its tokenizer (a token LM directory or run), and only it takes one",
        )


def _check_dtype(value: str, field: str) -> None:
    require(value in DTYPES, field, f"unknown dtype {value!r}; expected one of {', '.join(DTYPES)}")


@dataclasses.dataclass(frozen=True)
class EntropyLMConfig:
    """The small byte LM whose next-byte entropies place patch boundaries.

    Attributes:
      stack: its transformer (released: dim 768, 14 layers, 12 heads, FFN 2048, theta 10000,
        window 512).
      vocab_size: byte vocabulary (260).
      dtype: compute dtype; params are kept in `param_dtype`.
    """

    stack: StackConfig
    vocab_size: int = 260
    dtype: str = "float32"
    param_dtype: str = "float32"

    def __post_init__(self):
        require(
            _is_int(self.vocab_size) and 4 < self.vocab_size <= 512,
            "vocab_size",
            f"must be in (4, 512] (byte ids + specials), got {self.vocab_size!r}",
        )
        _check_dtype(self.dtype, "dtype")
        _check_dtype(self.param_dtype, "param_dtype")


@dataclasses.dataclass(frozen=True)
class TokenLMConfig:
    """A token transformer: a causal stack (`nn.entropy_lm.EntropyLM`) over the ids of a tokenizer: the
    BPE baseline a BLT is compared against (`blt_jax.data.bpe`), or a pretrained Llama-family model
    (`blt_jax.convert.llama`).

    Attributes:
      stack: its transformer (window None: full causal attention within each document).
      vocab_size: V, at least the vocabulary of the tokenizer it reads.
      dtype: compute dtype; params are kept in `param_dtype`.
      tie_embeddings: the output head is the embedding table (transposed), as in Llama 3.2 1B.
      eos_id: the id after which a new document starts (attention never crosses it), or None for one
        document per row (what transformers' Llama does: plain causal attention).
    """

    stack: StackConfig
    vocab_size: int
    dtype: str = "float32"
    param_dtype: str = "float32"
    tie_embeddings: bool = False
    eos_id: int | None = 2  # EOS of our byte and BPE vocabularies (`blt_jax.tokenizer.EOS_ID`)

    def __post_init__(self):
        require(
            _is_int(self.vocab_size) and 2 <= self.vocab_size <= MAX_TOKEN_VOCAB,
            "vocab_size",
            f"must be an integer in [2, {MAX_TOKEN_VOCAB}], got {self.vocab_size!r}",
        )
        _check_dtype(self.dtype, "dtype")
        _check_dtype(self.param_dtype, "param_dtype")
        require(
            isinstance(self.tie_embeddings, bool),
            "tie_embeddings",
            f"must be true or false, got {self.tie_embeddings!r}",
        )
        require(
            self.eos_id is None or (_is_int(self.eos_id) and 0 <= self.eos_id < self.vocab_size),
            "eos_id",
            f"must be None or an id below vocab_size={self.vocab_size}, got {self.eos_id!r}",
        )


@dataclasses.dataclass(frozen=True)
class BLTConfig:
    """The Byte Latent Transformer.

    Attributes:
      encoder: local encoder stack (byte level, windowed).
      latent: global latent transformer over patches (window None).
      decoder: local decoder stack; its dim must equal the encoder's (it consumes encoder states).
      cross_attn_k: query slots per patch (k); the latent input is k * encoder.dim wide.
      cross_attn_heads: heads of every cross-attention (default: encoder.n_heads).
      cross_attn_all_layers_encoder: cross-attention after every encoder layer (pooling once),
        instead of after the last one only (released: False).
      cross_attn_all_layers_decoder: cross-attention before every decoder layer, instead of the
        first one only (released: True).
      hash: hash n-gram embeddings, or None for none.
      patching: patching rule used when the caller gives no patch lengths.
      entropy_model: the entropy LM used by entropy patching (None if patches come from elsewhere).
      vocab_size: 260.
      dtype / param_dtype: compute and parameter dtypes.
      latent_mask: the latent transformer's mask, "block_causal" (within documents; the released
        checkpoints) or "causal" (over the whole row; Meta's `attn_bias_type` default).
      latent_norm: the latent transformer ends with an RMSNorm (a byteified BLT keeps its teacher's
        final norm, which its blocks' outputs were trained to pass through); Meta's has none.
    """

    encoder: StackConfig
    latent: StackConfig
    decoder: StackConfig
    cross_attn_k: int = 2
    cross_attn_heads: int | None = None
    cross_attn_all_layers_encoder: bool = False
    cross_attn_all_layers_decoder: bool = True
    hash: HashConfig | None = dataclasses.field(default_factory=HashConfig)
    patching: PatchingConfig = dataclasses.field(default_factory=PatchingConfig)
    entropy_model: EntropyLMConfig | None = None
    vocab_size: int = 260
    dtype: str = "float32"
    param_dtype: str = "float32"
    latent_mask: str = "block_causal"
    latent_norm: bool = False

    def __post_init__(self):
        require(isinstance(self.latent_norm, bool), "latent_norm", f"must be true or false, got {self.latent_norm!r}")
        require(
            self.latent_mask in LATENT_MASKS,
            "latent_mask",
            f"unknown latent mask {self.latent_mask!r}; expected one of {', '.join(LATENT_MASKS)}",
        )
        if self.cross_attn_heads is None:
            object.__setattr__(self, "cross_attn_heads", self.encoder.n_heads)
        require(
            self.decoder.dim == self.encoder.dim,
            "decoder.dim",
            f"must equal encoder.dim={self.encoder.dim} (the decoder consumes the encoder's byte "
            f"states), got {self.decoder.dim}",
        )
        require(
            _is_int(self.cross_attn_k) and self.cross_attn_k >= 1,
            "cross_attn_k",
            f"must be an integer >= 1, got {self.cross_attn_k!r}",
        )
        require(
            _is_int(self.cross_attn_heads)
            and self.cross_attn_heads >= 1
            and self.encoder.dim % self.cross_attn_heads == 0,
            "cross_attn_heads",
            f"must divide encoder.dim={self.encoder.dim}, got {self.cross_attn_heads!r}",
        )
        require(
            _is_int(self.vocab_size) and 4 < self.vocab_size <= 512,
            "vocab_size",
            f"must be in (4, 512] (byte ids + specials; the hash arithmetic assumes ids < 512), "
            f"got {self.vocab_size!r}",
        )
        _check_dtype(self.dtype, "dtype")
        _check_dtype(self.param_dtype, "param_dtype")
        if self.patching.mode == "entropy" and self.entropy_model is not None:
            require(
                self.entropy_model.vocab_size == self.vocab_size,
                "entropy_model.vocab_size",
                f"must equal vocab_size={self.vocab_size}",
            )

    @property
    def latent_input_dim(self) -> int:
        """Width of a patch vector entering the latent transformer: k * encoder.dim."""
        return self.cross_attn_k * self.encoder.dim

    @property
    def has_latent_projection(self) -> bool:
        """True when k * encoder.dim != latent.dim and an input projection is needed (7B)."""
        return self.latent_input_dim != self.latent.dim


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    """Byteification's first stage: a BLT whose latent transformer holds a token LM's blocks, trained
    beside that teacher (its token embeddings and head kept, frozen) on patches that are the teacher's
    tokens (Bolmo, arXiv 2512.15586, stage 1).

    Attributes:
      blt: the BLT (its latent has the teacher's shape and final norm: `latent_norm`).
      teacher_vocab: V_T, the teacher's vocabulary.
      teacher_tied: the teacher's head is its embedding table.
      hidden_layer: k: the latent's states after block k on the BLT's patch vectors are pulled
        toward the teacher's after block k on its token embeddings (Bolmo: 4).
      hidden_weight: weight of that mean squared error (Bolmo: 4).
      distill_weight: weight of the binarised KL between the teacher's log p(token) and the sum of the
        BLT's log-probs of that token's bytes (Bolmo: 1).
      temperature: of that KL (Bolmo: 5).
    """

    blt: BLTConfig
    teacher_vocab: int
    teacher_tied: bool = False
    hidden_layer: int = 4
    hidden_weight: float = 4.0
    distill_weight: float = 1.0
    temperature: float = 5.0

    def __post_init__(self):
        require(self.blt.latent_norm, "blt.latent_norm", "must be true: the teacher's final norm ends the latent")
        require(
            _is_int(self.teacher_vocab) and 2 <= self.teacher_vocab <= MAX_TOKEN_VOCAB,
            "teacher_vocab",
            f"must be an integer in [2, {MAX_TOKEN_VOCAB}], got {self.teacher_vocab!r}",
        )
        require(
            _is_int(self.hidden_layer) and 1 <= self.hidden_layer <= self.blt.latent.n_layers,
            "hidden_layer",
            f"must be in [1, latent.n_layers={self.blt.latent.n_layers}], got {self.hidden_layer!r}",
        )
        for name in ("hidden_weight", "distill_weight"):
            require(getattr(self, name) >= 0, name, f"must be >= 0, got {getattr(self, name)!r}")
        require(self.temperature > 0, "temperature", f"must be > 0, got {self.temperature!r}")

    # What code reading any BLT-like configuration asks of it.
    @property
    def vocab_size(self) -> int:
        return self.blt.vocab_size

    @property
    def dtype(self) -> str:
        return self.blt.dtype


ModelConfig = BLTConfig | EntropyLMConfig | TokenLMConfig | DistillConfig

# ---------------------------------------------------------------------------------------------
# Construction from plain mappings (ml_collections.ConfigDict, JSON) with full field paths.


def as_dict(value: Any, path: str) -> dict:
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    if not isinstance(value, Mapping):
        raise ConfigError(path or "<root>", f"expected a mapping, got {type(value).__name__}")
    return dict(value)


def config_from_fields(cls, raw: Any, path: str, nested: Mapping[str, Any] | None = None):
    """Builds the frozen dataclass `cls` from a mapping, rejecting unknown keys (naming the closest
    field) and prefixing errors with `path`; `nested`: field -> builder of that field's value."""
    data = as_dict(raw, path)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f"; known fields: {', '.join(names)}"
            raise ConfigError(f"{path}.{key}" if path else key, f"unknown field{hint}")
    kwargs = {}
    for key, value in data.items():
        sub = f"{path}.{key}" if path else key
        if nested and key in nested and value is not None:
            value = nested[key](value, sub)
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise e.under(path) from None
    except TypeError as e:  # missing required fields
        raise ConfigError(path or cls.__name__, str(e)) from None


def stack_from_dict(raw: Any, path: str = "stack") -> StackConfig:
    data = as_dict(raw, path)
    if data.get("ffn_hidden") is None and "dim" in data:
        data["ffn_hidden"] = swiglu_hidden(int(data["dim"]))
    return config_from_fields(
        StackConfig, data, path, nested={"rope_scaling": lambda v, p: config_from_fields(RopeScaling, v, p)}
    )


def entropy_lm_from_dict(raw: Any, path: str = "entropy_model") -> EntropyLMConfig:
    data = as_dict(raw, path)
    data.pop("kind", None)
    return config_from_fields(EntropyLMConfig, data, path, nested={"stack": stack_from_dict})


def token_lm_from_dict(raw: Any, path: str = "model") -> TokenLMConfig:
    data = as_dict(raw, path)
    data.pop("kind", None)
    return config_from_fields(TokenLMConfig, data, path, nested={"stack": stack_from_dict})


def blt_from_dict(raw: Any, path: str = "model") -> BLTConfig:
    data = as_dict(raw, path)
    data.pop("kind", None)
    nested = {
        "encoder": stack_from_dict,
        "latent": stack_from_dict,
        "decoder": stack_from_dict,
        "hash": lambda v, p: config_from_fields(HashConfig, v, p),
        "patching": lambda v, p: config_from_fields(PatchingConfig, v, p),
        "entropy_model": entropy_lm_from_dict,
    }
    return config_from_fields(BLTConfig, data, path, nested=nested)


def distill_from_dict(raw: Any, path: str = "model") -> DistillConfig:
    data = as_dict(raw, path)
    data.pop("kind", None)
    return config_from_fields(DistillConfig, data, path, nested={"blt": blt_from_dict})
