"""`blt-jax convert`: Read a checkpoint in any supported layout and write it in ours."""

from __future__ import annotations

import argparse

NAME = "convert"
HELP = "convert an HF or Meta checkpoint (a BLT, or a Llama-family token LM) to our format"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "source",
        help="directory: HF (config.json + model.safetensors: BltForCausalLM, or LlamaForCausalLM "
        "and its family with tokenizer.json), Meta (params.json + consolidated.pth), or a token LM run of ours",
    )
    p.add_argument("dest", help="output directory")
    p.add_argument("--entropy", default=None, help="Meta layout: entropy model directory")


def run(args: argparse.Namespace) -> int:
    from blt_jax.api import from_pretrained

    model = from_pretrained(args.source, entropy_path=args.entropy)
    model.save(args.dest)
    print(f"wrote {args.dest} ({model.describe()})")
    return 0
