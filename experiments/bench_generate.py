"""Generation speed, side by side: our cached decoding vs transformers' `BltForCausalLM.generate`.

Both run `bench_small` (local 256 / global 512, k = 2, hash n = 3..8) with a small entropy LM
(d 256, 4 layers, 8 heads, window 512) from the same random weights, greedy, one prompt, on the same
CPU. The reference generates with `use_cache=False` (its documented path: every new byte re-runs its
patcher and the whole model on the full prefix); ours keeps KV caches in every stack and runs the
latent transformer once per patch. Random weights are scaled (x2, entropy LM x3) so distributions
are peaked, and the entropy threshold is set so that patches average about 4.5 bytes on the
generated text. Both generate exactly N bytes (EOS does not stop either).

Timings alternate (ours, reference, ...) and include the prompt's prefill; prints bytes/s, the
median per-pair ratio at each length, and how flat our cost per byte is from 64 to 1024 bytes.

  python experiments/bench_generate.py [--runs 3] [--lengths 64 256 1024] [--reference-lengths 64 256 1024]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time

import jax
import numpy as np

from blt_jax.api import BLTModel
from blt_jax.config import EntropyLMConfig, StackConfig, model_config_from_dict
from blt_jax.experiment import load_experiment
from blt_jax.inference.generate import encode_prompts
from blt_jax.params import init_params

HERE = os.path.dirname(os.path.abspath(__file__))
PROMPT = ("The Byte Latent Transformer reads raw bytes and groups them into patches wherever the next byte "
          "is hard to predict.")
ENTROPY = EntropyLMConfig(StackConfig(dim=256, n_layers=4, n_heads=8, ffn_hidden=768, rope_theta=10000.0, window=512))
MEAN_PATCH = 4.5


def scaled(params, factor):
    return jax.tree_util.tree_map(lambda x: x * factor if x.ndim >= 2 else x, params)


def build_model() -> BLTModel:
    """bench_small + the small entropy LM, scaled random weights, threshold for ~4.5-byte patches."""
    config = model_config_from_dict(load_experiment(os.path.join(HERE, "bench_small.py")).model, "model")
    config = dataclasses.replace(config, entropy_model=ENTROPY)
    key_blt, key_ent = jax.random.split(jax.random.key(0))
    model = BLTModel(config, scaled(init_params(config, key_blt), 2.0), scaled(init_params(ENTROPY, key_ent), 3.0))
    # Entropies of the text the model actually produces: the global rule starts a patch after each
    # byte whose entropy exceeds the threshold, so the (1 - 1/4.5) quantile gives ~4.5-byte patches.
    text = model.generate_tokens(PROMPT, 256, stop_at_eos=False)
    sequence = np.concatenate([encode_prompts([PROMPT])[0], text.tokens[0]])[None]
    threshold = float(np.quantile(np.asarray(model.entropies(sequence)), 1 - 1 / MEAN_PATCH))
    patching = dataclasses.replace(config.patching, threshold=threshold)
    return BLTModel(dataclasses.replace(config, patching=patching), model.params, model.entropy_params)


def reference_model(model: BLTModel):
    import torch
    from transformers import BltConfig, BltForCausalLM

    from blt_jax.convert.hf import export_hf_tensors, hf_config_dict

    hf = BltForCausalLM(BltConfig(**hf_config_dict(model.config))).eval()
    tensors = export_hf_tensors(model.config, jax.device_get(model.params), jax.device_get(model.entropy_params))
    missing, unexpected = hf.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in tensors.items()},
                                             strict=False)
    assert not unexpected and not [m for m in missing if "rotary" not in m], (missing, unexpected)
    return hf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--reference-lengths", type=int, nargs="*", default=[64, 256, 1024],
                        help="lengths to time the reference at (it is quadratic: 1024 takes minutes)")
    args = parser.parse_args()
    import torch

    model = build_model()
    hf = reference_model(model)
    prompt_ids = encode_prompts([PROMPT])[0]
    hf_input = torch.from_numpy(prompt_ids.astype(np.int64))[None]

    def ours(n):
        def run():
            out = model.generate_tokens(PROMPT, n, stop_at_eos=False)
            return out.tokens[0], int(out.starts[0, len(prompt_ids): len(prompt_ids) + n].sum())
        return run

    def reference(n):
        def run():
            with torch.no_grad():
                out = hf.generate(hf_input, max_new_tokens=n, min_new_tokens=n, do_sample=False, use_cache=False)
            return out[0, len(prompt_ids):].numpy()
        return run

    print(f"bench_small + entropy LM (d 256 x 4), greedy, prompt {len(prompt_ids)} bytes; torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), jax {jax.__version__}; threshold {model.config.patching.threshold:.3f}")
    per_byte = {}
    for n in args.lengths:
        run_ours = ours(n)
        tokens, patches = run_ours()  # compile
        ours_times, ref_times = [], []
        with_ref = n in args.reference_lengths
        if with_ref:
            ref_tokens = reference(n)()
            same = int(np.argmax(np.append(tokens != ref_tokens, True)))
        for _ in range(args.runs):
            start = time.perf_counter()
            run_ours()
            ours_times.append(time.perf_counter() - start)
            if with_ref:
                start = time.perf_counter()
                reference(n)()
                ref_times.append(time.perf_counter() - start)
        t_ours = statistics.median(ours_times)
        per_byte[n] = t_ours / n
        line = (f"{n:5d} new bytes: ours {n / t_ours:8.1f} bytes/s ({1e3 * t_ours / n:.2f} ms/byte, "
                f"{n / max(patches, 1):.2f} bytes/patch)")
        if with_ref:
            ratios = [r / o for o, r in zip(ours_times, ref_times)]
            line += (f" | reference {n / statistics.median(ref_times):7.2f} bytes/s | ratio "
                     f"{statistics.median(ratios):6.1f}x (range {min(ratios):.1f}-{max(ratios):.1f}); "
                     f"greedy outputs agree on the first {same} bytes")
        print(line, flush=True)
    if 64 in per_byte and 1024 in per_byte:
        print(f"ours, time per byte at 1024 / at 64: {per_byte[1024] / per_byte[64]:.2f}")


if __name__ == "__main__":
    main()
