"""`blt-jax eval`: Bits per byte of a trained run (its corpus is not needed with --data)."""

from __future__ import annotations

import argparse
import time

from blt_jax.cli import common

NAME = "eval"
HELP = "bits per byte of a trained checkpoint"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoint", required=True, help="a training workdir (local, ~ or gs://; its corpus is not needed)"
    )
    p.add_argument("--data", default=None, help="corpus to evaluate on (default: the run's eval data)")
    p.add_argument("--batches", type=int, default=0, help="at most this many batches (0 = one pass)")
    p.add_argument("--batch-size", type=int, default=0)
    common.add_config_arg(
        p, "experiment file[:arg] to evaluate under (default: the run's saved one, overridable too)", default=None
    )


def run(args: argparse.Namespace) -> int:
    from blt_jax.train.evaluate import evaluate_run

    start = time.perf_counter()
    result = evaluate_run(args.checkpoint, args.config, args.overrides, args.data, args.batch_size, args.batches)
    print(
        f"{args.checkpoint}: bits per byte {result['eval_bpb']:.4f} (loss {result['eval_loss']:.4f} nats) over "
        f"{int(result['eval_bytes']):,} bytes of {result['source']}; mean patch length "
        f"{result['eval_mean_patch_len']:.2f}; {result['eval_bytes'] / result['seconds']:,.0f} bytes/s "
        f"({time.perf_counter() - start:.1f}s total)"
    )
    return 0
