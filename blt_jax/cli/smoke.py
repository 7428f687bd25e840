"""`blt-jax smoke`: Build a model from an experiment config, patch a text, run the forward pass, report."""

from __future__ import annotations

import argparse
import time

from blt_jax.cli import common
from blt_jax.experiment import tiny

NAME = "smoke"
HELP = "build a small random model, patch a text and run it"
TEXT = "Daenerys Targaryen is in Game of Thrones, a fantasy epic by George R.R. Martin."


def add_arguments(p: argparse.ArgumentParser) -> None:
    # The default ships in the package (a wheel install has no experiments/ folder).
    common.add_config_arg(
        p, "experiment file[:arg] (default: the tiny experiment, experiments/tiny.py)", default=tiny.PATH
    )
    p.add_argument("--text", default=TEXT)
    p.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    import jax
    import numpy as np

    from blt_jax import tokenizer
    from blt_jax.api import BLTModel
    from blt_jax.models import require_kind

    config = common.model_config(args.config, args.overrides)
    require_kind(config, "blt", "smoke", source=args.config)
    print(f"jax {jax.__version__} on {jax.device_count()} {jax.devices()[0].platform} device(s)")
    print(f"model {args.config}:")
    common.print_counts(config)
    start = time.perf_counter()
    model = BLTModel.random(config, seed=args.seed)
    tokens = tokenizer.encode(args.text)[None]
    n = tokens.shape[1]
    if model.entropy_params is not None:
        entropies = np.asarray(model.entropies(tokens))[0]
        lengths = np.asarray(model.patch_lengths(tokens))[0]
    else:
        entropies, lengths = None, np.concatenate([[1], np.full(n, 1)])
    logits = np.asarray(model.logits(tokens, lengths[None]))
    elapsed = time.perf_counter() - start
    patches, pos = [], 0
    for length in lengths[lengths > 0]:
        patches.append(tokenizer.render(tokens[0, pos : pos + length]))
        pos += int(length)
    print(f"text: {args.text!r} -> {n} ids")
    if entropies is not None:
        print(f"entropies (random weights, nats): mean {entropies.mean():.3f}, max {entropies.max():.3f}")
    print(f"{len(patches)} patches (threshold {config.patching.threshold:.4f}): {patches}")
    finite = bool(np.isfinite(logits).all())
    print(f"logits {logits.shape} {logits.dtype}, finite: {finite}; total {elapsed:.1f}s incl. compilation")
    return 0 if finite else 1
