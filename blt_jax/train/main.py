"""`blt-jax train`: an experiment file with `--config.a.b=v` overrides, trained in a workdir.

blt-jax train --config experiments/tiny.py[:arg] --workdir DIR [--config.train.steps=50 ...]
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any


def check_corpus(source: str, text_field: str) -> None:
    """Fails at once, in one line, on a corpus that is missing or has no readable document (before
    any compilation or joining other hosts); a corpus with some bad files passes (training skips and
    reports them).

    Raises:
      SourceError: naming the corpus, or its first unreadable file.
    """
    from blt_jax import paths
    from blt_jax.data.sources import DEFAULT_CORPUS, SourceError, list_files, open_corpus
    from blt_jax.patching.store import MANIFEST

    if source == DEFAULT_CORPUS or source.startswith(DEFAULT_CORPUS + ":"):
        return
    if paths.exists(paths.join(source, MANIFEST)):  # stored entropies: opening reads only the manifest
        open_corpus(source, text_field)
        return
    data_log = logging.getLogger("blt_jax.data")
    level = data_log.level
    data_log.setLevel(logging.ERROR)  # skipped files are reported when training reads them
    try:
        # Files one at a time until one holds a document: usually the first (a large corpus is not
        # indexed twice); a corpus with no readable file at all names its first bad one.
        for path in list_files(source):
            if len(open_corpus(path, text_field)):
                return
    finally:
        data_log.setLevel(level)
    for path in list_files(source):
        open_corpus(path, text_field, strict=True)  # raises the first bad file's error
    raise SourceError(f"{source}: no readable documents")


def train_from_file(
    spec: str,
    overrides: list[str],
    workdir: str,
    progress: bool = True,
    evaluators_for: Callable[[Any], Sequence[Any]] | None = None,
) -> dict:
    """Loads and validates the experiment, joins the other hosts, trains (or resumes) in `workdir`.

    Args:
      evaluators_for: builds the run's extra evaluators (`loop.Evaluator`) from its experiment
        config, before training starts (so their bad input fails first); None: none.

    Raises:
      UserError (NotFound, InputError, ConfigError, SourceError): bad input, before any training.
    """
    from blt_jax.experiment import load_experiment
    from blt_jax.experiment.config import experiment_from_dict
    from blt_jax.parallel import maybe_initialize_distributed
    from blt_jax.train.loop import resolve_experiment_paths, train_and_evaluate

    experiment = experiment_from_dict(load_experiment(spec, overrides))
    for data in (experiment.data, experiment.eval):
        if data is not None and not data.source.startswith("hf:"):
            check_corpus(data.source, data.text_field)
    maybe_initialize_distributed()
    evaluators = evaluators_for(resolve_experiment_paths(experiment)) if evaluators_for is not None else ()
    return train_and_evaluate(experiment, workdir, progress=progress, evaluators=evaluators)
