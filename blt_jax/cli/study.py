"""`blt-jax study`: The paper's comparisons at matched training compute (BLT patchings, no hash n-grams, a byte
transformer) on any corpus, with seeds; a report, a table and two figures; resumable.
"""

from __future__ import annotations

import argparse
import sys

from blt_jax.cli import common
from blt_jax.errors import InputError

NAME = "study"
HELP = "the paper's comparisons at matched training compute on any corpus, with seeds"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--corpus",
        default="default",
        help="a text directory, file or glob (also JSONL / Parquet), or `default` (Python's standard library)",
    )
    p.add_argument("--workdir", default="runs/study", help="where everything goes; a re-run resumes it")
    p.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="wall-clock budget on a 2-core CPU (default 60; sets the steps, faster machines finish early)",
    )
    p.add_argument(
        "--arms",
        default="all",
        help="comma-separated arms (default: all; a wrong name lists them); the BLT patched by entropy, "
        "which every arm's compute is matched to, is always trained",
    )
    p.add_argument("--seeds", type=int, default=None, help="seeds per arm (default 2)")
    p.add_argument("--scale", choices=("small", "tiny"), default="small", help="model sizes (tiny: CI and notebooks)")
    p.add_argument(
        "--target-patch-length",
        type=float,
        default=4.5,
        help="mean patch length of the entropy threshold, and the static patch size (rounded)",
    )
    p.add_argument(
        "--patch-sizes",
        default="",
        help="patch-size scaling: more mean patch lengths (e.g. 6,8), a BLT arm each whose latent "
        "transformer is resized to the same FLOPs per byte",
    )
    p.add_argument(
        "--bpe-vocab",
        type=int,
        default=None,
        help="vocabulary of the bpe_lm arm's tokenizer, trained on the corpus (default 4096; 512 at --scale tiny)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from blt_jax import paths
    from blt_jax.stages import StageInterrupted
    from blt_jax.study import run_study
    from blt_jax.study.plan import parse_arms, parse_sizes

    if paths.is_uri(args.workdir):
        raise InputError(f"--workdir {args.workdir}: the study runs on this machine; give a local directory")

    given = {
        k: v
        for k, v in (("minutes", args.minutes), ("seeds", args.seeds), ("bpe_vocab", args.bpe_vocab))
        if v is not None
    }
    try:
        with common.sigterm_interrupts():
            run_study(
                args.workdir,
                args.corpus,
                scale=args.scale,
                arms=parse_arms(args.arms),
                target_patch_length=args.target_patch_length,
                patch_sizes=parse_sizes(args.patch_sizes),
                progress=not args.no_progress,
                **given,
            )
    except StageInterrupted as e:
        print(f"blt-jax study: {e}", file=sys.stderr)
        return 130  # the shell's code for "interrupted"
    except KeyboardInterrupt:
        print(
            "blt-jax study: stopped; run the same command again to resume (finished stages and runs are kept)",
            file=sys.stderr,
        )
        return 130
    return 0
