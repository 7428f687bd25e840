"""lm-evaluation-harness tasks scored while a BLT trains (an experiment's `lm_eval` section).

    config.lm_eval = ml_collections.ConfigDict(dict(tasks="arc_easy", noise="none,drop", limit=200))

`blt-jax train` builds the evaluator before training starts, so an unknown task or noising, or a
missing `eval` extra, fails in one line first. Every `lm_eval.every` steps (0: with bits per byte)
and after the last step, the training parameters are brought to the host and scored by `BltLM`
(the one `blt-jax lm-eval` uses: same requests, same numbers); its programs are compiled once and
reused, only the parameters change. With several processes, each gathers the parameters and scores
the same requests (deterministic), and process 0 writes the scores: no process waits on another.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import jax
import numpy as np

from blt_jax.config import ConfigError
from blt_jax.evals import load_harness
from blt_jax.evals.noise import noise_list
from blt_jax.loading import CheckpointError

logger = logging.getLogger("blt_jax.evals")


def scalar_metrics(results: dict) -> dict[str, float]:
    """lm-eval's results flattened to scalars named `lm_eval/<task>/<metric>`, and
    `lm_eval/<task>/<noise>/<metric>` under a noising (`harness.noised_name`'s "task@noise": TensorBoard
    tags allow no "@"): its "metric,filter" entries, without stderrs, and the filter dropped
    ("acc,none" -> "acc")."""
    out = {}
    for name, values in results.get("results", {}).items():
        task = name.replace("@", "/")
        for key, value in values.items():
            metric, comma, _ = key.partition(",")
            if not comma or metric.endswith("_stderr") or not isinstance(value, (int, float)):
                continue
            out[f"lm_eval/{task}/{metric}"] = float(value)
    return out


def host_params(params: Any) -> Any:
    """Global training arrays as host numpy arrays (gathered from every process when sharded over
    several)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return multihost_utils.process_allgather(params, tiled=True)
    return jax.device_get(params)


class LmEvalEvaluator:
    """Scores the configured tasks (and noisings) on the parameters of a training step.

    Attributes:
      every: steps between runs (0: with bits per byte).
    """

    def __init__(self, experiment, lm, tasks: list[str], noises: list, manager):
        self.experiment = experiment
        self.every = experiment.lm_eval.every
        self.lm = lm
        self.tasks = tasks
        self.noises = noises
        self.manager = manager

    def __call__(self, step: int, params: Any) -> dict[str, float]:
        from blt_jax.loading.runs import per_layer

        start = time.perf_counter()
        self.lm.model.params = jax.device_put(per_layer(self.experiment, host_params(params)))
        config = self.experiment.lm_eval
        fewshot = None if config.num_fewshot < 0 else config.num_fewshot
        results = load_harness().run_noised(
            self.lm, self.tasks, self.noises, fewshot, config.limit or None, self.manager
        )
        scores = scalar_metrics(results)
        logger.info(
            "step %d: lm-eval %s (%.1fs)",
            step,
            ", ".join(f"{k.removeprefix('lm_eval/')} {v:.4f}" for k, v in scores.items()),
            time.perf_counter() - start,
        )
        return scores


def evaluators_for(experiment) -> list[LmEvalEvaluator]:
    """The evaluators an experiment asks for: one for its `lm_eval` tasks, or none.

    Raises:
      MissingDependency: lm-eval is not installed.
      InputError: an unknown task or noising.
      ConfigError: an entropy-patched run whose entropy LM is not found (`lm_eval.entropy_model`).
    """
    config = experiment.lm_eval
    if config is None or not config.task_names:
        return []
    lm_eval_backend = load_harness()
    from blt_jax.api import BLTModel
    from blt_jax.loading import runs
    from blt_jax.params import abstract_params

    noises = noise_list(config.noise or None)
    manager = lm_eval_backend.task_manager(
        config.task_names, config.include_path or None, include_flag="lm_eval.include_path"
    )
    try:
        model_config, entropy_params = runs.patching_model(experiment, config.entropy_model or None, "this run")
    except CheckpointError:
        if config.entropy_model or experiment.data.patching.mode != "entropy":
            raise
        raise ConfigError(
            "lm_eval.entropy_model",
            "the run patches by entropy and its entropy pass names no entropy "
            "LM that is still there: name one (a training run or model directory)",
        ) from None
    # Placeholder parameters of the right shapes: every run replaces them with the step's.
    placeholder = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), abstract_params(model_config))
    model = BLTModel(model_config, placeholder, entropy_params, experiment.run)  # attention as the run's
    lm = lm_eval_backend.BltLM(
        model, batch_size=config.batch_size, max_length=config.max_length, progress=False, noise_seed=config.noise_seed
    )
    return [LmEvalEvaluator(experiment, lm, config.task_names, noises, manager)]
