"""The `blt-jax` command (also `python -m blt_jax`).

Subcommands:
  smoke     build a model from an experiment config, patch a text, run the forward pass, report
  params    parameter counts of an experiment config, split by sub-model (no allocation)
  convert   read a checkpoint in any supported layout and write it in ours
"""

from __future__ import annotations

import argparse
import os
import sys
import time

DEFAULT_SMOKE_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments", "tiny.py")
SMOKE_TEXT = "Daenerys Targaryen is in Game of Thrones, a fantasy epic by George R.R. Martin."


def _model_config(spec: str):
    from blt_jax.config import model_config_from_dict
    from blt_jax.experiment import load_experiment

    return model_config_from_dict(load_experiment(spec).model, "model")


def _print_counts(config) -> None:
    from blt_jax.config import BLTConfig
    from blt_jax.params import abstract_params, count, count_by_group

    abstract = abstract_params(config)
    rows = sorted(count_by_group(abstract).items()) + [("total", count(abstract))]
    if isinstance(config, BLTConfig) and config.entropy_model is not None:
        rows.append(("entropy model (separate)", count(abstract_params(config.entropy_model))))
    width = max(len(name) for name, _ in rows)
    for name, n in rows:
        print(f"  {name:<{width}}  {n:>15,}")


def cmd_params(args: argparse.Namespace) -> int:
    config = _model_config(args.config)
    print(f"{args.config}: {type(config).__name__}")
    _print_counts(config)
    return 0


def cmd_smoke(args: argparse.Namespace) -> int:
    import jax
    import numpy as np

    from blt_jax import tokenizer
    from blt_jax.api import BLTModel
    from blt_jax.config import BLTConfig

    config = _model_config(args.config)
    if not isinstance(config, BLTConfig):
        print(f"error: {args.config} describes a {type(config).__name__}, smoke needs a BLT", file=sys.stderr)
        return 2
    print(f"jax {jax.__version__} on {jax.device_count()} {jax.devices()[0].platform} device(s)")
    print(f"model {args.config}:")
    _print_counts(config)
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


def cmd_convert(args: argparse.Namespace) -> int:
    from blt_jax.api import from_pretrained

    model = from_pretrained(args.source, entropy_path=args.entropy)
    model.save(args.dest)
    print(f"wrote {args.dest} ({type(model.config).__name__}, entropy LM: {model.entropy_params is not None})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="blt-jax", description="Byte Latent Transformer in JAX/Flax")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("smoke", help="build a small random model, patch a text and run it")
    p.add_argument("--config", default=DEFAULT_SMOKE_CONFIG, help="experiment file[:arg] (default: experiments/tiny.py)")
    p.add_argument("--text", default=SMOKE_TEXT)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=cmd_smoke)

    p = sub.add_parser("params", help="parameter counts of an experiment config")
    p.add_argument("--config", required=True, help="experiment file[:arg]")
    p.set_defaults(fn=cmd_params)

    p = sub.add_parser("convert", help="convert an HF or Meta checkpoint to our format")
    p.add_argument("source", help="directory: HF (config.json + model.safetensors) or Meta (params.json + consolidated.pth)")
    p.add_argument("dest", help="output directory")
    p.add_argument("--entropy", default=None, help="Meta layout: entropy model directory")
    p.set_defaults(fn=cmd_convert)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        code = args.fn(args)
    except (FileNotFoundError, ValueError, ImportError) as e:
        # Bad input (missing file, invalid config, mismatched weights): one clear line, no traceback.
        print(f"blt-jax {args.command}: error: {e}", file=sys.stderr)
        code = 2
    sys.exit(code)
