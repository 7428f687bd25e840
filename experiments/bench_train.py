"""Training step throughput, side by side: ours vs transformers' `BltForCausalLM` (PyTorch, CPU).

Both train `bench_small` (local 256 / global 512, k = 2, hash n = 3..8 x 50,002) from the same weights,
on the same batch: 8 rows x 1024 bytes, patch lengths 1 then alternating 4, 5 (mean 4.5). One step =
forward + backward + global-norm clipping + AdamW. Timed alternately (ours, reference, ...) so the
shared machine's load hits both; prints bytes/s, the median per-pair ratio and our CPU MFU.

  python experiments/bench_train.py [--runs 5] [--grad-accum 4]

Our step splits the 8 rows into --grad-accum micro-batches (exact: gradients are summed); on XLA:CPU
smaller intermediates avoid re-faulting large fresh buffers on every step, so 4 is the default here.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time

import jax
import numpy as np

from blt_jax.experiment import load_experiment
from blt_jax.experiment.config import experiment_from_dict
from blt_jax.metrics.perf import cpu_matmul_peak
from blt_jax.models import model_kind
from blt_jax.parallel import MeshConfig, make_mesh
from blt_jax.train.programs import TrainPrograms

HERE = os.path.dirname(os.path.abspath(__file__))


def bench_batch(batch: int, length: int, pattern=(4, 5)) -> dict:
    """Random bytes with patch lengths 1, 4, 5, 4, 5, ... summing to length + 1."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(4, 260, size=(batch, length + 1)).astype(np.int32)
    tokens[:, 0] = 1
    lengths, total, i = [1], 1, 0
    while total < length + 1:
        step = min(pattern[i % len(pattern)], length + 1 - total)
        lengths.append(step)
        total += step
        i += 1
    return {
        "tokens": tokens[:, :-1],
        "targets": tokens[:, 1:],
        "mask": np.ones((batch, length), bool),
        "patch_lengths": np.tile(np.array(lengths, np.int32), (batch, 1)),
    }


def reference_step(config, params_np, batch, lr):
    """A closure running one HF training step; built from our exported weights."""
    import torch
    from transformers import BltConfig, BltForCausalLM

    from blt_jax.convert.hf import export_hf_tensors, hf_config_dict

    model = BltForCausalLM(BltConfig(**hf_config_dict(config))).train()
    state = {k: torch.from_numpy(np.array(v, copy=True)) for k, v in export_hf_tensors(config, params_np).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and not [m for m in missing if "rotary" not in m], (missing, unexpected)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    tokens = torch.from_numpy(batch["tokens"].astype(np.int64))
    targets = torch.from_numpy(batch["targets"].astype(np.int64))
    lengths = torch.from_numpy(batch["patch_lengths"].astype(np.int64))

    def step():
        optimizer.zero_grad(set_to_none=True)
        logits = model(input_ids=tokens, patch_lengths=lengths, use_cache=False).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        return float(loss)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--grad-accum", type=int, default=4, help="our micro-batches per step (same maths)")
    args = parser.parse_args()
    import torch

    raw = load_experiment(os.path.join(HERE, "bench_small.py"))
    experiment = experiment_from_dict(raw)
    experiment = dataclasses.replace(
        experiment, train=dataclasses.replace(experiment.train, grad_accum=args.grad_accum, warmup_steps=0, steps=1000)
    )
    batch = bench_batch(experiment.data.batch_size, experiment.data.row_bytes)
    programs = TrainPrograms(experiment, make_mesh(MeshConfig(1, 1, 1), jax.devices()[:1]))
    state = programs.init()
    device_batch = programs.global_batch(batch)
    step_ref = reference_step(experiment.model, jax.device_get(state.params), batch, experiment.train.learning_rate)

    holder = {"state": state}

    def ours():
        holder["state"], metrics = programs.step(holder["state"], device_batch)
        jax.block_until_ready(metrics)
        return float(metrics["loss"])

    first_ours, first_ref = ours(), step_ref()  # warm-up (compilation)
    ours_times, ref_times = [], []
    for _ in range(args.runs):
        for fn, out in ((ours, ours_times), (step_ref, ref_times)):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    n_bytes = int(batch["mask"].sum())
    ours_bps, ref_bps = n_bytes / statistics.median(ours_times), n_bytes / statistics.median(ref_times)
    flops = model_kind(experiment.model).training_flops_per_byte(experiment.data.row_bytes, 4.5)
    peak = cpu_matmul_peak()
    ratios = [r / o for o, r in zip(ours_times, ref_times)]
    print(
        f"bench_small train step (fwd + bwd + clip + AdamW), 8 x 1024 bytes, patches 1 then 4/5; "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), jax {jax.__version__}, "
        f"grad_accum {args.grad_accum}"
    )
    print(f"first-step loss: ours {first_ours:.4f}, reference {first_ref:.4f} (same weights and batch)")
    print(f"model FLOPs per byte (training): {flops / 1e6:.1f} M; matmul peak here {peak / 1e9:.0f} GFLOP/s")
    print(
        f"ours      : {ours_bps:8,.0f} bytes/s  (MFU {100 * flops * ours_bps / peak:4.1f}%)  "
        f"median step {statistics.median(ours_times):.2f} s"
    )
    print(
        f"reference : {ref_bps:8,.0f} bytes/s  (MFU {100 * flops * ref_bps / peak:4.1f}%)  "
        f"median step {statistics.median(ref_times):.2f} s"
    )
    print(
        f"ratio ours / reference: {statistics.median(ratios):.2f}x (median of {args.runs} alternating pairs, "
        f"range {min(ratios):.2f}-{max(ratios):.2f})"
    )


if __name__ == "__main__":
    main()
