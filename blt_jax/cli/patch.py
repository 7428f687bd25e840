"""`blt-jax patch`: The entropy pass: corpus -> per-byte entropies in ArrayRecord shards + manifest."""

from __future__ import annotations

import argparse
import time

from blt_jax.cli import common

NAME = "patch"
HELP = "entropy pass: corpus -> stored per-byte entropies"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--corpus", required=True, help="directory, glob or file (.txt, .jsonl, .parquet, ...)")
    p.add_argument("--out", required=True, help="output directory (resumed if it holds an earlier run)")
    common.add_model_args(p)
    p.add_argument("--docs-per-shard", type=int, default=1024)
    p.add_argument("--chunk", type=int, default=1024, help="bytes per lane per step")
    p.add_argument("--lanes", type=int, default=None, help="rows per step (default 8 per device)")
    p.add_argument("--text-field", default="text", help="JSON field / Parquet column of the text")
    p.add_argument("--strict", action="store_true", help="stop at the first bad input instead of skipping it")
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from blt_jax.data.entropy_pass import PassOptions, run_pass
    from blt_jax.data.sources import list_files
    from blt_jax.parallel import maybe_initialize_distributed

    list_files(args.corpus)  # a wrong path fails before the model is built
    maybe_initialize_distributed()  # several processes share the shards (launch/local_multihost.py, a pod)
    config, params, description = common.entropy_model(args)
    options = PassOptions(
        docs_per_shard=args.docs_per_shard,
        chunk=args.chunk,
        lanes=args.lanes,
        text_field=args.text_field,
        strict=args.strict,
        progress=not args.no_progress,
    )
    start = time.perf_counter()
    manifest = run_pass(args.corpus, args.out, config, params, description, options)
    counts, elapsed = manifest["counts"], time.perf_counter() - start
    print(
        f"wrote {len(manifest['shards'])} shard(s) to {args.out}: {counts['documents']:,} documents, "
        f"{counts['bytes']:,} bytes, mean entropy {manifest['mean_entropy'] or 0:.4f} nats; skipped "
        f"{counts['skipped_empty']} empty and {counts['skipped_bad']} bad item(s); {elapsed:.1f}s"
    )
    return 0
