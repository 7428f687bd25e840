"""`blt-jax byteify`: A BLT from a pretrained token LM (a Llama-family directory, or ours): stage 1 beside the
frozen teacher, stage 2 end to end, and the same BLT from scratch; a report; resumable.
"""

from __future__ import annotations

import argparse
import os
import sys

from blt_jax.cli import common
from blt_jax.errors import InputError

NAME = "byteify"
HELP = (
    "a BLT from a pretrained token LM (a Llama-family directory, or ours): "
    "stage 1 beside the frozen teacher, stage 2 end to end, and a baseline"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--teacher",
        required=True,
        help="the token LM: a Hugging Face LlamaForCausalLM directory (or Mistral, Qwen2) with tokenizer.json, "
        "a token LM of ours (`blt-jax convert`), or a token LM's training run",
    )
    p.add_argument(
        "--corpus", default="default", help="a text directory, file or glob (also JSONL / Parquet), or `default`"
    )
    p.add_argument(
        "--heldout",
        default=None,
        help="held-out text given apart (e.g. text the teacher never read; `default:validation`); by "
        "default some of the corpus's documents are held out",
    )
    p.add_argument("--workdir", default="runs/byteify", help="where everything goes; a re-run resumes it")
    p.add_argument(
        "--minutes",
        type=float,
        default=30.0,
        help="budget the step counts are planned from, where the options leave them 0 (default 30)",
    )
    p.add_argument("--stages", default="1,2", help="1: stage 1 only; 1,2 (default): both")
    p.add_argument(
        "--scale",
        choices=("small", "tiny"),
        default="small",
        help="the default options' sizes, without --config (tiny: CI and notebooks)",
    )
    common.add_config_arg(p, "options file[:arg] (experiments/byteify.py); --config.a.b=v overrides any option")
    p.add_argument("--no-baseline", action="store_true", help="skip the same BLT trained from scratch")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from blt_jax import paths
    from blt_jax.byteify import default_options, run_byteify
    from blt_jax.experiment import apply_override, load_experiment
    from blt_jax.stages import StageInterrupted

    if paths.is_uri(args.workdir):
        raise InputError(f"--workdir {args.workdir}: byteify runs on this machine; give a local directory")
    if args.config:
        options = load_experiment(args.config, args.overrides)
    else:
        options = default_options(args.scale)
        for item in args.overrides:
            apply_override(options, item)
    try:
        numbers = tuple(int(part) for part in args.stages.split(",") if part.strip())
    except ValueError:
        raise InputError(f"--stages {args.stages}: expected 1, 2 or 1,2") from None

    try:
        with common.sigterm_interrupts():
            report = run_byteify(
                args.workdir,
                args.teacher,
                args.corpus,
                options.to_dict(),
                args.minutes,
                numbers,
                baseline=not args.no_baseline,
                progress=not args.no_progress,
                heldout=args.heldout,
            )
    except StageInterrupted as e:
        print(f"blt-jax byteify: {e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(
            "blt-jax byteify: stopped; run the same command again to resume (finished stages are kept)", file=sys.stderr
        )
        return 130
    print(f"byteified BLT: {report['final_run']} (report: {os.path.join(args.workdir, 'report.md')})")
    return 0
