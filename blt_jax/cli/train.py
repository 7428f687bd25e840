"""`blt-jax train`: Train a BLT or an entropy LM (an experiment file with --config.a.b=v overrides)."""

from __future__ import annotations

import argparse

from blt_jax.cli import common

NAME = "train"
HELP = "train a BLT or an entropy LM: --config FILE[:arg] --workdir DIR [--config.train.steps=N ...]"


def add_arguments(p: argparse.ArgumentParser) -> None:
    common.add_config_arg(p, "experiment file[:arg]", required=True)
    p.add_argument(
        "--workdir", required=True, help="run directory: local, ~ or gs:// (resumed if it holds checkpoints)"
    )
    p.add_argument("--progress", dest="progress", action="store_true", default=True, help=argparse.SUPPRESS)
    p.add_argument("--no-progress", "--noprogress", dest="progress", action="store_false", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from blt_jax.evals.during_training import evaluators_for
    from blt_jax.train.main import train_from_file

    summary = train_from_file(
        args.config, args.overrides, args.workdir, progress=args.progress, evaluators_for=evaluators_for
    )
    metrics, evaluation = summary["metrics"], summary["eval"]
    if metrics:
        rate = (
            ""
            if metrics["bytes_per_s"] is None
            else (f", {metrics['bytes_per_s']:,.0f} bytes/s, MFU {100 * metrics['mfu']:.1f}%")
        )
        print(
            f"step {metrics['step']}: loss {metrics['loss']:.4f}, bpb {metrics['bpb']:.4f}, "
            f"mean patch {metrics['mean_patch_len']:.2f}{rate}"
        )
    if evaluation:
        print(
            f"eval at step {evaluation['step']}: bpb {evaluation['eval_bpb']:.4f}, "
            f"mean patch {evaluation['eval_mean_patch_len']:.2f}"
        )
    if summary.get("extra_eval"):
        print(
            "lm-eval at step {}: {}".format(
                summary["step"],
                ", ".join(f"{k.removeprefix('lm_eval/')} {v:.4f}" for k, v in summary["extra_eval"].items()),
            )
        )
    if summary["preempted"]:
        print(
            f"stopped by {summary.get('stop_signal') or 'SIGTERM'} at step {summary['step']}; checkpoint saved in "
            f"{args.workdir}; the same command resumes"
        )
    return 0
