"""`blt-jax aot`: Compile the train step for a TPU topology from this host: memory, FLOPs, fits or not."""

from __future__ import annotations

import argparse
import json
import sys

from blt_jax.cli import common

NAME = "aot"
HELP = "compile the train step for a TPU topology (no TPU needed): memory and FLOPs"


def add_arguments(p: argparse.ArgumentParser) -> None:
    common.add_config_arg(p, "experiment file[:arg], e.g. experiments/blt_1b.py:v5p-32", required=True)
    p.add_argument("--topology", required=True, help="libtpu name (v5p:2x2x2, v5e:4x4) or Cloud name (v5p-128)")
    p.add_argument(
        "--program",
        choices=("train", "generate", "entropy"),
        default="train",
        help="the train step (default), one cached generation step, or the entropy pass",
    )
    p.add_argument("--require-fit", action="store_true", help="exit 1 when the program does not fit in HBM")


def run(args: argparse.Namespace) -> int:
    from blt_jax.aot import aot_entropy_pass, aot_generation_step, aot_train_step, require_fit
    from blt_jax.experiment import load_experiment
    from blt_jax.experiment.config import experiment_from_dict

    experiment = experiment_from_dict(load_experiment(args.config, args.overrides))
    compile_fn = {"train": aot_train_step, "generate": aot_generation_step, "entropy": aot_entropy_pass}[args.program]
    report = compile_fn(experiment, args.topology)
    report["config"] = args.config
    print(json.dumps(report, indent=2))
    if args.require_fit:
        try:
            require_fit(report)
        except ValueError as e:
            print(f"blt-jax aot: {e}", file=sys.stderr)
            return 1
    return 0
