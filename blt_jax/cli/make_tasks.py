"""`blt-jax make-tasks`: Write lm-eval task files: CUTE character tasks from a word list, cloze from a corpus."""

from __future__ import annotations

import argparse

NAME = "make-tasks"
HELP = "write lm-eval task files (CUTE from a word list, cloze from a corpus)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "kind",
        choices=["cute", "cloze"],
        help="cute: the CUTE character-manipulation tasks (group cute); cloze: which line comes next",
    )
    p.add_argument("directory", help="where to write the task YAMLs and JSONL (a local directory)")
    p.add_argument(
        "--words",
        default=None,
        help="cute: a text file of words, whitespace-separated (default: the embedded corpus's words)",
    )
    p.add_argument("--corpus", default="default:validation", help="cloze: the corpus to draw passages from")
    p.add_argument("--n", type=int, default=100, help="items per task")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shots", type=int, default=4, help="cute: worked examples in each prompt")
    p.add_argument("--kinds", default=None, help="cute: comma-separated kinds (default: all 12)")
    p.add_argument("--context-bytes", type=int, default=256, help="cloze: bytes of text before the line")
    p.add_argument(
        "--cut",
        choices=["line", "midline"],
        default="line",
        help="cloze: choose the next line (task cloze), or the rest of a line cut mid-way (cloze_midline)",
    )


def run(args: argparse.Namespace) -> int:
    from blt_jax import paths

    if args.kind == "cute":
        from blt_jax.evals import cute

        words = paths.read_text(paths.resolve(args.words)).split() if args.words else None
        kinds = [k for k in args.kinds.split(",") if k] if args.kinds else None
        names = cute.write_tasks(args.directory, words, args.n, args.seed, args.shots, kinds)
        group, run = f" (group {cute.GROUP})", cute.GROUP
    else:
        from blt_jax.evals import cloze

        names = [cloze.write_task(args.directory, args.corpus, args.n, args.seed, args.context_bytes, cut=args.cut)]
        group, run = "", names[0]
    print(
        f"wrote {', '.join(names)}{group} to {args.directory}: blt-jax lm-eval --include-path {args.directory} "
        f"--tasks {run} --checkpoint RUN"
    )
    return 0
