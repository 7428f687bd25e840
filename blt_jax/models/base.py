"""The interface every kind of model offers the code above `nn/`.

Training, evaluation, ahead-of-time compilation, parameter counting and the CLI work with any model
through a `ModelKind` bound to its configuration, and never ask which kind they hold. A kind owns
what differs between models: its Flax module, what its forward pass reads from a batch, the shapes
of one batch, its scannable stacks, its analytic FLOPs, and how it relates to patching.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from blt_jax.config import EntropyLMConfig, PatchingConfig, as_dict, config_from_fields
from blt_jax.nn.options import DEFAULT, RunOptions

Batch = Mapping[str, jax.Array]
# What a training objective returns: (the sum to differentiate, (summed cross-entropy in nats over the
# real targets, their number, other summed metrics by name)); the train step divides both sums by the
# number of targets.
Objective = Callable[..., tuple[jax.Array, tuple[jax.Array, jax.Array, dict[str, jax.Array]]]]


def ce_sums(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(sum of cross-entropy in nats over the targets where mask is True, their number).

    Args:
      logits: [B, N, V]. targets: int [B, N]. mask: bool [B, N].
    """
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    weights = mask.astype(jnp.float32)
    return jnp.sum(nll * weights), jnp.sum(weights)


# Parameter path of a stack's parent dict and its number of layers (see `nn.scan`).
StackPath = tuple[tuple[str, ...], int]


class EncoderInput(abc.ABC):
    """A model whose encoder input can be computed apart from the rest of the forward pass.

    The train step computes it once per batch under gradient accumulation and differentiates the
    large embedding tables once, from the summed gradient of that input.
    """

    @abc.abstractmethod
    def split(self, params: Mapping) -> tuple[dict, dict]:
        """(the embedding tables, every other parameter)."""

    @abc.abstractmethod
    def merge(self, tables: Mapping, rest: Mapping) -> dict:
        """Inverse of `split`."""

    @abc.abstractmethod
    def __call__(self, tables: Mapping, tokens: jax.Array) -> jax.Array:
        """The encoder input [B, N, D] of tokens int [B, N]."""


class ModelKind(abc.ABC):
    """One kind of model, bound to one configuration.

    Attributes:
      name: the `kind` field of saved configurations ("blt", "entropy_lm", "token_lm").
      config_class: the frozen configuration dataclass of this kind.
      description: how messages name a model of this kind ("a BLT").
      token_rows: the model reads rows of BPE tokens (a `data.tokenizer`; batches carry target_bytes)
        instead of bytes.
      config: the bound configuration.
    """

    name: ClassVar[str]
    config_class: ClassVar[type]
    description: ClassVar[str]
    token_rows: ClassVar[bool] = False
    # The model is itself an entropy LM: loading also finds it as a BLT's patcher.
    is_patcher: ClassVar[bool] = False
    # The model is `nn.entropy_lm.EntropyLM` over its ids, so `inference.lm_decode` decodes it with a
    # cache (what `blt-jax serve` needs of a model without patches).
    causal_stack: ClassVar[bool] = False

    def __init__(self, config: Any):
        self.config = config

    @classmethod
    def config_from_dict(cls, raw: Any, path: str) -> Any:
        """The validated configuration of a dict (errors name the field under `path`): by default the
        fields of `config_class`, whose `__post_init__` validates them (a kind with nested sections
        builds them itself)."""
        data = {k: v for k, v in as_dict(raw, path).items() if k != "kind"}
        return config_from_fields(cls.config_class, data, path)

    @abc.abstractmethod
    def module(self, options: RunOptions = DEFAULT) -> nn.Module:
        """The Flax module, running as the options say (remat per stack, scanned stacks, attention)."""

    @abc.abstractmethod
    def inputs(self, batch: Batch, embeds: jax.Array | None = None) -> tuple[jax.Array, ...]:
        """The module's positional inputs taken from a training batch."""

    def batch_shapes(self, rows: int, row_bytes: int, row_patches: int) -> dict[str, jax.ShapeDtypeStruct]:
        """Shapes and dtypes of one training batch of `rows` rows: plain byte rows (token ids, next-byte
        targets, the mask of real targets), which models reading more extend."""
        shape = (rows, row_bytes)
        return {
            "tokens": jax.ShapeDtypeStruct(shape, jnp.int32),
            "targets": jax.ShapeDtypeStruct(shape, jnp.int32),
            "mask": jax.ShapeDtypeStruct(shape, jnp.bool_),
        }

    @abc.abstractmethod
    def scan_stacks(self) -> Mapping[str, StackPath]:
        """The stacks `nn.scan` may run: name -> (parameter path of the stack, number of layers)."""

    def scan_layout(self, names: Sequence[str]) -> dict[str, StackPath]:
        """The entries of `scan_stacks` named in `names` (the stacks a run scans)."""
        stacks = self.scan_stacks()
        return {name: stacks[name] for name in names}

    @abc.abstractmethod
    def training_flops_per_byte(self, row_bytes: int, mean_patch_len: float) -> float:
        """Model FLOPs per byte of a training step (3 x forward) on rows of `row_bytes` bytes."""

    def self_attention_flops_per_byte(self, row_bytes: int, mean_patch_len: float) -> float:
        """The part of `training_flops_per_byte` that self-attention proper runs (QK^T and PV of every
        stack without a cache): the work of the splash kernels, which XLA's cost analysis counts as 0.
        A kind that does not say counts none (`blt-jax aot` then reports its kernels' FLOPs as 0)."""
        return 0.0

    def example_inputs(self) -> tuple[jax.Array, ...]:
        """Small inputs that trace `init` (parameter shapes depend on neither N nor P)."""
        shapes = self.batch_shapes(1, 8, 9)
        batch = {key: jnp.ones(s.shape, s.dtype) for key, s in shapes.items()}
        return self.inputs(batch)

    @property
    def patching(self) -> PatchingConfig | None:
        """The patching rule the model's batches are cut with; None for a model of plain byte rows."""
        return None

    @property
    def entropy_lm(self) -> EntropyLMConfig | None:
        """The entropy LM that measures next-byte entropies for this model, if it has one."""
        return None

    @property
    def companions(self) -> dict[str, Any]:
        """Models stored beside this one with their own parameters (label -> configuration)."""
        return {}

    def with_patching(self, patching: PatchingConfig, entropy_lm: EntropyLMConfig | None) -> Any:
        """The configuration patching with `patching` (a run's rule and threshold) and `entropy_lm`;
        unchanged for a model of plain rows."""
        return self.config

    def standalone(self, params: Mapping) -> tuple[Any, Mapping]:
        """(configuration, parameters) of the model this one is to use once trained: itself, or the
        part of it that is a model of its own (byteification's stage 1: its BLT, without the teacher)."""
        return self.config, params

    def encoder_input(self) -> EncoderInput | None:
        """The separately computable encoder input, for models that have one."""
        return None

    def apply_fn(self, options: RunOptions = DEFAULT) -> Callable:
        """(params, batch, embeds=None) -> fp32 logits [B, N, V]."""
        module = self.module(options)
        return lambda params, batch, embeds=None: module.apply({"params": params}, *self.inputs(batch, embeds))

    def objective_fn(self, options: RunOptions = DEFAULT) -> Objective:
        """What training minimises: (params, batch, embeds=None) -> `Objective`'s tuple. By default the
        cross-entropy of the next byte (or token) alone; a kind with more losses adds them."""
        apply = self.apply_fn(options)

        def objective(params, batch, embeds=None):
            total, count = ce_sums(apply(params, batch, embeds), batch["targets"], batch["mask"])
            return total, (total, count, {})

        return objective
