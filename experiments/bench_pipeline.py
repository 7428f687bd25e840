"""Input pipeline throughput vs what a `bench_small` training step consumes, on this machine.

Prints (1) the pipeline's bytes/s on the default corpus (Python's standard library, space patching,
batches of 8 x 1024 bytes, 256 patches per row) and (2) the bytes/s of a `bench_small` forward +
backward pass (the bulk of a training step) on the same shapes, and their ratio; the pipeline must
deliver at least 10x what the step consumes. Medians of --runs measurements.

  python experiments/bench_pipeline.py [--runs 5] [--batches 200]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp

from blt_jax.config import PatchingConfig
from blt_jax.data.pipeline import DataConfig, build_dataset
from blt_jax.experiment import load_experiment
from blt_jax.models import model_config_from_dict
from blt_jax.nn.blt import BLT
from blt_jax.params import init_params

HERE = os.path.dirname(os.path.abspath(__file__))


def pipeline_rate(config: DataConfig, batches: int) -> float:
    it = iter(build_dataset(config))
    next(it)  # opening the corpus and the first reads are not steady state
    start, real = time.perf_counter(), 0
    for _ in range(batches):
        real += int(next(it)["mask"].sum())
    return real / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--batches", type=int, default=200)
    args = parser.parse_args()

    data = DataConfig(
        source="default", batch_size=8, row_bytes=1024, row_patches=256, patching=PatchingConfig(mode="space"), seed=0
    )
    rates = [pipeline_rate(data, args.batches) for _ in range(args.runs)]

    model = model_config_from_dict(load_experiment(os.path.join(HERE, "bench_small.py")).model)
    params = init_params(model, jax.random.key(0))
    batch = next(iter(build_dataset(data)))
    module = BLT(model)

    def loss(p, b):
        logits = module.apply({"params": p}, b["tokens"], b["patch_lengths"])
        logp = jax.nn.log_softmax(logits)
        nll = -jnp.take_along_axis(logp, b["targets"][..., None], axis=-1)[..., 0]
        return jnp.sum(nll * b["mask"]) / jnp.sum(b["mask"])

    grad = jax.jit(jax.value_and_grad(loss))
    jax.block_until_ready(grad(params, batch))
    times = []
    for _ in range(args.runs):
        start = time.perf_counter()
        jax.block_until_ready(grad(params, batch))
        times.append(time.perf_counter() - start)
    step_rate = float(batch["mask"].sum()) / statistics.median(times)
    pipe = statistics.median(rates)
    print(
        f"pipeline (default corpus, space patching, 8 x 1024 bytes): {pipe:,.0f} bytes/s "
        f"(runs: {', '.join(f'{r:,.0f}' for r in rates)})"
    )
    print(f"bench_small forward + backward: {step_rate:,.0f} bytes/s (median of {args.runs})")
    print(f"pipeline / step: {pipe / step_rate:.0f}x (target >= 10x)")


if __name__ == "__main__":
    main()
