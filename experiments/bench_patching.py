"""Patching throughput, side by side: our jitted entropy pass vs transformers' `BltPatcher`.

Both run the same random weights (entropy LM d=256, 4 layers, 8 heads, FFN 768, window 512, RoPE theta
10000) on the same CPU, on batches of 8 x 1024 bytes, computing entropies and patch lengths. The two
are timed alternately (ours, reference, ours, ...) so that the load of a shared machine hits both
alike; prints bytes/s of each (medians of --runs), the median of the per-pair ratios, and our model
FLOP utilisation against a matmul peak measured in the same process.

  python experiments/bench_patching.py [--runs 7] [--batch 8] [--length 1024]
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from blt_jax.config import RELEASED_THRESHOLD, EntropyLMConfig, PatchingConfig, StackConfig
from blt_jax.metrics.flops import entropy_lm_forward_flops
from blt_jax.nn.entropy_lm import entropies_fn
from blt_jax.nn.patch_ids import lengths_from_starts
from blt_jax.params import init_params
from blt_jax.patching.rules import patch_starts

CONFIG = EntropyLMConfig(StackConfig(dim=256, n_layers=4, n_heads=8, ffn_hidden=768, rope_theta=10000.0, window=512))
THRESHOLD = RELEASED_THRESHOLD


def timed(fn, runs: int) -> list[float]:
    fn()  # warm-up (compilation, caches)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def timed_pairs(first, second, runs: int) -> tuple[list[float], list[float]]:
    """Alternating timings of two functions (after one warm-up call each)."""
    first(), second()
    a, b = [], []
    for _ in range(runs):
        for fn, out in ((first, a), (second, b)):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return a, b


def matmul_peak(runs: int, size: int = 2048) -> float:
    """Median fp32 GFLOP/s of a jitted size^3 matmul on this machine."""
    a = jnp.ones((size, size), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    times = timed(lambda: f(a).block_until_ready(), runs)
    return 2 * size**3 / statistics.median(times) / 1e9


def hf_patcher(params):
    """transformers' BltPatcher holding exactly our weights."""
    import torch
    from transformers.models.blt.configuration_blt import BltPatcherConfig
    from transformers.models.blt.modeling_blt import BltPatcher

    from blt_jax.convert.hf import hf_name
    from blt_jax.convert.layout import entropy_entries, to_torch

    st = CONFIG.stack
    config = BltPatcherConfig(
        hidden_size=st.dim,
        num_hidden_layers=st.n_layers,
        num_attention_heads=st.n_heads,
        intermediate_size=st.ffn_hidden,
        sliding_window=st.window,
        rope_parameters={"rope_type": "default", "rope_theta": st.rope_theta},
    )
    model = BltPatcher(config).eval()
    state = {}
    for e in entropy_entries(CONFIG):
        value = params
        for key in e.path:
            value = value[key]
        state[hf_name(e.name, patcher=True).removeprefix("model.patcher.")] = torch.from_numpy(
            np.array(to_torch(e.kind, np.asarray(value)), copy=True)
        )
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all("rotary" in k for k in missing), (missing, unexpected)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=1024)
    args = parser.parse_args()
    import torch

    params = init_params(CONFIG, jax.random.key(0))
    tokens = np.random.default_rng(0).integers(4, 260, size=(args.batch, args.length)).astype(np.int32)
    tokens[:, 0] = 1
    patching = PatchingConfig(threshold=THRESHOLD)
    entropies = entropies_fn(CONFIG)

    @jax.jit
    def ours(p, t):
        ent = entropies(p, t)
        return ent, lengths_from_starts(patch_starts(patching, t, ent), t.shape[1] + 1)

    device_tokens = jax.device_put(tokens)
    model = hf_patcher(params)
    torch_tokens = torch.from_numpy(tokens.astype(np.int64))
    with torch.no_grad():
        ref_ent, _, _ = model(torch_tokens, patch_size=4, threshold=THRESHOLD)
        diff = float(np.abs(ref_ent.numpy() - np.asarray(ours(params, device_tokens)[0])).max())

        def reference():
            model(torch_tokens, patch_size=4, threshold=THRESHOLD)

        ours_times, ref_times = timed_pairs(
            lambda: jax.block_until_ready(ours(params, device_tokens)), reference, args.runs
        )

    n_bytes = args.batch * args.length
    ours_bps, ref_bps = n_bytes / statistics.median(ours_times), n_bytes / statistics.median(ref_times)
    flops = args.batch * entropy_lm_forward_flops(CONFIG, args.length)
    peak = matmul_peak(args.runs)
    ours_gflops = flops / statistics.median(ours_times) / 1e9
    ref_gflops = flops / statistics.median(ref_times) / 1e9
    print(
        f"entropy LM d={CONFIG.stack.dim} L={CONFIG.stack.n_layers} H={CONFIG.stack.n_heads} "
        f"F={CONFIG.stack.ffn_hidden} W={CONFIG.stack.window}; batch {args.batch} x {args.length} bytes; "
        f"torch {torch.__version__}, jax {jax.__version__}, {torch.get_num_threads()} torch threads"
    )
    print(f"max |entropy difference| ours vs reference: {diff:.2e}")
    print(f"model FLOPs per batch: {flops / 1e9:.2f} GFLOP; matmul peak here: {peak:.0f} GFLOP/s (jnp.dot 2048^3)")
    print(
        f"ours      : {ours_bps:10,.0f} bytes/s  ({ours_gflops:6.1f} GFLOP/s, MFU {100 * ours_gflops / peak:4.1f}%)"
        f"  median of {args.runs}: {statistics.median(ours_times) * 1e3:.1f} ms"
    )
    print(
        f"reference : {ref_bps:10,.0f} bytes/s  ({ref_gflops:6.1f} GFLOP/s, MFU {100 * ref_gflops / peak:4.1f}%)"
        f"  median of {args.runs}: {statistics.median(ref_times) * 1e3:.1f} ms"
    )
    pair_ratios = [r / o for o, r in zip(ours_times, ref_times)]
    print(
        f"ratio ours / reference: {statistics.median(pair_ratios):.2f}x (median of {args.runs} alternating pairs; "
        f"range {min(pair_ratios):.2f}-{max(pair_ratios):.2f})"
    )


if __name__ == "__main__":
    main()
