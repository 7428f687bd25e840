"""The `blt-jax` command (also `python -m blt_jax`).

Subcommands:
  smoke         build a model from an experiment config, patch a text, run the forward pass, report
  params        parameter counts of an experiment config, split by sub-model (no allocation)
  convert       read a checkpoint in any supported layout and write it in ours
  patch         the entropy pass: corpus -> per-byte entropies in ArrayRecord shards + manifest
  calibrate     the entropy threshold that gives a target mean patch length
  plot-entropy  the entropy figure of a text (entropies, threshold, patches)
  train         train a BLT or an entropy LM (an experiment file with --config.a.b=v overrides)
  eval          bits per byte of a trained run (its corpus is not needed with --data)
  lm-eval       lm-evaluation-harness tasks on a training run or model (the eval extra)
  make-tasks    write lm-eval task files: CUTE character tasks from a word list, cloze from a corpus
  export        a training run or model -> a model directory: ours, or the Hugging Face layout (--format hf)
  generate      generate text after a prompt (cached decoding), streamed to stdout
  serve         an OpenAI-compatible HTTP server (completions) with continuous batching (the serve extra)
  aot           compile the train step for a TPU topology from this host: memory, FLOPs, fits or not
  quickstart    the whole pipeline on the default corpus, resumable
  byteify       a BLT from a pretrained token LM: stage 1 beside the frozen teacher, stage 2 end to end
  study         the paper's comparisons at matched training compute (BLT patchings, no hash n-grams,
                a byte transformer) on any corpus, with seeds; a report, a table and two figures; resumable

Paths may be relative, ~ or gs://. Bad input ends in one line `blt-jax <command>: error: ...` and exit
code 2 (--verbose or BLT_JAX_VERBOSE=1 adds the traceback).

Each command is one module here (`NAME`, `HELP`, `add_arguments(parser)`, `run(args) -> exit code`);
this package only parses and prints: the work is done by the library.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from blt_jax.cli import (
    aot,
    byteify,
    calibrate,
    common,
    convert,
    evaluate,
    export,
    generate,
    lm_eval,
    make_tasks,
    params,
    patch,
    plot_entropy,
    process,
    quickstart,
    serve,
    smoke,
    stderr,
    study,
    train,
)
from blt_jax.errors import InputError

# In the order `blt-jax --help` lists them.
COMMANDS = (
    smoke,
    params,
    convert,
    patch,
    calibrate,
    plot_entropy,
    train,
    export,
    evaluate,
    lm_eval,
    make_tasks,
    generate,
    serve,
    aot,
    quickstart,
    byteify,
    study,
)


def build_parser() -> argparse.ArgumentParser:
    """The `blt-jax` parser: one subcommand per module of COMMANDS."""
    parser = common.Parser(prog="blt-jax", description="Byte Latent Transformer in JAX/Flax")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=common.Parser)
    for command in COMMANDS:
        p = sub.add_parser(command.NAME, help=command.HELP)
        command.add_arguments(p)
        p.set_defaults(fn=command.run)
    return parser


def _verbose(argv: list[str]) -> bool:
    return "--verbose" in argv or os.environ.get("BLT_JAX_VERBOSE", "") not in ("", "0")


def main(argv: list[str] | None = None) -> None:
    """Entry of `blt-jax`: bad input ends in one line on stderr and exit code 2 (`--verbose` or
    BLT_JAX_VERBOSE=1 adds the traceback); bugs keep their traceback."""
    from blt_jax.errors import DiskFull, UserError
    from blt_jax.experiment import split_overrides
    from blt_jax.storage import StorageError

    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = _verbose(argv)
    argv = [a for a in argv if a != "--verbose"]
    command = argv[0] if argv and not argv[0].startswith("-") else "?"
    shared = stderr.share()  # before logging takes the stream
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("blt_jax").setLevel(logging.INFO)
    logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax and grain log every save at INFO
    process.quiet_tpu_probe()
    process.compilation_cache()
    try:
        rest, overrides = split_overrides(argv)
        args = build_parser().parse_args(rest)
        if overrides and not hasattr(args, "overrides"):
            raise InputError(f"--config.{overrides[0]}: `blt-jax {args.command}` takes no config overrides")
        if hasattr(args, "overrides"):
            args.overrides = overrides
        common.resolve_paths(args)
        code = args.fn(args)
    except UserError as e:
        if verbose:
            import traceback

            traceback.print_exc()
        message = "; ".join(line.strip() for line in str(e).splitlines() if line.strip()) or type(e).__name__
        code = 2
        # Background writers (Orbax's, gcsfs's) may still be retrying against the failed store, and
        # would keep the process alive or print tracebacks as the interpreter shuts them down: the
        # line is the last thing written, and the process ends at once.
        background = isinstance(e, (StorageError, DiskFull))
        shared.last_line(f"blt-jax {command}: error: {message}", hold=background)
        if background:
            sys.stdout.flush()
            os._exit(code)
    sys.exit(code)
