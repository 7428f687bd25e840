"""Loading experiment files: `experiments/<name>.py[:arg]` defining `get_config(arg=None)`, with
`--config.a.b=v` overrides (the one loader every command uses).

    raw = load_experiment("experiments/tiny.py", ["train.steps=50", "data.source=~/corpus"])
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import difflib
import importlib.util
import inspect
import os
import tempfile

import ml_collections

from blt_jax import paths
from blt_jax.errors import InputError, NotFound
from blt_jax.nn.options import model_key_defaults

OVERRIDE_PREFIX = "--config."


def split_spec(spec: str) -> tuple[str, str]:
    """("path/to/file.py", "arg") of "path/to/file.py[:arg]"; a URI's scheme is not an argument."""
    scheme, sep, rest = spec.partition("://")
    if sep:
        path, _, arg = rest.partition(":")
        return f"{scheme}://{path}", arg
    path, _, arg = spec.partition(":")
    return path, arg


def _run_file(spec: str) -> ml_collections.ConfigDict:
    given, arg = split_spec(spec)
    if paths.is_uri(given):  # exec a local copy of a file in a bucket
        with tempfile.TemporaryDirectory(prefix="blt_jax_") as scratch:
            local = os.path.join(scratch, os.path.basename(given))
            paths.copy_file(given, local)
            return _run_file(f"{local}:{arg}" if arg else local)
    path = paths.resolve(given)
    if not os.path.isfile(path):
        raise NotFound(f"experiment file {given!r} does not exist")
    name = "blt_experiment_" + os.path.splitext(os.path.basename(path))[0]
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except SyntaxError as e:
        raise InputError(f"{path}:{e.lineno}: invalid Python ({e.msg})") from e
    if not hasattr(module, "get_config"):
        raise InputError(f"{path} defines no get_config(arg=None)")
    params = inspect.signature(module.get_config).parameters
    try:
        return module.get_config(arg or None) if params else module.get_config()
    except (ValueError, KeyError) as e:  # e.g. an unknown profile name: the file's own message
        raise InputError(f"{spec}: {e.args[0] if e.args else e}") from e


def _parse_value(text: str, current):
    """`text` as the type of the field it replaces (a Python literal where the field is None)."""
    if text.strip() == "None":
        return None
    if isinstance(current, bool):
        lowered = text.strip().lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise InputError(f"expected true or false, got {text!r}")
    if isinstance(current, str):
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if current is None:
            return text  # e.g. init_from=~/runs/x: a path
        raise InputError(f"expected {type(current).__name__}, got {text!r}") from None
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(current, (tuple, list)) and isinstance(value, (tuple, list)):
        return type(current)(value)
    if current is not None and not isinstance(value, type(current)):
        raise InputError(f"expected {type(current).__name__}, got {text!r}")
    return value


def apply_override(raw: ml_collections.ConfigDict, item: str) -> None:
    """Applies one `a.b.c=value` override in place; unknown keys name their close matches."""
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise InputError(f"--config.{item}: expected --config.KEY=VALUE")
    names = key.split(".")
    parent, walked = raw, []
    for depth, name in enumerate(names):
        known = list(parent.keys()) if isinstance(parent, (ml_collections.ConfigDict, dict)) else None
        if known is None or name not in known:
            where = ".".join(walked) or "the config"
            close = difflib.get_close_matches(name, known or [], n=3)
            if close:
                hint = "did you mean " + ", ".join(".".join([*walked, c]) for c in close) + "?"
            else:
                hint = f"{where} has {', '.join(sorted(known))}" if known else f"{where} is not a section"
            raise InputError(f"--config.{key}: unknown key {'.'.join([*walked, name])!r}; {hint}")
        walked.append(name)
        if depth < len(names) - 1:
            parent = parent[name]
    leaf = names[-1]
    try:
        value = _parse_value(text, parent[leaf])
    except InputError as e:
        raise InputError(f"--config.{key}: {e}") from None
    guard = parent.ignore_type() if isinstance(parent, ml_collections.ConfigDict) else contextlib.nullcontext()
    with guard:
        parent[leaf] = value


def load_experiment(spec: str, overrides: list[str] | tuple[str, ...] = ()) -> ml_collections.ConfigDict:
    """Runs `get_config(arg)` of an experiment file and applies overrides.

    Args:
      spec: "path/to/file.py" or "path/to/file.py:arg" (relative or `~` paths allowed).
      overrides: "a.b.c=value" items (what follows `--config.` on a command line).

    Returns:
      The ConfigDict the file builds, overridden.

    Raises:
      NotFound: no such file. InputError: no get_config, an unknown key, a value of the wrong type.
    """
    raw = _run_file(spec)
    model = raw.get("model") if isinstance(raw, ml_collections.ConfigDict) else None
    if isinstance(model, ml_collections.ConfigDict):  # run options the file leaves at their defaults
        with model.unlocked():
            for key, value in model_key_defaults().items():
                if key not in model:
                    model[key] = value
    train = raw.get("train") if isinstance(raw, ml_collections.ConfigDict) else None
    if isinstance(train, ml_collections.ConfigDict):  # fields added since the file was written
        from blt_jax.experiment.config import TrainConfig

        with train.unlocked():
            for field in dataclasses.fields(TrainConfig):
                if field.name not in train:
                    train[field.name] = field.default
    for item in overrides:
        apply_override(raw, item)
    return raw


def split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """(other arguments, override items) of a command line: `--config.a.b=v` and `--config.a.b v`."""
    rest, items, i = [], [], 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith(OVERRIDE_PREFIX):
            body = arg[len(OVERRIDE_PREFIX) :]
            if "=" not in body:
                if i + 1 >= len(argv):
                    raise InputError(f"{arg}: expected {arg}=VALUE")
                body, i = f"{body}={argv[i + 1]}", i + 1
            items.append(body)
        else:
            rest.append(arg)
        i += 1
    return rest, items
