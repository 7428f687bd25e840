"""Reading weights (the one owner): model directories in our, the Hugging Face or Meta's layout, and
training runs of ours.

A training run is read from its checkpoint alone: the resolved configuration saved with it and the
parameters, restored without the optimizer state, the data iterator or the corpus, onto one device.
A run copied off its pod, or whose corpus is gone, loads the same.

`api.py` wraps these in `BLTModel`; the train loop (`init_from`), the CLI and the exporter call them.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from blt_jax import paths
from blt_jax.config import BLTConfig, EntropyLMConfig, ModelConfig
from blt_jax.convert.layout import WeightError
from blt_jax.errors import InputError, NotFound
from blt_jax.params import abstract_params

logger = logging.getLogger("blt_jax.loading")

# A training workdir is a directory holding this one (Orbax's steps inside). `is_training_run` is the
# only test of it, so the readers here and the train loop agree. It lives here, not beside Orbax in
# `train/checkpoint.py`: importing that module loads Orbax (slow, and it installs a root logging
# handler), which loading a model directory must not do.
CHECKPOINTS = "checkpoints"


class CheckpointError(InputError):
    """A path holds no readable model or training checkpoint."""


def check_tree(params: Mapping, abstract: Mapping, source: str) -> None:
    """Raises WeightError naming every missing, unexpected or mis-shaped parameter."""
    got = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(params)}
    want = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(abstract)}
    problems = [f"missing parameter {k} {tuple(want[k].shape)}" for k in sorted(set(want) - set(got))]
    problems += [f"unexpected parameter {k}" for k in sorted(set(got) - set(want))]
    problems += [
        f"parameter {k} has shape {tuple(np.shape(got[k]))}, expected {tuple(want[k].shape)}"
        for k in sorted(set(got) & set(want))
        if tuple(np.shape(got[k])) != tuple(want[k].shape)
    ]
    if problems:
        raise WeightError(f"{source}: {len(problems)} parameter problem(s):\n  " + "\n  ".join(problems))


# ---- training runs ------------------------------------------------------------------------------


def checkpoints_dir(workdir: str) -> str:
    """Where a training workdir keeps its checkpoints (`<workdir>/checkpoints`, resolved)."""
    return paths.join(paths.resolve(workdir), CHECKPOINTS)


def is_training_run(path: str) -> bool:
    """True if `path` is a `blt-jax train` workdir (it holds `checkpoints/`, even if still empty)."""
    return paths.isdir(checkpoints_dir(path))


def require_training_run(workdir: str) -> str:
    """The checkpoints directory of a training workdir.

    Raises:
      CheckpointError: `workdir` is not one.
    """
    if not is_training_run(workdir):
        raise CheckpointError(f"{workdir}: not a training workdir (it holds no {CHECKPOINTS}/)")
    return checkpoints_dir(workdir)


def _reader(workdir: str):
    from blt_jax.train.checkpoint import CheckpointReader

    return CheckpointReader(require_training_run(workdir))


def _restore_run_params(reader, step: int, experiment) -> Any:
    """The parameters of checkpoint `step` (per-layer layout), on this process's first device."""
    from blt_jax.nn.scan import stack_layers, unstack_layers
    from blt_jax.train.config import resolve_scan

    model = experiment.model
    scan = resolve_scan(experiment.train.scan, model)
    stored = jax.eval_shape(lambda p: stack_layers(p, model, scan), abstract_params(model))
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])  # addressable on every host
    target = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), stored)
    return unstack_layers(reader.params(step, target), model, scan)


def _first_line(error: BaseException | None) -> str:
    text = str(error or "").strip()
    return text.splitlines()[0][:200] if text else ""


def read_run_config(workdir: str, step: int | None = None):
    """The `ExperimentConfig` saved with a run's newest checkpoint (or `step`)."""
    from blt_jax.train.config import experiment_from_dict

    with _reader(workdir) as reader:
        steps = reader.steps()
        if not steps:
            raise CheckpointError(f"{workdir}: the run has no complete checkpoint yet")
        return experiment_from_dict(reader.config(steps[-1] if step is None else step))


def read_run(workdir: str, step: int | None = None) -> tuple[Any, Any]:
    """(experiment, params) of a training run's newest readable checkpoint (or `step`).

    Reads the checkpoint only (no corpus, no data iterator, no optimizer state); params come back
    in the per-layer layout even when the run scanned its stacks. An unreadable newest checkpoint
    is reported and the previous one is used.

    Raises:
      CheckpointError: no training run there, or no readable checkpoint.
    """
    from blt_jax.train.config import experiment_from_dict

    with _reader(workdir) as reader:
        steps = reader.steps()
        if not steps:
            raise CheckpointError(f"{workdir}: the run has no complete checkpoint yet")
        candidates = list(reversed(steps)) if step is None else [step]
        last_error: Exception | None = None
        for candidate in candidates:
            try:
                experiment = experiment_from_dict(reader.config(candidate))
                return experiment, _restore_run_params(reader, candidate, experiment)
            except Exception as e:  # noqa: BLE001 - an unreadable checkpoint: try the previous one
                last_error = e
                logger.warning("checkpoint %d of %s is unreadable (%s: %s); trying the previous one", candidate,
                               workdir, type(e).__name__, _first_line(e))
        raise CheckpointError(f"{workdir}: no readable checkpoint (steps {', '.join(map(str, steps))}; the last "
                              f"said {type(last_error).__name__}: {_first_line(last_error)})") from last_error


# ---- model directories --------------------------------------------------------------------------


def detect_layout(path: str) -> str:
    """"native", "hf" or "meta" for a model directory.

    Raises:
      NotFound: none of the layouts is there. InputError: an unreadable config.json.
    """
    from blt_jax.convert.native import CONFIG_FILE

    if paths.exists(paths.join(path, CONFIG_FILE)):
        return "native"
    config_json = paths.join(path, "config.json")
    if paths.exists(config_json):
        cfg = paths.read_json(config_json)
        if "encoder_config" in cfg or cfg.get("model_type") == "blt":
            return "hf"
    if paths.exists(paths.join(path, "params.json")) and paths.exists(paths.join(path, "consolidated.pth")):
        return "meta"
    raise NotFound(
        f"{path}: not a BLT checkpoint directory. Expected one of: blt_jax.json + params.safetensors "
        "(ours); config.json + model.safetensors (Hugging Face BltForCausalLM); params.json + "
        "consolidated.pth (Meta); checkpoints/ (a blt-jax training run)"
    )


def _require_dir(path: str) -> str:
    resolved = paths.resolve(path)
    if not paths.isdir(resolved):
        raise NotFound(f"{path}: no such directory")
    return resolved


def load_model_dir(path: str, entropy_path: str | None = None, dtype: Any = np.float32):
    """(config, params, entropy params or None) of a BLT model directory in any layout (detected).

    `entropy_path` is Meta's separate entropy model directory. Shapes are checked by `BLTModel`.
    """
    resolved = _require_dir(path)
    if paths.is_uri(resolved):  # the readers memory-map local files: read a local copy
        with paths.local_dir(resolved) as local:
            return load_model_dir(local, entropy_path, dtype)
    layout = detect_layout(resolved)
    if layout == "native":
        from blt_jax.convert.native import load_native

        config, params, entropy = load_native(resolved, np.dtype(dtype))
        if isinstance(config, EntropyLMConfig):
            raise CheckpointError(f"{path} holds an entropy LM, not a BLT")
    elif layout == "hf":
        from blt_jax.convert.hf import load_hf

        config, params, entropy = load_hf(resolved, np.dtype(dtype))
    else:
        from blt_jax.convert.meta import load_meta

        config, params, entropy = load_meta(resolved, None if entropy_path is None else paths.resolve(entropy_path),
                                            np.dtype(dtype))
    return config, params, entropy


def load_entropy_lm(path: str) -> tuple[EntropyLMConfig, dict]:
    """(config, params) of an entropy LM: a training run of one, our format (an entropy LM alone or
    a BLT saved with its patcher), an HF BLT directory (its patcher), or Meta's layout (an
    `entropy_model/` directory, or a BLT directory beside one)."""
    if is_training_run(path):
        experiment, params = read_run(path)
        if not isinstance(experiment.model, EntropyLMConfig):
            raise CheckpointError(f"{path} trained a BLT, not an entropy LM")
        return experiment.model, params
    resolved = _require_dir(path)
    if paths.is_uri(resolved):  # the readers memory-map local files: read a local copy
        with paths.local_dir(resolved) as local:
            return load_entropy_lm(local)
    from blt_jax.convert.native import CONFIG_FILE, load_native

    if paths.exists(paths.join(resolved, CONFIG_FILE)):
        config, params, entropy = load_native(resolved)
        if isinstance(config, EntropyLMConfig):
            check_tree(params, abstract_params(config), path)
            return config, params
        if entropy is None or config.entropy_model is None:
            raise CheckpointError(f"{path}: this BLT was saved without an entropy LM")
        check_tree(entropy, abstract_params(config.entropy_model), path)
        return config.entropy_model, entropy
    params_json = paths.join(resolved, "params.json")
    if paths.exists(params_json):
        raw = paths.read_json(params_json)
        is_blt = any(isinstance(v, Mapping) and "dim_global" in v for v in (raw, raw.get("model"), raw.get("args")) if v)
        if not is_blt:
            from blt_jax.convert.meta import load_meta_entropy

            return load_meta_entropy(resolved)
    config, _, entropy = load_model_dir(resolved)
    if entropy is None:
        raise CheckpointError(f"{path}: the checkpoint has no entropy LM (patcher)")
    return config.entropy_model, entropy


def _pass_entropy_model(source: str) -> str | None:
    """The entropy LM that made a run's stored entropies (named in the pass's manifest), if the
    pass and that model are still there."""
    from blt_jax.patching.store import MANIFEST

    manifest = paths.join(source, MANIFEST) if paths.is_uri(source) or source.startswith("/") else None
    try:
        model = paths.read_json(manifest).get("entropy_model") if manifest and paths.exists(manifest) else None
    except (OSError, ValueError):
        return None
    return model if isinstance(model, str) and paths.isdir(model) else None


def load_blt(path: str, entropy_path: str | None = None, dtype: Any = np.float32):
    """(config, params, entropy params or None) of a BLT from a model directory or a training run.

    A training run's BLT patches with the rule and threshold it was trained with; when that rule is
    entropy patching, `entropy_path` names its entropy LM (anything `load_entropy_lm` reads); by
    default, the model named by the manifest of the entropy pass the run trained on, if still there.
    """
    if not is_training_run(path):
        return load_model_dir(path, entropy_path, dtype)
    experiment, params = read_run(path)
    if not isinstance(experiment.model, BLTConfig):
        raise CheckpointError(f"{path} trained an entropy LM, not a BLT")
    patching = experiment.data.patching
    entropy_config, entropy_params = None, None
    if patching.mode == "entropy":
        entropy_path = entropy_path or _pass_entropy_model(experiment.data.source)
        if entropy_path is None:
            raise CheckpointError(f"{path} was trained with entropy patching: name its entropy LM "
                                  "(--entropy-checkpoint DIR)")
        entropy_config, entropy_params = load_entropy_lm(entropy_path)
    config: ModelConfig = dataclasses.replace(experiment.model, patching=patching, entropy_model=entropy_config)
    params = jax.tree_util.tree_map(lambda x: np.asarray(x).astype(dtype), jax.device_get(params))
    return config, params, entropy_params
