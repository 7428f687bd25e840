"""`blt-jax export`: A training run or model -> a model directory: ours, or the Hugging Face layout (--format hf)."""

from __future__ import annotations

import argparse

from blt_jax.errors import InputError

NAME = "export"
HELP = "a training run or model -> a self-contained model directory"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "run", help="a training workdir of a BLT, or any model directory from_pretrained reads (local, ~ or gs://)"
    )
    p.add_argument("dest", help="output directory: the BLT, its entropy LM, the patching rule")
    p.add_argument(
        "--format",
        choices=("native", "hf"),
        default="native",
        help="native: ours (from_pretrained); hf: transformers' BltForCausalLM.from_pretrained",
    )
    p.add_argument(
        "--entropy-checkpoint",
        default=None,
        help="the entropy LM of a run patched by entropy (default: the one its entropy pass names)",
    )


def run(args: argparse.Namespace) -> int:
    from blt_jax import paths
    from blt_jax.api import from_pretrained

    if paths.exists(args.dest) and (not paths.isdir(args.dest) or paths.listdir(args.dest)):
        # Files of another model left beside the new ones (an entropy LM, say) would be loaded with it.
        raise InputError(f"{args.dest} exists and is not empty; choose a new directory or remove it")
    model = from_pretrained(args.run, entropy_path=args.entropy_checkpoint)
    model.save(args.dest, format=args.format)
    layout = {"native": "our format", "hf": "Hugging Face layout"}[args.format]
    print(f"wrote {args.dest} ({layout}): {model.describe()}")
    return 0
