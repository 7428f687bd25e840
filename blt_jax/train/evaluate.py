"""Bits per byte of a trained run (`blt-jax eval`): its parameters on one pass over held-out data.

The run is read from its checkpoint alone (`runs.read_run`), so its corpus need not exist. The
experiment evaluated is the run's saved one, or an experiment file whose model matches the run's
parameters, with `--config.a.b=v` overrides applied to either (the dialect of every command).
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Sequence
from typing import Any

import ml_collections

from blt_jax.data.pipeline import build_dataset, load_tokenizer
from blt_jax.errors import InputError
from blt_jax.experiment import apply_override, load_experiment
from blt_jax.experiment.config import ExperimentConfig, experiment_from_dict, experiment_to_dict
from blt_jax.loading import check_tree, runs
from blt_jax.parallel import MeshConfig, make_mesh
from blt_jax.params import abstract_params
from blt_jax.train.programs import TrainPrograms


def run_experiment(saved: ExperimentConfig, spec: str | None = None, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """The experiment to evaluate a run under: `spec` (an experiment file[:arg]) or the run's `saved`
    one, with `a.b=v` overrides applied."""
    if spec is not None:
        return experiment_from_dict(load_experiment(spec, overrides))
    raw = ml_collections.ConfigDict(experiment_to_dict(saved))
    for item in overrides:
        apply_override(raw, item)
    return experiment_from_dict(raw)


def evaluate_run(
    run: str,
    spec: str | None = None,
    overrides: Sequence[str] = (),
    source: str | None = None,
    batch_size: int = 0,
    max_batches: int = 0,
) -> dict[str, Any]:
    """One pass over a run's evaluation data (its `eval` section, else its `data`).

    Args:
      run: a training workdir (local, `~` or gs://).
      spec / overrides: the experiment, as `run_experiment` takes them.
      source: another corpus to evaluate on.
      batch_size: rows per batch (0: the experiment's).
      max_batches: at most this many batches (0: the whole pass).

    Returns:
      `TrainPrograms.evaluate`'s sums (eval_bpb, eval_loss, eval_bytes, eval_mean_patch_len), with `source`
      (the corpus read) and `seconds` (of the evaluation proper).
    """
    saved, params = runs.read_run(run)
    experiment = run_experiment(saved, spec, overrides)
    check_tree(params, abstract_params(experiment.model), run)
    data = experiment.eval or experiment.data
    # One pass in corpus order, as one stream: every document is read, and only the last partial
    # batch is left out (S shards would each leave a tail).
    changes: dict[str, Any] = {"num_epochs": 1, "shuffle": False, "shards": 1}
    if source:
        changes["source"] = source
    if batch_size:
        changes["batch_size"] = batch_size
    data = dataclasses.replace(data, **changes)
    load_tokenizer(data, experiment.model.vocab_size)  # a missing or too large tokenizer fails before compiling
    programs = TrainPrograms(dataclasses.replace(experiment, data=data), make_mesh(MeshConfig(1, -1, 1)))
    batches = list(itertools.islice(build_dataset(data), max_batches or None))
    if not batches:  # a score over nothing would print as 0 bits per byte
        raise InputError(
            f"{data.source}: too little text for one evaluation batch ({data.batch_size} rows of "
            f"{data.row_bytes} bytes, packed); give more text, or a smaller --batch-size"
        )
    start = time.perf_counter()
    result = programs.evaluate(programs.train_layout(params), batches)
    return {**result, "source": data.source, "seconds": time.perf_counter() - start}
