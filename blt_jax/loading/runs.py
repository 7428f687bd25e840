"""Training runs of ours as sources of weights: a run is read from its checkpoint alone (the
resolved configuration saved with it and the parameters, restored without the optimizer state, the
data iterator or the corpus, onto one device), so a run copied off its pod, or whose corpus is gone,
loads the same. Model directories are read by `directories`; the functions here take either.
"""

from __future__ import annotations

import logging
from typing import Any

import jax
import numpy as np

from blt_jax import paths
from blt_jax.config import BLTConfig, EntropyLMConfig, ModelConfig
from blt_jax.experiment.config import experiment_from_dict, resolve_scan
from blt_jax.loading.directories import (
    CheckpointError,
    LoadedModel,
    is_tensors_file,
    load_dir,
    load_entropy_dir,
    load_tensors,
)
from blt_jax.models import model_kind
from blt_jax.nn.scan import stack_layers, unstack_layers
from blt_jax.params import abstract_params
from blt_jax.patching.store import MANIFEST

logger = logging.getLogger("blt_jax.runs")

# A training workdir is a directory holding this one (Orbax's steps inside); `is_training_run` is the
# only test of it, so the readers here, the API and the train loop agree.
CHECKPOINTS = "checkpoints"
# A token transformer's run keeps a copy of its BPE tokenizer here (`data.tokenizer` may move away).
TOKENIZER_FILE = "tokenizer.json"  # the name `loading.TOKENIZER_FILE` gives a token LM directory's too


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
    # Imported here, not above: Orbax is slow to import and installs a root logging handler, which
    # asking whether a path is a run, or loading a model directory, must not pay for.
    from blt_jax.checkpoint import CheckpointReader

    return CheckpointReader(require_training_run(workdir))


def _restore_run_params(reader, step: int, experiment) -> Any:
    """The parameters of checkpoint `step` (per-layer layout), on this process's first device."""
    model = experiment.model
    layout = model_kind(model).scan_layout(resolve_scan(experiment.train.scan, model))
    stored = jax.eval_shape(lambda p: stack_layers(p, layout), abstract_params(model))
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])  # addressable on every host
    target = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), stored)
    return unstack_layers(reader.params(step, target), layout)


def _first_line(error: BaseException | None) -> str:
    text = str(error or "").strip()
    return text.splitlines()[0][:200] if text else ""


def read_run_config(workdir: str, step: int | None = None):
    """The `ExperimentConfig` saved with a run's newest checkpoint (or `step`)."""
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
                logger.warning(
                    "checkpoint %d of %s is unreadable (%s: %s); trying the previous one",
                    candidate,
                    workdir,
                    type(e).__name__,
                    _first_line(e),
                )
        raise CheckpointError(
            f"{workdir}: no readable checkpoint (steps {', '.join(map(str, steps))}; the last "
            f"said {type(last_error).__name__}: {_first_line(last_error)})"
        ) from last_error


def load_initial_params(model: ModelConfig, spec: str, fresh=None) -> Any:
    """Parameters for `model` to start training from (`train.init_from`, `loading.init_from`): runs of ours,
    model directories in any layout `loading` reads (for an entropy LM, any form `load_entropy_lm`
    reads), or `.safetensors` files of '/'-named tensors, for the whole tree or parts of it. `fresh()`
    gives the initialisation of what no source fills (default: seed 0)."""
    from blt_jax.loading.init_from import initial_params
    from blt_jax.params import init_params

    fresh = fresh or (lambda: init_params(model, jax.random.key(0)))

    def load(path: str) -> Any:
        if is_tensors_file(path):
            return load_tensors(path)
        if is_training_run(path):
            return read_run(path)[1]
        if model_kind(model).is_patcher:  # also a BLT's patcher, in any layout
            return load_entropy_lm(path)[1]
        return load_dir(path).params

    return initial_params(model, spec, fresh, load)


def _pass_entropy_model(source: str) -> str | None:
    """The entropy LM that made a run's stored entropies (named in the pass's manifest), if the
    pass and that model are still there."""
    manifest = paths.join(source, MANIFEST) if paths.is_uri(source) or source.startswith("/") else None
    try:
        model = paths.read_json(manifest).get("entropy_model") if manifest and paths.exists(manifest) else None
    except (OSError, ValueError):
        return None
    return model if isinstance(model, str) and paths.isdir(model) else None


def load_blt(path: str, entropy_path: str | None = None, dtype: Any = np.float32):
    """(config, params, entropy params or None) of a BLT from a model directory or a training run
    (`load_model`, required to hold a BLT)."""
    loaded = load_model(path, entropy_path, dtype)
    if not isinstance(loaded.config, BLTConfig):
        raise CheckpointError(f"{path} holds {model_kind(loaded.config).description}, not a BLT")
    return loaded.config, loaded.params, loaded.entropy_params


def run_tokenizer(path: str, experiment) -> Any:
    """The BPE tokenizer a token LM's run trained with: the copy in the run directory, else the run's
    `data.tokenizer`."""
    from blt_jax.data.bpe import BpeTokenizer

    copy = paths.join(paths.resolve(path), TOKENIZER_FILE)
    return BpeTokenizer.load(copy if paths.exists(copy) else experiment.data.tokenizer)


def load_model(path: str, entropy_path: str | None = None, dtype: Any = np.float32) -> LoadedModel:
    """Any model from a model directory (`loading.load_dir`) or a training run of ours.

    A run's model is what it trains to be (`ModelKind.standalone`: byteification's stage 1 gives its
    BLT) and patches with the rule and threshold it trained with; when that rule is entropy patching,
    `entropy_path` names its entropy LM (anything `load_entropy_lm` reads), by default the model named
    by the manifest of the entropy pass the run trained on, if still there. A token LM comes with its
    tokenizer.
    """
    if not is_training_run(path):
        return load_dir(path, entropy_path, dtype)
    experiment, params = read_run(path)
    kind = model_kind(experiment.model)
    config, entropy_params = patching_model(experiment, entropy_path, path)
    config, params = model_kind(config).standalone(params)
    params = jax.tree_util.tree_map(lambda x: np.asarray(x).astype(dtype), jax.device_get(params))
    tokenizer = run_tokenizer(path, experiment) if kind.token_rows else None
    return LoadedModel(config, params, entropy_params, tokenizer)


def patching_model(experiment, entropy_path: str | None, run: str) -> tuple[ModelConfig, dict | None]:
    """The config of a run's model as a standalone one: patching with the rule and threshold the run
    trained with (`ModelKind.with_patching`; unchanged for a model of plain rows), and its entropy
    LM's parameters when that rule is entropy patching.

    Args:
      experiment: the run's `ExperimentConfig`.
      entropy_path: the entropy LM (anything `load_entropy_lm` reads); by default the model named
        by the manifest of the entropy pass the run trained on, if still there.
      run: the run's name in error messages.

    Raises:
      CheckpointError: an entropy-patched run whose entropy LM is not found.
    """
    kind = model_kind(experiment.model)
    if kind.patching is None:
        return experiment.model, None
    patching = experiment.data.patching
    entropy_config, entropy_params = None, None
    if patching.mode == "entropy":
        entropy_path = entropy_path or _pass_entropy_model(experiment.data.source)
        if entropy_path is None:
            raise CheckpointError(
                f"{run} was trained with entropy patching: name its entropy LM (--entropy-checkpoint DIR)"
            )
        entropy_config, entropy_params = load_entropy_lm(entropy_path)
    return kind.with_patching(patching, entropy_config), entropy_params


def per_layer(experiment, params: Any) -> Any:
    """Training parameters in the per-layer layout (unstacking the stacks a run scans)."""
    model = experiment.model
    return unstack_layers(params, model_kind(model).scan_layout(resolve_scan(experiment.train.scan, model)))


def load_entropy_lm(path: str) -> tuple[EntropyLMConfig, dict]:
    """(config, params) of an entropy LM: a training run of one, or a model directory holding one
    (`loading.load_entropy_dir`)."""
    if not is_training_run(path):
        return load_entropy_dir(path)
    experiment, params = read_run(path)
    kind = model_kind(experiment.model)
    if not kind.is_patcher:
        raise CheckpointError(f"{path} trained {kind.description}, not an entropy LM")
    return experiment.model, params
