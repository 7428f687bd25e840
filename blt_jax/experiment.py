"""Loading experiment files: `experiments/<name>.py[:arg]` defining `get_config(arg=None)`."""

from __future__ import annotations

import importlib.util
import inspect
import os

import ml_collections


def load_experiment(spec: str) -> ml_collections.ConfigDict:
    """Runs `get_config(arg)` of an experiment file.

    Args:
      spec: "path/to/file.py" or "path/to/file.py:arg" (the same syntax as `--config`).

    Returns:
      The ConfigDict the file builds.
    """
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"experiment file {path!r} does not exist")
    name = "blt_experiment_" + os.path.splitext(os.path.basename(path))[0]
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"{path} defines no get_config(arg=None)")
    params = inspect.signature(module.get_config).parameters
    return module.get_config(arg or None) if params else module.get_config()
