"""`blt-jax serve`: An OpenAI-compatible HTTP server (completions) with continuous batching (the serve extra)."""

from __future__ import annotations

import argparse

from blt_jax.errors import InputError

NAME = "serve"
HELP = "an OpenAI-compatible HTTP server (/v1/completions) with continuous batching"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoint",
        required=True,
        help="a BLT, a token LM (a Llama-family Hugging Face directory with its tokenizer.json, or "
        "a BPE run of ours) or a byte LM: a model directory (ours, HF or Meta) or a training "
        "workdir (its newest checkpoint)",
    )
    p.add_argument(
        "--entropy-checkpoint", default=None, help="entropy LM for a training workdir whose patching is by entropy"
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-rows", type=int, default=8, help="decode rows: requests that generate at once")
    p.add_argument("--max-prompt-bytes", type=int, default=2048, help="the longest prompt taken (UTF-8 bytes)")
    p.add_argument("--max-tokens", type=int, default=1024, help="the most bytes one request may generate")
    p.add_argument(
        "--max-queue", type=int, default=64, help="requests that may wait for a row; beyond it the server answers 429"
    )
    p.add_argument("--strict", action="store_true", help="unknown request fields are errors (HTTP 400)")
    p.add_argument("--name", default=None, help="the model's name in the API (default: the checkpoint's name)")
    p.add_argument(
        "--grace-seconds", type=float, default=30.0, help="after SIGTERM, how long running completions may take to end"
    )


def run(args: argparse.Namespace) -> int:
    try:
        from blt_jax.serve import run
    except ImportError as error:
        raise InputError(
            f"blt-jax serve needs the serve extra ({error.name} is missing): "
            'pip install -c constraints.txt -e ".[serve]"'
        ) from None
    return run(
        args.checkpoint,
        args.entropy_checkpoint,
        args.host,
        args.port,
        args.max_rows,
        args.max_prompt_bytes,
        args.max_tokens,
        args.max_queue,
        args.strict,
        args.name,
        args.grace_seconds,
    )
