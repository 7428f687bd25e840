"""`blt-jax calibrate`: The entropy threshold that gives a target mean patch length."""

from __future__ import annotations

import argparse

from blt_jax.cli import common
from blt_jax.errors import InputError

NAME = "calibrate"
HELP = "threshold for a target mean patch length"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--entropies", default=None, help="a `blt-jax patch` output directory")
    p.add_argument("--corpus", default=None, help="or a corpus sample, with a model (--checkpoint / --config)")
    common.add_model_args(p)
    p.add_argument("--target", type=float, default=4.5, help="mean patch length in bytes (default 4.5)")
    p.add_argument("--rule", choices=["global", "monotonic", "both"], default="both")
    p.add_argument("--max-patch-length", type=int, default=None)
    p.add_argument("--max-tokens", type=int, default=16_000_000, help="sample size (0 = everything)")
    p.add_argument("--text-field", default="text")
    p.add_argument("--json", default=None, help="also write the results as JSON")


def run(args: argparse.Namespace) -> int:
    from blt_jax.patching.calibrate import RULES, calibrate
    from blt_jax.patching.store import sample_stored

    if args.entropies:
        entropies = sample_stored(args.entropies, args.max_tokens)
    elif args.corpus:
        from blt_jax.data.sources import iter_documents
        from blt_jax.patching.stream import EntropyStreamer
        from blt_jax.tokenizer import encode

        config, params, _ = common.entropy_model(args)
        docs, tokens = [], 0
        for doc in iter_documents(args.corpus, args.text_field):
            docs.append(encode(doc.data))
            tokens += len(docs[-1])
            if args.max_tokens and tokens >= args.max_tokens:
                break
        entropies = EntropyStreamer(config, params)(docs)
    else:
        raise InputError("give stored entropies (--entropies DIR from `blt-jax patch`) or --corpus with a model")
    rules = RULES if args.rule == "both" else (args.rule,)
    results = [calibrate(entropies, args.target, rule, args.max_patch_length) for rule in rules]
    for result in results:
        print(result.summary())
    if args.json:
        import dataclasses

        from blt_jax import paths

        paths.write_json(args.json, [dataclasses.asdict(r) for r in results])
        print(f"wrote {args.json}")
    return 0
