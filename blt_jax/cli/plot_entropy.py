"""`blt-jax plot-entropy`: The entropy figure of a text (entropies, threshold, patches)."""

from __future__ import annotations

import argparse

from blt_jax.cli import common
from blt_jax.errors import InputError

NAME = "plot-entropy"
HELP = "entropy figure of a text"


def add_arguments(p: argparse.ArgumentParser) -> None:
    common.add_model_args(p)
    p.add_argument("--text", default=None)
    p.add_argument("--text-file", default=None)
    p.add_argument("--threshold", type=float, default=None, help="default: the checkpoint's, else the released one")
    p.add_argument("--title", default=None)
    p.add_argument("--out", required=True, help="output image (.png, .pdf, .svg)")


def run(args: argparse.Namespace) -> int:
    from blt_jax import paths
    from blt_jax.config import RELEASED_THRESHOLD
    from blt_jax.patching.plot import text_entropy_figure
    from blt_jax.tokenizer import encode

    text = args.text if args.text is not None else paths.read_bytes(args.text_file)
    if not text:
        raise InputError("nothing to plot: give --text or --text-file with some content")
    config, params, description = common.entropy_model(args)
    tokens = encode(text)
    threshold = args.threshold
    if threshold is None:
        threshold = RELEASED_THRESHOLD if args.checkpoint is None else _checkpoint_threshold(args.checkpoint)
    text_entropy_figure(args.out, config, params, tokens, threshold, title=args.title or description)
    print(f"wrote {args.out} ({len(tokens)} bytes, threshold {threshold:.4f})")
    return 0


def _checkpoint_threshold(path: str) -> float:
    """The patching threshold of a BLT checkpoint, or the released one."""
    from blt_jax.api import from_pretrained
    from blt_jax.config import RELEASED_THRESHOLD

    try:
        return from_pretrained(path).config.patching.threshold
    except (FileNotFoundError, ValueError):
        return RELEASED_THRESHOLD
