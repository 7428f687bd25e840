"""`blt-jax params`: Parameter counts of an experiment config, split by sub-model (no allocation)."""

from __future__ import annotations

import argparse

from blt_jax.cli import common

NAME = "params"
HELP = "parameter counts of an experiment config"


def add_arguments(p: argparse.ArgumentParser) -> None:
    common.add_config_arg(p, "experiment file[:arg]", required=True)


def run(args: argparse.Namespace) -> int:
    config = common.model_config(args.config, args.overrides)
    print(f"{args.config}: {type(config).__name__}")
    common.print_counts(config)
    return 0
