"""`blt-jax lm-eval`: Lm-evaluation-harness tasks on a training run or model (the eval extra)."""

from __future__ import annotations

import argparse

from blt_jax.errors import InputError

NAME = "lm-eval"
HELP = "lm-evaluation-harness tasks on a model (needs the eval extra)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="a training run or model directory (local, ~ or gs://)")
    p.add_argument("--tasks", required=True, help="comma-separated task names")
    p.add_argument("--entropy-checkpoint", default=None, help="entropy LM of a run patched by entropy")
    p.add_argument("--num-fewshot", type=int, default=None)
    p.add_argument("--limit", type=float, default=None, help="at most this many items per task (< 1: a fraction)")
    p.add_argument("--batch-size", type=int, default=8, help="rows per forward pass")
    p.add_argument("--max-length", type=int, default=2048, help="bytes of text per row (older context is cut)")
    p.add_argument("--include-path", default=None, help="a directory of more task YAMLs")
    p.add_argument(
        "--noise",
        default=None,
        help="run under the paper's input noisings: comma-separated from antspeak, drop, randomcase, "
        "repeat, uppercase, none (clean), or all; results name them task@noise",
    )
    p.add_argument("--noise-seed", type=int, default=0, help="seed of the noisings")
    p.add_argument("--output", default=None, help="write lm-eval's results as JSON here")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from blt_jax import paths
    from blt_jax.evals import load_harness
    from blt_jax.evals.noise import noise_list

    backend = load_harness()
    from lm_eval.utils import make_table

    tasks = [t for t in args.tasks.split(",") if t]
    if not tasks:
        raise InputError("--tasks: name at least one task")
    include = paths.resolve(args.include_path) if args.include_path else None
    noises = noise_list(args.noise)  # bad task or noise names fail before the model loads
    manager = backend.task_manager(tasks, include)
    model = backend.BltLM(
        args.checkpoint,
        entropy=args.entropy_checkpoint,
        batch_size=args.batch_size,
        max_length=args.max_length,
        progress=args.progress,
        noise_seed=args.noise_seed,
    )
    results = backend.run_noised(model, tasks, noises, args.num_fewshot, args.limit, manager)
    print(make_table(results))
    if args.output:
        paths.write_json(args.output, results)
        print(f"wrote {args.output}")
    return 0
