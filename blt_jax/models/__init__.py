"""The registry of model kinds: the one place that maps configurations and `kind` names to kinds.

A new kind is one module defining its configuration (a frozen dataclass), its Flax module and its
`ModelKind` subclass, registered:
  * in this package: its line in `BUILT_IN`;
  * anywhere else: `register_kind(MyKind)` in the process that uses it (an experiment file may do it),
    or, so that every `blt-jax` command finds it, an entry point of the installed distribution that
    defines it, in group `blt_jax.model_kinds` (`my_kind = my_package.my_module:MyKind`), loaded the
    first time an unknown kind is met.
Training, evaluation, lm-eval scoring, saving and loading then work with it unchanged (what each
asks of a kind is a `ModelKind` hook).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
from typing import Any

from blt_jax.config import ConfigError, ModelConfig, as_dict
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
    "register_kind",
    "require_kind",
]

BUILT_IN = (BLTKind, EntropyLMKind, TokenLMKind, DistillKind)
KINDS: dict[str, type[ModelKind]] = {kind.name: kind for kind in BUILT_IN}
DEFAULT_KIND = "blt"
ENTRY_POINTS = "blt_jax.model_kinds"
_plugins_loaded = False


def register_kind(kind: type[ModelKind]) -> type[ModelKind]:
    """Adds a model kind to the registry (also usable as a class decorator); registering the same
    class again is a no-op.

    Raises:
      ValueError: another kind has the same name or configuration class.
    """
    for other in KINDS.values():
        if other is not kind and (other.name == kind.name or other.config_class is kind.config_class):
            raise ValueError(
                f"model kind {kind.__module__}.{kind.__qualname__} clashes with "
                f"{other.__module__}.{other.__qualname__} (name {other.name!r}, config {other.config_class.__name__})"
            )
    KINDS[kind.name] = kind
    return kind


def _load_plugins() -> bool:
    """Registers the kinds installed distributions declare (entry point group `ENTRY_POINTS`), once.
    Returns whether this call loaded them (False: loaded before)."""
    global _plugins_loaded
    if _plugins_loaded:
        return False
    _plugins_loaded = True
    for entry in importlib.metadata.entry_points(group=ENTRY_POINTS):
        try:
            kind = entry.load()
        except Exception as error:  # noqa: BLE001 - any import failure of a plugin is named, in one line
            raise InputError(
                f"model kind plugin {entry.name} = {entry.value} (entry point group {ENTRY_POINTS}) failed "
                f"to load: {type(error).__name__}: {error}"
            ) from None
        if not (isinstance(kind, type) and issubclass(kind, ModelKind)):
            raise InputError(f"model kind plugin {entry.name} = {entry.value} is not a ModelKind subclass")
        register_kind(kind)
    return True


def _kind_of(config: ModelConfig) -> type[ModelKind] | None:
    return next((kind for kind in KINDS.values() if type(config) is kind.config_class), None)


def model_kind(config: ModelConfig) -> ModelKind:
    """The kind of a model configuration, bound to it."""
    kind = _kind_of(config)
    if kind is None and _load_plugins():
        kind = _kind_of(config)
    if kind is None:
        raise TypeError(f"no model kind for a {type(config).__name__}; register its kind (models.register_kind)")
    return kind(config)


def model_config_from_dict(raw: Any, path: str = "model") -> ModelConfig:
    """The configuration of a dict whose `kind` field (default "blt") names its model kind. Run options
    an experiment's model section carries (`nn.options.MODEL_KEYS`: attention) are not the model's and
    are left out."""
    data = as_dict(raw, path)
    try:
        from_model_keys(data)  # not the model's, but still checked: a command reading the model alone
    except ConfigError as e:
        raise e.under(path) from None
    raw = {k: v for k, v in data.items() if k not in MODEL_KEYS}
    name = raw.get("kind", DEFAULT_KIND)
    if name not in KINDS:
        _load_plugins()
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
