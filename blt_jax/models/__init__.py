"""The registry of model kinds: the one place that maps configurations and `kind` names to kinds.

Adding a kind (say a plain byte or token transformer baseline) is one new module defining its
configuration, Flax module and `ModelKind` subclass, plus its line in `KINDS`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from blt_jax.config import ConfigError, ModelConfig, _as_dict
from blt_jax.errors import InputError
from blt_jax.models.base import EncoderInput, ModelKind
from blt_jax.models.blt import BLTKind
from blt_jax.models.distill import DistillKind
from blt_jax.models.entropy_lm import EntropyLMKind
from blt_jax.models.token_lm import TokenLMKind
from blt_jax.nn.options import MODEL_KEYS, from_model_keys

__all__ = [
    "KINDS",
    "EncoderInput",
    "ModelKind",
    "config_to_dict",
    "model_config_from_dict",
    "model_kind",
    "require_kind",
]

KINDS: dict[str, type[ModelKind]] = {kind.name: kind for kind in (BLTKind, EntropyLMKind, TokenLMKind, DistillKind)}
DEFAULT_KIND = "blt"


def model_kind(config: ModelConfig) -> ModelKind:
    """The kind of a model configuration, bound to it."""
    for kind in KINDS.values():
        if type(config) is kind.config_class:
            return kind(config)
    raise TypeError(f"no model kind for a {type(config).__name__}")


def model_config_from_dict(raw: Any, path: str = "model") -> ModelConfig:
    """The configuration of a dict whose `kind` field (default "blt") names its model kind. Run options
    an experiment's model section carries (`nn.options.MODEL_KEYS`: attention) are not the model's and
    are left out."""
    data = _as_dict(raw, path)
    try:
        from_model_keys(data)  # not the model's, but still checked: a command reading the model alone
    except ConfigError as e:
        raise e.under(path) from None
    raw = {k: v for k, v in data.items() if k not in MODEL_KEYS}
    name = raw.get("kind", DEFAULT_KIND)
    kind = KINDS.get(name)
    if kind is None:
        expected = " or ".join(repr(k) for k in KINDS)
        raise ConfigError(f"{path}.kind", f"unknown model kind {name!r}; expected {expected}")
    return kind.config_from_dict(raw, path)


def require_kind(config: ModelConfig, name: str, what: str, source: str | None = None) -> None:
    """Raises InputError when `what` (a command, a step) needs a model of kind `name` and `config`
    (read from `source`, if given) is of another kind."""
    got = model_kind(config)
    if got.name == name:
        return
    if source is None:
        raise InputError(f"{what} needs {KINDS[name].description}, not {got.description}")
    raise InputError(f"{source} describes {got.description}; {what} needs {KINDS[name].description}")


def config_to_dict(config: ModelConfig) -> dict:
    """JSON-friendly dict, with its `kind`, that `model_config_from_dict` turns back into `config`."""
    return {**dataclasses.asdict(config), "kind": model_kind(config).name}
