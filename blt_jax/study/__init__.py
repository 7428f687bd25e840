"""`blt-jax study`: the paper's comparisons at matched training compute, on any corpus (see stages.py).

    from blt_jax.study import run_study
    report = run_study("runs/study", corpus="my_texts/", minutes=60, seeds=2)

Every arm is an ordinary training run in `<workdir>/arms/<arm>/seed<k>/` (`experiments/study.py`
gives each one to `blt-jax train` by hand); the study adds the shared preprocessing, the compute
matching, a held-out score per run and the report.
"""

from __future__ import annotations

import functools
import os

from blt_jax.errors import InputError
from blt_jax.paths import read_json, resolve, write_json
from blt_jax.stages import Stage, StageResult, first_line, load_result, run_stages
from blt_jax.study import plan as planning
from blt_jax.study import stages
from blt_jax.study.plan import ARMS, DEFAULT_MINUTES, DEFAULT_SEEDS, StudyPlan, make_plan
from blt_jax.study.stages import Paths

PLAN_FILE = "plan.json"
FIXED = (
    ("corpus", stages.stage_corpus),
    ("tokenizer", stages.stage_tokenizer),
    ("entropy_lm", stages.stage_entropy_lm),
    ("entropy_pass", stages.stage_entropy_pass),
    ("calibrate", stages.stage_calibrate),
    ("arms", stages.stage_arms),
)

__all__ = ["ARMS", "DEFAULT_MINUTES", "DEFAULT_SEEDS", "Paths", "StudyPlan", "make_plan", "open_plan", "run_study"]


def corpus_spec(corpus: str) -> str:
    """How a study records its corpus: "default", or the path made absolute (a relative path means
    the same text whatever directory the study is resumed from)."""
    return corpus if corpus == "default" or corpus.startswith("default:") else resolve(corpus)


def open_plan(workdir: str, plan: StudyPlan, corpus: str) -> StudyPlan:
    """The plan of `workdir`: `plan` for a new workdir; the stored one when resuming (made with the same
    options and corpus), so a re-run never mixes budgets. A stored plan whose corpus was never split
    (the first stage failed, say on a corpus too small) is replaced: nothing was done under it.

    Raises:
      InputError: the workdir holds a study planned with other options or another corpus.
    """
    path = os.path.join(workdir, PLAN_FILE)
    if os.path.exists(path) and load_result(Paths(workdir), "corpus") is not None:
        raw = read_json(path)
        stored = planning.load_plan(path)
        options = lambda p: (
            p.minutes,
            p.scale,
            p.arms,
            p.seeds,
            p.target_patch_length,
            p.patch_sizes,
            p.bpe_vocab,
        )
        if options(stored) != options(plan) or raw.get("corpus") != corpus:
            raise InputError(
                f"{workdir} holds a study of {raw.get('corpus')} planned with --minutes {stored.minutes:g} "
                f"--scale {stored.scale} --arms {','.join(stored.arms)} --seeds {stored.seeds} "
                f"--target-patch-length {stored.target_patch_length:g}"
                + (f" --patch-sizes {','.join(f'{x:g}' for x in stored.patch_sizes)}" if stored.patch_sizes else "")
                + f" --bpe-vocab {stored.bpe_vocab}; re-run with those to resume it, or choose "
                "another --workdir"
            )
        return stored
    os.makedirs(workdir, exist_ok=True)
    write_json(path, dict(planning.describe(plan), corpus=corpus))
    return plan


def run_study(
    workdir: str,
    corpus: str = "default",
    minutes: float = DEFAULT_MINUTES,
    scale: str = "small",
    arms: tuple[str, ...] = tuple(ARMS),
    seeds: int = DEFAULT_SEEDS,
    target_patch_length: float = 4.5,
    patch_sizes: tuple[float, ...] = (),
    bpe_vocab: int | None = None,
    progress: bool = True,
) -> dict:
    """Runs (or resumes) every stage of a study and returns its report (`report.json`).

    Args:
      workdir: where everything goes (local); a re-run resumes it.
      corpus: a text directory, file or glob (any spec `blt-jax train` reads), or "default".
      minutes: wall-clock budget on a 2-core CPU (sets the step counts; see plan.py).
      scale: "small" (default) or "tiny" (CI, notebooks).
      arms: the arms (the reference arm, a BLT patched by entropy, is always trained).
      seeds: seeds per arm.
      target_patch_length: mean patch length of the entropy threshold; static patch size.
      patch_sizes: more mean patch lengths, a BLT arm each at matched FLOPs (patch-size scaling).
      bpe_vocab: the BPE tokenizer's vocabulary (default: 4096; 512 at the tiny scale).
      progress: progress bars.
    """
    import jax

    workdir = resolve(workdir)  # the runs' configs name files under it; Orbax needs it absolute
    corpus = corpus_spec(corpus)
    spec = planning.SCALE_SPECS[scale] if scale in planning.SCALE_SPECS else None
    if spec is not None and spec.batch_size % jax.device_count():
        raise InputError(
            f"the study's {spec.batch_size} rows per step cannot be split over "
            f"{jax.device_count()} devices; run it on 1, 2, 4 or 8 devices"
        )
    # Before anything is written: a mistyped corpus or a missing package leaves no workdir behind.
    # A study resumed after its corpus split needs the corpus no more.
    if load_result(Paths(workdir), "corpus") is None:
        stages.check_corpus(corpus)
    if "bpe_lm" in arms:
        from blt_jax.data import bpe
        from blt_jax.errors import MissingDependency

        try:
            bpe.library()
        except MissingDependency:
            raise MissingDependency(
                "the bpe_lm arm trains a BPE tokenizer with `tokenizers`: pip install -c "
                'constraints.txt -e ".[study]" (or leave the arm out with --arms)'
            ) from None
    plan = open_plan(
        workdir,
        make_plan(
            minutes,
            scale,
            planning.parse_arms(",".join(arms)),
            seeds,
            target_patch_length,
            tuple(patch_sizes),
            bpe_vocab,
        ),
        corpus,
    )
    paths = Paths(workdir)
    fixed = [(name, stage) for name, stage in FIXED if name != "tokenizer" or "bpe_lm" in plan.arms]
    todo = fixed + [(stages.run_name(arm, seed), _run_stage(arm, seed)) for arm, seed in plan.runs()]
    todo.append(("report", stages.stage_report))
    print(
        f"blt-jax study in {workdir}: {corpus}, arms {', '.join(plan.all_arms)}, {plan.seeds} seed(s), "
        f"{plan.arm_steps} steps of {plan.bytes_per_step:,} bytes per run, {plan.scale} models",
        flush=True,
    )
    run_stages(
        paths,
        [
            Stage(name, functools.partial(fn, paths, plan, corpus, progress), first_line(fn), always=name == "report")
            for name, fn in todo
        ],
    )
    return read_json(paths.report_json)


def _run_stage(arm: str, seed: int):
    def stage(paths: Paths, plan: StudyPlan, corpus: str, progress: bool) -> StageResult:
        return stages.train_arm(paths, plan, arm, seed, progress)

    stage.__doc__ = f"trains {planning.label(arm)} with seed {seed}, then scores the held-out text"
    return stage
