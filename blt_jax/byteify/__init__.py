"""`blt-jax byteify`: a BLT made from a pretrained token LM (the paper's BLT-from-Llama, with Bolmo's
two stages; see stages.py), on any corpus.

    from blt_jax.byteify import run_byteify
    report = run_byteify("runs/byteify", teacher="~/llama-3.2-1b", corpus="my_texts/", minutes=120)

The teacher is a Llama-family Hugging Face directory (`LlamaForCausalLM`, Mistral, Qwen2), a token LM
of ours, or a token LM's training run, with its tokenizer. Every stage is an ordinary training run;
stage2/ is the result.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from typing import Any

from blt_jax.byteify import stages
from blt_jax.byteify.plan import DEFAULT_MINUTES, ByteifyPlan, check_options, default_options, make_plan
from blt_jax.byteify.stages import Context, Paths
from blt_jax.errors import InputError
from blt_jax.paths import read_json, resolve, write_json
from blt_jax.stages import Stage, first_line, load_result, run_stages

__all__ = ["DEFAULT_MINUTES", "ByteifyPlan", "Paths", "default_options", "run_byteify"]

STAGE_ONE = ("corpus", "measure", "embeddings", "stage1")
STAGE_TWO = ("entropy_lm", "entropy_pass", "calibrate", "stage2")


def corpus_spec(corpus: str) -> str:
    """A corpus as the plan records it: made absolute, so a resumed run reads the same text."""
    return corpus if corpus == "default" or corpus.startswith("default:") else resolve(corpus)


def open_plan(paths: Paths, plan: ByteifyPlan, teacher: str, corpus: str) -> ByteifyPlan:
    """The plan of a workdir: `plan` for a new one, the stored one when resuming with the same teacher,
    corpus, options and minutes (a re-run never mixes budgets).

    Raises:
      InputError: the workdir holds a byteification of another teacher, corpus or options.
    """
    if os.path.exists(paths.plan):
        raw = read_json(paths.plan)
        stored = ByteifyPlan(**{k: v for k, v in raw.items() if k in ByteifyPlan.__dataclass_fields__})
        same = (raw.get("teacher"), raw.get("corpus"), stored.options, stored.minutes) == (
            teacher,
            corpus,
            _plain(plan.options),
            plan.minutes,
        )
        if not same:
            raise InputError(
                f"{paths.root} holds a byteification of {raw.get('teacher')} on {raw.get('corpus')} with "
                "other options or minutes; re-run it as it was started, or choose another --workdir"
            )
        return stored
    write_json(paths.plan, dict(_plain(plan.__dict__), teacher=teacher, corpus=corpus))
    return plan


def _plain(value: Any) -> Any:
    """JSON's view of a value (tuples become lists), so stored and new plans compare equal."""
    import json

    return json.loads(json.dumps(value))


def _stage(name: str, fn, ctx) -> Stage:
    """A byteify stage: `fn(ctx)`, described by its stage function's docstring (the teacher and
    report stages are lambdas around theirs); the report is redrawn every time."""
    described = getattr(stages, f"stage_{name}") if name in ("teacher", "report") else fn
    return Stage(name, functools.partial(fn, ctx), first_line(described), always=name == "report")


def run_byteify(
    workdir: str,
    teacher: str,
    corpus: str = "default",
    options: Mapping | None = None,
    minutes: float = DEFAULT_MINUTES,
    stage_numbers: Sequence[int] = (1, 2),
    baseline: bool = True,
    progress: bool = True,
    heldout: str | None = None,
) -> dict:
    """Runs (or resumes) a byteification and returns its report (`report.json`).

    Args:
      workdir: where everything goes (local); a re-run resumes it.
      teacher: the token LM (a directory or a run, relative, `~` or gs://), with its tokenizer.
      corpus: any corpus spec `blt-jax train` reads, or "default".
      options: `default_options()`, overridden (a config file's `get_config`).
      minutes: the budget the step counts are planned from where the options leave them 0.
      stage_numbers: (1,) stops after stage 1; (1, 2) does both (2 alone needs 1 done).
      baseline: also train the same BLT from scratch.
      progress: progress bars.
      heldout: held-out text given apart (any corpus spec; say, text the teacher never read); by
        default some of the corpus's documents are held out.
    """
    import jax

    from blt_jax.metrics.perf import total_peak_flops

    workdir = resolve(workdir)
    teacher = resolve(teacher)
    corpus = corpus_spec(corpus)
    heldout = None if heldout is None else corpus_spec(heldout)
    options = _plain(dict(options or default_options()))
    wanted = set(stage_numbers)
    if not wanted or not wanted <= {1, 2}:
        raise InputError(f"--stages {','.join(map(str, stage_numbers))}: expected 1, 2 or 1,2")
    paths = Paths(workdir)
    # Before anything is written: a wrong teacher, options that cannot fit it, an unreadable corpus.
    config = stages.teacher_config(teacher)
    check_options(options, config)
    if options["data"]["batch_size"] % jax.device_count():
        raise InputError(
            f"data.batch_size {options['data']['batch_size']} cannot be split over {jax.device_count()} devices"
        )
    if load_result(paths, "corpus") is None:
        from blt_jax.data.split import check_corpus

        for spec in (corpus, heldout):
            if spec is not None:
                check_corpus(spec)
    os.makedirs(workdir, exist_ok=True)
    named = corpus if heldout is None else f"{corpus} (held out: {heldout})"
    plan = open_plan(paths, make_plan(options, config, minutes, total_peak_flops()), teacher, named)
    ctx = Context(paths, plan, config, corpus, progress, heldout)
    todo: list[tuple[str, Any]] = [("teacher", lambda c: stages.stage_teacher(teacher, paths, progress))]
    todo += [
        (name, getattr(stages, f"stage_{name}"))
        for name in STAGE_ONE
        if name != "embeddings" or stages.teacher_embeddings(ctx)
    ]
    if 2 in wanted:
        todo += [
            (name, getattr(stages, f"stage_{name}"))
            for name in STAGE_TWO
            if stages.entropy_patched(ctx) or name == "stage2"
        ]
        if baseline:
            todo.append(("baseline", stages.stage_baseline))
    todo.append(("report", lambda c: stages.stage_report(c, baseline)))
    print(
        f"blt-jax byteify in {workdir}: teacher {teacher} (d{plan.teacher_dim} x {plan.teacher_layers}), corpus "
        f"{corpus}; stage 1 {plan.stage1_steps} steps, stage 2 {plan.stage2_steps}, baseline "
        f"{plan.baseline_steps if baseline else 'none'}, of {plan.bytes_per_step:,} bytes",
        flush=True,
    )
    run_stages(paths, [_stage(name, fn, ctx) for name, fn in todo])
    return read_json(paths.report_json)
