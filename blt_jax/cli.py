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
  study         the paper's comparisons at matched training compute (BLT patchings, no hash n-grams,
                a byte transformer) on any corpus, with seeds; a report, a table and two figures; resumable

Paths may be relative, ~ or gs://. Bad input ends in one line `blt-jax <command>: error: ...` and exit
code 2 (--verbose or BLT_JAX_VERBOSE=1 adds the traceback).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time

from blt_jax.errors import InputError

DEFAULT_SMOKE_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments", "tiny.py")
SMOKE_TEXT = "Daenerys Targaryen is in Game of Thrones, a fantasy epic by George R.R. Martin."


def _model_config(spec: str, overrides: list[str]):
    from blt_jax.experiment import load_experiment
    from blt_jax.models import model_config_from_dict

    return model_config_from_dict(load_experiment(spec, overrides).model, "model")


def _print_counts(config) -> None:
    from blt_jax.models import model_kind
    from blt_jax.params import abstract_params, count, count_by_group

    abstract = abstract_params(config)
    rows = sorted(count_by_group(abstract).items()) + [("total", count(abstract))]
    for label, companion in model_kind(config).companions.items():
        rows.append((label, count(abstract_params(companion))))
    width = max(len(name) for name, _ in rows)
    for name, n in rows:
        print(f"  {name:<{width}}  {n:>15,}")


def cmd_params(args: argparse.Namespace) -> int:
    config = _model_config(args.config, args.overrides)
    print(f"{args.config}: {type(config).__name__}")
    _print_counts(config)
    return 0


def cmd_smoke(args: argparse.Namespace) -> int:
    import jax
    import numpy as np

    from blt_jax import tokenizer
    from blt_jax.api import BLTModel
    from blt_jax.models import require_kind

    config = _model_config(args.config, args.overrides)
    require_kind(config, "blt", "smoke", source=args.config)
    print(f"jax {jax.__version__} on {jax.device_count()} {jax.devices()[0].platform} device(s)")
    print(f"model {args.config}:")
    _print_counts(config)
    start = time.perf_counter()
    model = BLTModel.random(config, seed=args.seed)
    tokens = tokenizer.encode(args.text)[None]
    n = tokens.shape[1]
    if model.entropy_params is not None:
        entropies = np.asarray(model.entropies(tokens))[0]
        lengths = np.asarray(model.patch_lengths(tokens))[0]
    else:
        entropies, lengths = None, np.concatenate([[1], np.full(n, 1)])
    logits = np.asarray(model.logits(tokens, lengths[None]))
    elapsed = time.perf_counter() - start
    patches, pos = [], 0
    for length in lengths[lengths > 0]:
        patches.append(tokenizer.render(tokens[0, pos : pos + length]))
        pos += int(length)
    print(f"text: {args.text!r} -> {n} ids")
    if entropies is not None:
        print(f"entropies (random weights, nats): mean {entropies.mean():.3f}, max {entropies.max():.3f}")
    print(f"{len(patches)} patches (threshold {config.patching.threshold:.4f}): {patches}")
    finite = bool(np.isfinite(logits).all())
    print(f"logits {logits.shape} {logits.dtype}, finite: {finite}; total {elapsed:.1f}s incl. compilation")
    return 0 if finite else 1


def cmd_convert(args: argparse.Namespace) -> int:
    from blt_jax.api import from_pretrained

    model = from_pretrained(args.source, entropy_path=args.entropy)
    model.save(args.dest)
    print(f"wrote {args.dest} ({model.describe()})")
    return 0


def _entropy_model(args: argparse.Namespace):
    """(config, params, description) of the entropy LM named by --checkpoint or --config/--seed."""
    import jax

    from blt_jax.api import load_entropy_model
    from blt_jax.models import model_kind
    from blt_jax.params import init_params

    if args.checkpoint:
        if args.overrides:
            raise InputError(f"--config.{args.overrides[0]}: overrides apply to --config, not to --checkpoint")
        config, params = load_entropy_model(args.checkpoint)
        return config, params, args.checkpoint
    if not args.config:
        raise InputError("name the entropy model: --checkpoint DIR, or --config FILE for a fresh random one")
    config = model_kind(_model_config(args.config, args.overrides)).entropy_lm
    if config is None:
        raise InputError(f"{args.config} has no entropy_model")
    params = init_params(config, jax.random.key(args.seed))
    return config, params, f"random init of {args.config} (seed {args.seed})"


def cmd_patch(args: argparse.Namespace) -> int:
    from blt_jax.data.sources import list_files
    from blt_jax.data.entropy_pass import PassOptions, run_pass
    from blt_jax.parallel import maybe_initialize_distributed

    list_files(args.corpus)  # a wrong path fails before the model is built
    maybe_initialize_distributed()  # several processes share the shards (launch/local_multihost.py, a pod)
    config, params, description = _entropy_model(args)
    options = PassOptions(docs_per_shard=args.docs_per_shard, chunk=args.chunk, lanes=args.lanes,
                          text_field=args.text_field, strict=args.strict, progress=not args.no_progress)
    start = time.perf_counter()
    manifest = run_pass(args.corpus, args.out, config, params, description, options)
    counts, elapsed = manifest["counts"], time.perf_counter() - start
    print(f"wrote {len(manifest['shards'])} shard(s) to {args.out}: {counts['documents']:,} documents, "
          f"{counts['bytes']:,} bytes, mean entropy {manifest['mean_entropy'] or 0:.4f} nats; skipped "
          f"{counts['skipped_empty']} empty and {counts['skipped_bad']} bad item(s); {elapsed:.1f}s")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from blt_jax.patching.calibrate import RULES, calibrate
    from blt_jax.patching.store import sample_stored

    if args.entropies:
        entropies = sample_stored(args.entropies, args.max_tokens)
    elif args.corpus:
        from blt_jax.data.sources import iter_documents
        from blt_jax.patching.stream import EntropyStreamer
        from blt_jax.tokenizer import encode

        config, params, _ = _entropy_model(args)
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


def cmd_plot_entropy(args: argparse.Namespace) -> int:
    from blt_jax import paths
    from blt_jax.config import RELEASED_THRESHOLD
    from blt_jax.patching.plot import text_entropy_figure
    from blt_jax.tokenizer import encode

    text = args.text if args.text is not None else paths.read_bytes(args.text_file)
    if not text:
        raise InputError("nothing to plot: give --text or --text-file with some content")
    config, params, description = _entropy_model(args)
    tokens = encode(text)
    threshold = args.threshold
    if threshold is None:
        threshold = RELEASED_THRESHOLD if args.checkpoint is None else _checkpoint_threshold(args.checkpoint)
    text_entropy_figure(args.out, config, params, tokens, threshold, title=args.title or description)
    print(f"wrote {args.out} ({len(tokens)} bytes, threshold {threshold:.4f})")
    return 0


def _checkpoint_threshold(path: str) -> float:
    """The patching threshold of a BLT checkpoint, or the released one."""
    from blt_jax.api import from_pretrained
    from blt_jax.config import RELEASED_THRESHOLD

    try:
        return from_pretrained(path).config.patching.threshold
    except (FileNotFoundError, ValueError):
        return RELEASED_THRESHOLD


def _add_config_arg(p: argparse.ArgumentParser, help: str, **kwargs) -> None:
    """`--config FILE[:arg]` and its `--config.a.b=v` overrides (split off by `main`): the one way
    every command that reads an experiment takes it."""
    p.add_argument("--config", help=f"{help}; override any field with --config.a.b=v", **kwargs)
    p.set_defaults(overrides=[])


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", default=None, help="model directory (ours, HF or Meta) holding an entropy LM")
    _add_config_arg(p, "experiment file[:arg]: a fresh randomly initialised entropy LM", default=None)
    p.add_argument("--seed", type=int, default=0, help="seed of the random initialisation (with --config)")


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are `InputError`s: one line, like every other bad input."""

    def error(self, message: str):
        raise InputError(f"{message} (see blt-jax {self.prog.split()[-1]} --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="blt-jax", description="Byte Latent Transformer in JAX/Flax")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("smoke", help="build a small random model, patch a text and run it")
    _add_config_arg(p, "experiment file[:arg] (default: experiments/tiny.py)", default=DEFAULT_SMOKE_CONFIG)
    p.add_argument("--text", default=SMOKE_TEXT)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=cmd_smoke)

    p = sub.add_parser("params", help="parameter counts of an experiment config")
    _add_config_arg(p, "experiment file[:arg]", required=True)
    p.set_defaults(fn=cmd_params)

    p = sub.add_parser("convert", help="convert an HF or Meta checkpoint (a BLT, or a Llama-family token LM) to our format")
    p.add_argument("source", help="directory: HF (config.json + model.safetensors: BltForCausalLM, or LlamaForCausalLM "
                   "and its family with tokenizer.json), Meta (params.json + consolidated.pth), or a token LM run of ours")
    p.add_argument("dest", help="output directory")
    p.add_argument("--entropy", default=None, help="Meta layout: entropy model directory")
    p.set_defaults(fn=cmd_convert)

    p = sub.add_parser("patch", help="entropy pass: corpus -> stored per-byte entropies")
    p.add_argument("--corpus", required=True, help="directory, glob or file (.txt, .jsonl, .parquet, ...)")
    p.add_argument("--out", required=True, help="output directory (resumed if it holds an earlier run)")
    _add_model_args(p)
    p.add_argument("--docs-per-shard", type=int, default=1024)
    p.add_argument("--chunk", type=int, default=1024, help="bytes per lane per step")
    p.add_argument("--lanes", type=int, default=None, help="rows per step (default 8 per device)")
    p.add_argument("--text-field", default="text", help="JSON field / Parquet column of the text")
    p.add_argument("--strict", action="store_true", help="stop at the first bad input instead of skipping it")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(fn=cmd_patch)

    p = sub.add_parser("calibrate", help="threshold for a target mean patch length")
    p.add_argument("--entropies", default=None, help="a `blt-jax patch` output directory")
    p.add_argument("--corpus", default=None, help="or a corpus sample, with a model (--checkpoint / --config)")
    _add_model_args(p)
    p.add_argument("--target", type=float, default=4.5, help="mean patch length in bytes (default 4.5)")
    p.add_argument("--rule", choices=["global", "monotonic", "both"], default="both")
    p.add_argument("--max-patch-length", type=int, default=None)
    p.add_argument("--max-tokens", type=int, default=16_000_000, help="sample size (0 = everything)")
    p.add_argument("--text-field", default="text")
    p.add_argument("--json", default=None, help="also write the results as JSON")
    p.set_defaults(fn=cmd_calibrate)

    p = sub.add_parser("plot-entropy", help="entropy figure of a text")
    _add_model_args(p)
    p.add_argument("--text", default=None)
    p.add_argument("--text-file", default=None)
    p.add_argument("--threshold", type=float, default=None, help="default: the checkpoint's, else the released one")
    p.add_argument("--title", default=None)
    p.add_argument("--out", required=True, help="output image (.png, .pdf, .svg)")
    p.set_defaults(fn=cmd_plot_entropy)

    p = sub.add_parser("train", help="train a BLT or an entropy LM: --config FILE[:arg] --workdir DIR "
                                     "[--config.train.steps=N ...]")
    _add_config_arg(p, "experiment file[:arg]", required=True)
    p.add_argument("--workdir", required=True, help="run directory: local, ~ or gs:// (resumed if it holds checkpoints)")
    p.add_argument("--progress", dest="progress", action="store_true", default=True, help=argparse.SUPPRESS)
    p.add_argument("--no-progress", "--noprogress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("export", help="a training run or model -> a self-contained model directory")
    p.add_argument("run", help="a training workdir of a BLT, or any model directory from_pretrained reads "
                               "(local, ~ or gs://)")
    p.add_argument("dest", help="output directory: the BLT, its entropy LM, the patching rule")
    p.add_argument("--format", choices=("native", "hf"), default="native",
                   help="native: ours (from_pretrained); hf: transformers' BltForCausalLM.from_pretrained")
    p.add_argument("--entropy-checkpoint", default=None,
                   help="the entropy LM of a run patched by entropy (default: the one its entropy pass names)")
    p.set_defaults(fn=cmd_export)

    p = sub.add_parser("eval", help="bits per byte of a trained checkpoint")
    p.add_argument("--checkpoint", required=True, help="a training workdir (local, ~ or gs://; its corpus is not needed)")
    p.add_argument("--data", default=None, help="corpus to evaluate on (default: the run's eval data)")
    p.add_argument("--batches", type=int, default=0, help="at most this many batches (0 = one pass)")
    p.add_argument("--batch-size", type=int, default=0)
    _add_config_arg(p, "experiment file[:arg] to evaluate under (default: the run's saved one, overridable too)",
                    default=None)
    p.set_defaults(fn=cmd_eval)

    p = sub.add_parser("lm-eval", help="lm-evaluation-harness tasks on a model (needs the eval extra)")
    p.add_argument("--checkpoint", required=True, help="a training run or model directory (local, ~ or gs://)")
    p.add_argument("--tasks", required=True, help="comma-separated task names")
    p.add_argument("--entropy-checkpoint", default=None, help="entropy LM of a run patched by entropy")
    p.add_argument("--num-fewshot", type=int, default=None)
    p.add_argument("--limit", type=float, default=None, help="at most this many items per task (< 1: a fraction)")
    p.add_argument("--batch-size", type=int, default=8, help="rows per forward pass")
    p.add_argument("--max-length", type=int, default=2048, help="bytes of text per row (older context is cut)")
    p.add_argument("--include-path", default=None, help="a directory of more task YAMLs")
    p.add_argument("--noise", default=None,
                   help="run under the paper's input noisings: comma-separated from antspeak, drop, randomcase, "
                        "repeat, uppercase, none (clean), or all; results name them task@noise")
    p.add_argument("--noise-seed", type=int, default=0, help="seed of the noisings")
    p.add_argument("--output", default=None, help="write lm-eval's results as JSON here")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.set_defaults(fn=cmd_lm_eval)

    p = sub.add_parser("make-tasks", help="write lm-eval task files (CUTE from a word list, cloze from a corpus)")
    p.add_argument("kind", choices=["cute", "cloze"],
                   help="cute: the CUTE character-manipulation tasks (group cute); cloze: which line comes next")
    p.add_argument("directory", help="where to write the task YAMLs and JSONL (a local directory)")
    p.add_argument("--words", default=None,
                   help="cute: a text file of words, whitespace-separated (default: the embedded corpus's words)")
    p.add_argument("--corpus", default="default:validation", help="cloze: the corpus to draw passages from")
    p.add_argument("--n", type=int, default=100, help="items per task")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shots", type=int, default=4, help="cute: worked examples in each prompt")
    p.add_argument("--kinds", default=None, help="cute: comma-separated kinds (default: all 12)")
    p.add_argument("--context-bytes", type=int, default=256, help="cloze: bytes of text before the line")
    p.add_argument("--cut", choices=["line", "midline"], default="line",
                   help="cloze: choose the next line (task cloze), or the rest of a line cut mid-way (cloze_midline)")
    p.set_defaults(fn=cmd_make_tasks)

    p = sub.add_parser("generate", help="generate text after a prompt, streamed to stdout")
    p.add_argument("--checkpoint", required=True,
                   help="a model directory (ours, HF or Meta) or a training workdir (its newest checkpoint)")
    p.add_argument("--entropy-checkpoint", default=None,
                   help="entropy LM for a training workdir whose patching is by entropy")
    p.add_argument("--prompt", action="append", default=None,
                   help="prompt text (repeat for a batch); or use --prompt-file")
    p.add_argument("--prompt-file", default=None, help="file holding the prompt ('-' = stdin)")
    p.add_argument("--lines", action="store_true",
                   help="with --prompt-file: every non-empty line is a prompt (one batch, JSON lines out)")
    p.add_argument("--max-new-bytes", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=cmd_generate)

    p = sub.add_parser("serve", help="an OpenAI-compatible HTTP server (/v1/completions) with continuous batching")
    p.add_argument("--checkpoint", required=True,
                   help="a BLT, a token LM (a Llama-family Hugging Face directory with its tokenizer.json, or "
                        "a BPE run of ours) or a byte LM: a model directory (ours, HF or Meta) or a training "
                        "workdir (its newest checkpoint)")
    p.add_argument("--entropy-checkpoint", default=None,
                   help="entropy LM for a training workdir whose patching is by entropy")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-rows", type=int, default=8, help="decode rows: requests that generate at once")
    p.add_argument("--max-prompt-bytes", type=int, default=2048, help="the longest prompt taken (UTF-8 bytes)")
    p.add_argument("--max-tokens", type=int, default=1024, help="the most bytes one request may generate")
    p.add_argument("--max-queue", type=int, default=64,
                   help="requests that may wait for a row; beyond it the server answers 429")
    p.add_argument("--strict", action="store_true", help="unknown request fields are errors (HTTP 400)")
    p.add_argument("--name", default=None, help="the model's name in the API (default: the checkpoint's name)")
    p.add_argument("--grace-seconds", type=float, default=30.0,
                   help="after SIGTERM, how long running completions may take to end")
    p.set_defaults(fn=cmd_serve)

    p = sub.add_parser("aot", help="compile the train step for a TPU topology (no TPU needed): memory and FLOPs")
    _add_config_arg(p, "experiment file[:arg], e.g. experiments/blt_1b.py:v5p-32", required=True)
    p.add_argument("--topology", required=True, help="libtpu name (v5p:2x2x2, v5e:4x4) or Cloud name (v5p-128)")
    p.add_argument("--program", choices=("train", "generate", "entropy"), default="train",
                   help="the train step (default), one cached generation step, or the entropy pass")
    p.add_argument("--require-fit", action="store_true", help="exit 1 when the program does not fit in HBM")
    p.set_defaults(fn=cmd_aot)

    p = sub.add_parser("quickstart", help="train an entropy LM and a BLT on the default corpus, evaluate, plot, generate")
    p.add_argument("--workdir", default="runs/quickstart", help="where everything goes; a re-run resumes it")
    preset = _quickstart_preset()
    p.add_argument("--minutes", type=float, default=preset["minutes"],
                   help="wall-clock budget on a 2-core CPU (sets the steps)")
    p.add_argument("--scale", choices=("small", "tiny"), default=preset["scale"],
                   help="model sizes (tiny: CI and notebooks)")
    p.add_argument("--target-patch-length", type=float, default=4.5, help="mean patch length to calibrate to")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", action="append", default=None, metavar="STAGE",
                   help="run just this stage (repeatable): corpus, entropy_lm, entropy_pass, calibrate, blt, "
                        "baseline, plots, generate")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(fn=cmd_quickstart)

    p = sub.add_parser("byteify", help="a BLT from a pretrained token LM (a Llama-family directory, or ours): "
                                       "stage 1 beside the frozen teacher, stage 2 end to end, and a baseline")
    p.add_argument("--teacher", required=True,
                   help="the token LM: a Hugging Face LlamaForCausalLM directory (or Mistral, Qwen2) with tokenizer.json, "
                        "a token LM of ours (`blt-jax convert`), or a token LM's training run")
    p.add_argument("--corpus", default="default", help="a text directory, file or glob (also JSONL / Parquet), or `default`")
    p.add_argument("--heldout", default=None,
                   help="held-out text given apart (e.g. text the teacher never read; `default:validation`); by "
                        "default some of the corpus's documents are held out")
    p.add_argument("--workdir", default="runs/byteify", help="where everything goes; a re-run resumes it")
    p.add_argument("--minutes", type=float, default=30.0,
                   help="budget the step counts are planned from, where the options leave them 0 (default 30)")
    p.add_argument("--stages", default="1,2", help="1: stage 1 only; 1,2 (default): both")
    p.add_argument("--scale", choices=("small", "tiny"), default="small",
                   help="the default options' sizes, without --config (tiny: CI and notebooks)")
    _add_config_arg(p, "options file[:arg] (experiments/byteify.py); --config.a.b=v overrides any option")
    p.add_argument("--no-baseline", action="store_true", help="skip the same BLT trained from scratch")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(fn=cmd_byteify)

    p = sub.add_parser("study", help="the paper's comparisons at matched training compute on any corpus, with seeds")
    p.add_argument("--corpus", default="default",
                   help="a text directory, file or glob (also JSONL / Parquet), or `default` (Python's standard library)")
    p.add_argument("--workdir", default="runs/study", help="where everything goes; a re-run resumes it")
    p.add_argument("--minutes", type=float, default=None,
                   help="wall-clock budget on a 2-core CPU (default 60; sets the steps, faster machines finish early)")
    p.add_argument("--arms", default="all",
                   help="comma-separated arms (default: all; a wrong name lists them); the BLT patched by entropy, "
                        "which every arm's compute is matched to, is always trained")
    p.add_argument("--seeds", type=int, default=None, help="seeds per arm (default 2)")
    p.add_argument("--scale", choices=("small", "tiny"), default="small", help="model sizes (tiny: CI and notebooks)")
    p.add_argument("--target-patch-length", type=float, default=4.5,
                   help="mean patch length of the entropy threshold, and the static patch size (rounded)")
    p.add_argument("--patch-sizes", default="",
                   help="patch-size scaling: more mean patch lengths (e.g. 6,8), a BLT arm each whose latent "
                        "transformer is resized to the same FLOPs per byte")
    p.add_argument("--bpe-vocab", type=int, default=None,
                   help="vocabulary of the bpe_lm arm's tokenizer, trained on the corpus (default 4096; 512 at --scale tiny)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(fn=cmd_study)
    return parser


# Arguments that name files or directories (resolved: ~ expanded, made absolute; gs:// kept).
_PATH_ARGS = ("checkpoint", "entropy_checkpoint", "workdir", "out", "entropies", "json", "text_file", "source",
              "dest", "entropy", "run")


def _resolve_paths(args: argparse.Namespace) -> None:
    from blt_jax import paths

    for name in _PATH_ARGS:
        value = getattr(args, name, None)
        if isinstance(value, str) and value and value != "-":
            setattr(args, name, paths.resolve(value))
    if getattr(args, "prompt_file", None) not in (None, "-"):
        args.prompt_file = paths.resolve(args.prompt_file)


QUICKSTART_PRESETS = {"": {"minutes": 12.0, "scale": "small"}, "tiny": {"minutes": 0.01, "scale": "tiny"}}


def _quickstart_preset() -> dict:
    """Defaults of `blt-jax quickstart`; BLT_JAX_QUICKSTART_PRESET=tiny shrinks them to the tiny
    scale (CI runs the README's command as printed with it)."""
    name = os.environ.get("BLT_JAX_QUICKSTART_PRESET", "")
    if name not in QUICKSTART_PRESETS:
        raise InputError(f"BLT_JAX_QUICKSTART_PRESET={name!r}: expected one of {', '.join(p for p in QUICKSTART_PRESETS if p)}")
    return QUICKSTART_PRESETS[name]


def cmd_quickstart(args: argparse.Namespace) -> int:
    from blt_jax import paths
    from blt_jax.quickstart import run_quickstart
    from blt_jax.quickstart.stages import StageInterrupted

    if paths.is_uri(args.workdir):
        raise InputError(f"--workdir {args.workdir}: the quickstart runs on this machine; give a local directory")
    try:
        run_quickstart(args.workdir, args.minutes, args.scale, args.target_patch_length, args.seed,
                       progress=not args.no_progress, only=tuple(args.only) if args.only else None)
    except StageInterrupted as e:
        print(f"blt-jax quickstart: {e}", file=sys.stderr)
        return 130  # the shell's code for "interrupted"
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    from blt_jax import paths
    from blt_jax.quickstart.stages import StageInterrupted
    from blt_jax.study import run_study
    from blt_jax.study.plan import parse_arms, parse_sizes

    if paths.is_uri(args.workdir):
        raise InputError(f"--workdir {args.workdir}: the study runs on this machine; give a local directory")

    def terminate(signum, frame):  # SIGTERM outside a training loop (which checkpoints on its own)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        given = {k: v for k, v in (("minutes", args.minutes), ("seeds", args.seeds), ("bpe_vocab", args.bpe_vocab))
                 if v is not None}
        run_study(args.workdir, args.corpus, scale=args.scale, arms=parse_arms(args.arms),
                  target_patch_length=args.target_patch_length, patch_sizes=parse_sizes(args.patch_sizes),
                  progress=not args.no_progress, **given)
    except StageInterrupted as e:
        print(f"blt-jax study: {e}", file=sys.stderr)
        return 130  # the shell's code for "interrupted"
    except KeyboardInterrupt:
        print("blt-jax study: stopped; run the same command again to resume (finished stages and runs are kept)",
              file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


def cmd_byteify(args: argparse.Namespace) -> int:
    from blt_jax import paths
    from blt_jax.byteify import default_options, run_byteify
    from blt_jax.experiment import apply_override, load_experiment
    from blt_jax.quickstart.stages import StageInterrupted

    if paths.is_uri(args.workdir):
        raise InputError(f"--workdir {args.workdir}: byteify runs on this machine; give a local directory")
    if args.config:
        options = load_experiment(args.config, args.overrides)
    else:
        options = default_options(args.scale)
        for item in args.overrides:
            apply_override(options, item)
    try:
        numbers = tuple(int(part) for part in args.stages.split(",") if part.strip())
    except ValueError:
        raise InputError(f"--stages {args.stages}: expected 1, 2 or 1,2") from None

    def terminate(signum, frame):  # SIGTERM outside a training loop (which checkpoints on its own)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        report = run_byteify(args.workdir, args.teacher, args.corpus, options.to_dict(), args.minutes, numbers,
                             baseline=not args.no_baseline, progress=not args.no_progress, heldout=args.heldout)
    except StageInterrupted as e:
        print(f"blt-jax byteify: {e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("blt-jax byteify: stopped; run the same command again to resume (finished stages are kept)",
              file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(f"byteified BLT: {report['final_run']} (report: {os.path.join(args.workdir, 'report.md')})")
    return 0


def cmd_aot(args: argparse.Namespace) -> int:
    from blt_jax.aot import aot_entropy_pass, aot_generation_step, aot_train_step, require_fit
    from blt_jax.experiment import load_experiment
    from blt_jax.experiment.config import experiment_from_dict

    experiment = experiment_from_dict(load_experiment(args.config, args.overrides))
    compile_fn = {"train": aot_train_step, "generate": aot_generation_step, "entropy": aot_entropy_pass}[args.program]
    report = compile_fn(experiment, args.topology)
    report["config"] = args.config
    print(json.dumps(report, indent=2))
    if args.require_fit:
        try:
            require_fit(report)
        except ValueError as e:
            print(f"blt-jax aot: {e}", file=sys.stderr)
            return 1
    return 0


def _read_prompts(args: argparse.Namespace) -> list[str]:
    if (args.prompt is None) == (args.prompt_file is None):
        raise InputError("give the prompt with --prompt TEXT or --prompt-file PATH (- = stdin), not both")
    if args.prompt is not None:
        return list(args.prompt)
    if args.prompt_file == "-":
        text = sys.stdin.buffer.read().decode("utf-8", errors="replace")
    else:
        from blt_jax import paths

        text = paths.read_bytes(args.prompt_file).decode("utf-8", errors="replace")
    prompts = [line for line in text.splitlines() if line.strip()] if args.lines else [text]
    if not prompts or not any(prompts):
        raise InputError(f"{args.prompt_file}: no prompt in it")
    return prompts


def cmd_generate(args: argparse.Namespace) -> int:
    from blt_jax.tokenizer import Utf8Stream

    prompts = _read_prompts(args)
    sys.stdout.reconfigure(encoding="utf-8", errors="replace")  # generated bytes are UTF-8 (or U+FFFD)
    from blt_jax.api import from_pretrained

    model = from_pretrained(args.checkpoint, entropy_path=args.entropy_checkpoint)
    start = time.perf_counter()
    if len(prompts) == 1:
        stream = Utf8Stream(sys.stdout)
        result = model.generate_tokens(prompts[0], args.max_new_bytes, args.temperature, args.top_k, args.top_p,
                                       args.seed, on_bytes=lambda row, data: stream.write(data))
        stream.close()
        sys.stdout.write("\n")
    else:
        result = model.generate_tokens(prompts, args.max_new_bytes, args.temperature, args.top_k, args.top_p,
                                       args.seed)
        for prompt, text in zip(prompts, result.texts):
            print(json.dumps({"prompt": prompt, "completion": text}, ensure_ascii=False))
    sys.stdout.flush()
    elapsed = time.perf_counter() - start
    produced = sum(len(t) for t in result.tokens)
    print(f"[{produced} bytes in {elapsed:.2f}s ({produced / elapsed:,.1f} bytes/s, compilation included), "
          f"{result.steps} decoding steps]", file=sys.stderr)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from blt_jax.serve import run
    except ImportError as error:
        raise InputError(f"blt-jax serve needs the serve extra ({error.name} is missing): "
                         "pip install -c constraints.txt -e \".[serve]\"") from None
    return run(args.checkpoint, args.entropy_checkpoint, args.host, args.port, args.max_rows, args.max_prompt_bytes,
               args.max_tokens, args.max_queue, args.strict, args.name, args.grace_seconds)


def cmd_eval(args: argparse.Namespace) -> int:
    from blt_jax.train.evaluate import evaluate_run

    start = time.perf_counter()
    result = evaluate_run(args.checkpoint, args.config, args.overrides, args.data, args.batch_size, args.batches)
    print(f"{args.checkpoint}: bits per byte {result['eval_bpb']:.4f} (loss {result['eval_loss']:.4f} nats) over "
          f"{int(result['eval_bytes']):,} bytes of {result['source']}; mean patch length "
          f"{result['eval_mean_patch_len']:.2f}; {result['eval_bytes'] / result['seconds']:,.0f} bytes/s "
          f"({time.perf_counter() - start:.1f}s total)")
    return 0


def cmd_lm_eval(args: argparse.Namespace) -> int:
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
    model = backend.BltLM(args.checkpoint, entropy=args.entropy_checkpoint, batch_size=args.batch_size,
                          max_length=args.max_length, progress=args.progress, noise_seed=args.noise_seed)
    results = backend.run_noised(model, tasks, noises, args.num_fewshot, args.limit, manager)
    print(make_table(results))
    if args.output:
        paths.write_json(args.output, results)
        print(f"wrote {args.output}")
    return 0


def cmd_make_tasks(args: argparse.Namespace) -> int:
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
    print(f"wrote {', '.join(names)}{group} to {args.directory}: blt-jax lm-eval --include-path {args.directory} "
          f"--tasks {run} --checkpoint RUN")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from blt_jax.evals.during_training import evaluators_for
    from blt_jax.train.main import train_from_file

    summary = train_from_file(args.config, args.overrides, args.workdir, progress=args.progress,
                              evaluators_for=evaluators_for)
    metrics, evaluation = summary["metrics"], summary["eval"]
    if metrics:
        rate = "" if metrics["bytes_per_s"] is None else (
            f", {metrics['bytes_per_s']:,.0f} bytes/s, MFU {100 * metrics['mfu']:.1f}%")
        print(f"step {metrics['step']}: loss {metrics['loss']:.4f}, bpb {metrics['bpb']:.4f}, "
              f"mean patch {metrics['mean_patch_len']:.2f}{rate}")
    if evaluation:
        print(f"eval at step {evaluation['step']}: bpb {evaluation['eval_bpb']:.4f}, "
              f"mean patch {evaluation['eval_mean_patch_len']:.2f}")
    if summary.get("extra_eval"):
        print("lm-eval at step {}: {}".format(summary["step"], ", ".join(
            f"{k.removeprefix('lm_eval/')} {v:.4f}" for k, v in summary["extra_eval"].items())))
    if summary["preempted"]:
        print(f"stopped by {summary.get('stop_signal') or 'SIGTERM'} at step {summary['step']}; checkpoint saved in "
              f"{args.workdir}; the same command resumes")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from blt_jax import paths
    from blt_jax.api import from_pretrained

    if paths.exists(args.dest) and (not paths.isdir(args.dest) or paths.listdir(args.dest)):
        # Files of another model left beside the new ones (an entropy LM, say) would be loaded with it.
        raise InputError(f"{args.dest} exists and is not empty; choose a new directory or remove it")
    model = from_pretrained(args.run, entropy_path=args.entropy_checkpoint)
    model.save(args.dest, format=args.format)
    patching = model.config.patching
    rule = f"{patching.mode} patching" + (f", threshold {patching.threshold:.4f}" if patching.mode == "entropy" else "")
    layout = {"native": "our format", "hf": "Hugging Face layout"}[args.format]
    print(f"wrote {args.dest} ({layout}): {type(model.config).__name__} ({rule}; entropy LM: "
          f"{'included' if model.entropy_params is not None else 'none'})")
    return 0


def _quiet_tpu_probe() -> None:
    """On a host without TPUs, keep jax from starting libtpu (installed by the `tpu` extra), whose
    start-up prints alarming errors there. Explicit JAX_PLATFORMS settings are left alone."""
    import glob

    if any(os.environ.get(k) for k in ("JAX_PLATFORMS", "JAX_FORCE_TPU_INIT", "TPU_ACCELERATOR_TYPE",
                                       "TPU_WORKER_HOSTNAMES")):
        return  # the user (or a TPU launcher's environment) decides
    if glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"):
        return  # TPU device files: let jax find the chips
    try:
        from jax._src import hardware_utils

        chips, _ = hardware_utils.num_available_tpu_chips_and_device_id()
        gpus = hardware_utils.has_visible_nvidia_gpu() or bool(getattr(hardware_utils, "num_available_amd_gpus",
                                                                      lambda: 0)())
    except Exception:  # noqa: BLE001 - a jax without these helpers: leave platform choice to jax
        return
    if chips == 0 and not gpus:
        import jax

        logging.getLogger("blt_jax").debug("no TPU or GPU on this host: running on the CPU")
        jax.config.update("jax_platforms", "cpu")


def _compilation_cache() -> None:
    """Keeps compiled XLA programs across runs, so a command run again on the same shapes (a second
    `blt-jax lm-eval` on a task, a restarted training launch) skips compilation: in
    `$XDG_CACHE_HOME/blt_jax/xla` (default `~/.cache/blt_jax/xla`), or BLT_JAX_COMPILATION_CACHE (a
    directory: relative, `~` or gs://; `off` turns it off). JAX's own JAX_COMPILATION_CACHE_DIR wins."""
    import jax

    from blt_jax import paths

    if jax.config.jax_compilation_cache_dir:
        return
    choice = os.environ.get("BLT_JAX_COMPILATION_CACHE", "").strip()
    if choice.lower() == "off":
        return
    default = os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "blt_jax", "xla")
    jax.config.update("jax_compilation_cache_dir", paths.resolve(choice or default))


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
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("blt_jax").setLevel(logging.INFO)
    logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax and grain log every save at INFO
    _quiet_tpu_probe()
    _compilation_cache()
    try:
        rest, overrides = split_overrides(argv)
        args = build_parser().parse_args(rest)
        if overrides and not hasattr(args, "overrides"):
            raise InputError(f"--config.{overrides[0]}: `blt-jax {args.command}` takes no config overrides")
        if hasattr(args, "overrides"):
            args.overrides = overrides
        _resolve_paths(args)
        code = args.fn(args)
    except UserError as e:
        if verbose:
            import traceback

            traceback.print_exc()
        message = "; ".join(line.strip() for line in str(e).splitlines() if line.strip()) or type(e).__name__
        print(f"blt-jax {command}: error: {message}", file=sys.stderr)
        code = 2
        if isinstance(e, (StorageError, DiskFull)):
            # Background writers (Orbax's, gcsfs's) may still be retrying against the failed store, and
            # would keep the process alive or print tracebacks as the interpreter shuts them down.
            sys.stderr.flush()
            sys.stdout.flush()
            os._exit(code)
    sys.exit(code)
