"""The stages of `blt-jax byteify`, each re-runnable: a finished stage records its result in
`<workdir>/stages/<name>.json` and is skipped next time; an interrupted training run resumes from its
checkpoint.

    teacher       the teacher in our format, with its tokenizer               -> teacher/
    corpus        held-out and training text of the corpus                   -> corpus/{validation,train}
    measure       the teacher's bytes per token and held-out bits per byte
    embeddings    the encoder's byte and hash tables from the teacher's       -> embeddings.safetensors
    stage1        the BLT beside its frozen teacher, on the teacher's tokens -> stage1/
    entropy_lm    the entropy LM of stage 2's patches                        -> entropy_lm/
    entropy_pass  its per-byte entropies of both splits                      -> entropies/
    calibrate     the threshold whose patches are as long as teacher tokens  -> calibration.json
    stage2        everything trained, the latent at a lower rate             -> stage2/ (the result)
    baseline      the same BLT from scratch, as many steps and bytes          -> baseline/
    report        held-out bits per byte of all of them                      -> report.{json,md}

Every training run is an ordinary `blt-jax train` workdir: `eval`, `generate`, `export` and `lm-eval`
take stage2/ (and the baseline) like any run.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time

import numpy as np

from blt_jax.byteify import plan as planning
from blt_jax.byteify.plan import ByteifyPlan
from blt_jax.config import TokenLMConfig
from blt_jax.errors import InputError
from blt_jax.paths import replacing, write_json
from blt_jax.quickstart import stages as qs
from blt_jax.stages import StageResult, load_result, require_result, train_run


class Paths(qs.Paths):
    """Where each stage writes, under one workdir (the quickstart's names for the entropy stages)."""

    def __init__(self, workdir: str):
        super().__init__(workdir)
        self.teacher = os.path.join(workdir, "teacher")
        self.stage1 = os.path.join(workdir, "stage1")
        self.stage2 = os.path.join(workdir, "stage2")
        self.plan = os.path.join(workdir, "plan.json")
        self.embeddings = os.path.join(workdir, "embeddings.safetensors")
        self.report_json = os.path.join(workdir, "report.json")
        self.report_md = os.path.join(workdir, "report.md")


@dataclasses.dataclass(frozen=True)
class Context:
    """What every stage reads: where things go, the plan, the teacher's configuration, the corpus."""

    paths: Paths
    plan: ByteifyPlan
    teacher: TokenLMConfig
    corpus: str
    progress: bool = True
    heldout: str | None = None  # held-out text given apart (else some of the corpus's documents)


def teacher_config(path: str) -> TokenLMConfig:
    """The configuration of a teacher (a Llama-family Hugging Face directory, a token LM of ours, or a
    token LM's training run), checked to be a token LM with a tokenizer, without reading its weights.

    Raises:
      NotFound / InputError: in one line, naming what is missing or wrong.
    """
    from blt_jax import paths
    from blt_jax.convert.llama import config_from_llama, read_config
    from blt_jax.convert.native import read_meta
    from blt_jax.data.token_patches import open_model_tokenizer
    from blt_jax.errors import NotFound
    from blt_jax.loading import detect_layout, runs
    from blt_jax.models import model_config_from_dict, require_kind

    resolved = paths.resolve(path)
    if runs.is_training_run(resolved):
        config = runs.read_run_config(resolved).model
    else:
        if not paths.isdir(resolved):
            raise NotFound(f"--teacher {path}: no such directory")
        layout = detect_layout(resolved)
        if layout == "llama":
            config = config_from_llama(read_config(resolved))
        elif layout == "native":
            config = model_config_from_dict(read_meta(resolved)["model"])
        else:
            raise InputError(f"--teacher {path} holds a BLT, not a token LM to byteify")
    require_kind(config, "token_lm", "byteify's --teacher", path)
    try:
        open_model_tokenizer(resolved)
    except NotFound as e:
        raise NotFound(
            f"--teacher {path}: no tokenizer beside the model ({e}); byteify patches stage 1 with the teacher's tokens"
        ) from None
    return config


# ---- the teacher, the corpus, and what the teacher makes of it -----------------------------------


def stage_teacher(source: str, paths: Paths, progress: bool) -> StageResult:
    """Writes the teacher in our format, with its tokenizer (what stage 1 reads)."""
    from blt_jax.api import load_token_model
    from blt_jax.params import count

    start = time.perf_counter()
    teacher = load_token_model(source)
    teacher.save(paths.teacher)
    stack = teacher.config.stack
    note = (
        f"d{stack.dim} x {stack.n_layers} blocks, {stack.n_heads} heads ({stack.n_kv_heads} kv), "
        f"{teacher.config.vocab_size} ids, {count(teacher.params) / 1e6:.2f}M parameters"
    )
    return StageResult(
        "teacher", time.perf_counter() - start, detail=dict(note=note, source=source, path=paths.teacher)
    )


def stage_corpus(ctx: Context) -> StageResult:
    """Splits the corpus into held-out text (every model is scored on it) and training text (or samples
    both, from the corpus and the held-out text given apart)."""
    from blt_jax.data.split import sample_corpus, split_corpus

    start = time.perf_counter()
    if ctx.heldout is None:
        detail = split_corpus(
            ctx.corpus,
            ctx.paths.corpus_train,
            ctx.paths.corpus_validation,
            ctx.plan.corpus_bytes,
            ctx.plan.validation_bytes,
        )
    else:
        train = sample_corpus(ctx.corpus, ctx.paths.corpus_train, ctx.plan.corpus_bytes)
        held = sample_corpus(ctx.heldout, ctx.paths.corpus_validation, ctx.plan.validation_bytes, seed=1)
        detail = dict(
            train_documents=train["documents"],
            train_bytes=train["bytes"],
            validation_documents=held["documents"],
            validation_bytes=held["bytes"],
            heldout=ctx.heldout,
        )
    if detail["validation_bytes"] < ctx.plan.bytes_per_step:
        raise InputError(
            f"{ctx.corpus}: only {detail['validation_bytes']:,} bytes could be held out, less than one "
            f"batch of {ctx.plan.bytes_per_step:,}; give a bigger corpus"
        )
    note = f"{detail['train_bytes']:,} training bytes, {detail['validation_bytes']:,} held out"
    return StageResult(
        "corpus",
        time.perf_counter() - start,
        detail["train_bytes"] + detail["validation_bytes"],
        detail=dict(detail, note=note, source=ctx.corpus),
    )


def bytes_per_token(tokenizer, documents: list[bytes]) -> float:
    """Mean bytes per teacher token over documents as rows hold them (BOS and EOS one byte and one
    token each)."""
    tokens = sum(len(tokenizer.pieces(d)[0]) + 2 for d in documents)
    return sum(len(d) + 2 for d in documents) / max(tokens, 1)


def stage_measure(ctx: Context) -> StageResult:
    """Measures the teacher's bytes per token on the training text and its held-out bits per byte."""
    from blt_jax.data.sources import iter_documents
    from blt_jax.data.token_patches import open_model_tokenizer
    from blt_jax.evals.heldout import heldout_bpb

    start = time.perf_counter()
    documents = [doc.data for doc in iter_documents(ctx.paths.corpus_train)]
    ratio = bytes_per_token(open_model_tokenizer(ctx.paths.teacher), documents)
    # The teacher reads windows of as many tokens as a BLT row holds bytes / bytes per token: the
    # same span of text as the BLTs' windows.
    window = max(8, int(ctx.plan.option("data", "row_bytes") / ratio))
    bpb, scored = heldout_bpb(ctx.paths.teacher, None, ctx.paths.corpus_validation, window + 1, ctx.progress)
    return StageResult(
        "measure",
        time.perf_counter() - start,
        scored,
        bpb=bpb,
        detail=dict(
            note=f"{ratio:.2f} bytes per token; held-out {bpb:.4f} bits per byte",
            bytes_per_token=ratio,
            teacher_bpb=bpb,
            window_tokens=window,
        ),
    )


def measured(ctx: Context) -> dict:
    return require_result(ctx.paths, "measure").detail


def teacher_embeddings(ctx: Context) -> bool:
    return ctx.plan.option("stage1", "embeddings") == "teacher"


def stage_embeddings(ctx: Context) -> StageResult:
    """Starts the encoder's byte and hash tables from the teacher's token embeddings."""
    from blt_jax.byteify.embeddings import encoder_tables
    from blt_jax.convert.native import read_param
    from blt_jax.convert.safetensors_io import write_safetensors
    from blt_jax.data.token_patches import open_model_tokenizer
    from blt_jax.models import model_config_from_dict

    start = time.perf_counter()
    config = model_config_from_dict(planning.blt_dict(ctx.plan, ctx.teacher, dict(mode="space")))
    embedding = read_param(ctx.paths.teacher, "tok_embeddings/embedding")
    strings = open_model_tokenizer(ctx.paths.teacher).token_strings()
    tables, coverage = encoder_tables(config, embedding, strings)
    with replacing(ctx.paths.embeddings) as tmp:
        write_safetensors(tmp, tables)
    return StageResult(
        "embeddings",
        time.perf_counter() - start,
        detail=dict(
            note=coverage.note(config.hash.group_sizes if config.hash else ()),
            **dataclasses.asdict(coverage),
            path=ctx.paths.embeddings,
        ),
    )


# ---- the two stages ------------------------------------------------------------------------------


def stage1_experiment(ctx: Context) -> dict:
    """Stage 1's run: the BLT patched by the teacher's tokens, its latent (the teacher's blocks) and the
    teacher's ends frozen, with the teacher losses."""
    plan, paths = ctx.plan, ctx.paths
    model = planning.distill_dict(plan, ctx.teacher, paths.teacher)
    patches = planning.row_patches(plan.option("data", "row_bytes"), measured(ctx)["bytes_per_token"])
    init_from = f"blt/global_transformer={paths.teacher},teacher={paths.teacher}"
    if teacher_embeddings(ctx):
        init_from += f",blt/local_encoder={paths.embeddings}"
    return planning.experiment_dict(
        plan,
        model,
        plan.stage1_steps,
        paths.corpus_train,
        paths.corpus_validation,
        plan.option("stage1", "learning_rate"),
        patches,
        init_from=init_from,
        freeze="blt/global_transformer,teacher",
    )


def _flops(raw: dict, mean_patch_length: float) -> float:
    return planning.flops_per_byte(raw["model"], raw["data"]["row_bytes"], mean_patch_length)


def _train(name: str, raw: dict, workdir: str, ctx: Context, mean_patch_length: float) -> StageResult:
    flops = _flops(raw, mean_patch_length)
    return train_run(
        name,
        raw,
        workdir,
        ctx.progress,
        dict(flops_per_byte=flops, note=f"{raw['train']['steps']} steps, {flops / 1e6:.2f} MFLOP/byte"),
    )


def stage_stage1(ctx: Context) -> StageResult:
    """Trains the BLT beside its frozen teacher on the teacher's tokens (byteification, stage 1)."""
    return _train("stage1", stage1_experiment(ctx), ctx.paths.stage1, ctx, measured(ctx)["bytes_per_token"])


def stage_entropy_lm(ctx: Context) -> StageResult:
    """Trains the entropy LM of stage 2's patches on the training text."""
    plan = ctx.plan
    raw = planning.experiment_dict(
        plan,
        planning.entropy_model_dict(plan),
        plan.entropy_steps,
        ctx.paths.corpus_train,
        ctx.paths.corpus_validation,
        plan.option("entropy", "learning_rate"),
    )
    return _train("entropy_lm", raw, ctx.paths.entropy_lm, ctx, 1.0)


def stage_entropy_pass(ctx: Context) -> StageResult:
    """Stores the entropy LM's per-byte entropies of the training and held-out text."""
    return qs.stage_entropy_pass(ctx.paths, None, ctx.progress)


def stage_calibrate(ctx: Context) -> StageResult:
    """Finds the entropy threshold whose patches are as long as the teacher's tokens on average."""
    from blt_jax.patching.calibrate import calibrate
    from blt_jax.patching.store import sample_stored

    start = time.perf_counter()
    target = measured(ctx)["bytes_per_token"]
    result = calibrate(sample_stored(ctx.paths.entropies_train, max_tokens=400_000, seed=0), target, "global")
    write_json(ctx.paths.calibration, dataclasses.asdict(result))
    return StageResult(
        "calibrate",
        time.perf_counter() - start,
        result.tokens,
        mean_patch_length=result.achieved_mean,
        detail=dict(
            note=f"threshold {result.threshold:.4f} -> {result.achieved_mean:.2f} bytes per "
            f"patch (teacher: {target:.2f} per token)",
            threshold=result.threshold,
            target=target,
        ),
    )


def entropy_patched(ctx: Context) -> bool:
    return ctx.plan.option("stage2", "patcher") == "entropy"


def blt_experiment(ctx: Context, steps: int, learning_rate: float, **train) -> tuple[dict, float]:
    """A run of the byteified BLT as stage 2 patches it (entropy at the calibrated threshold, or the
    teacher's tokens): (experiment, mean patch length)."""
    plan, paths = ctx.plan, ctx.paths
    if entropy_patched(ctx):
        calibration = require_result(paths, "calibrate")
        patching = dict(mode="entropy", threshold=calibration.detail["threshold"])
        entropy = planning.entropy_model_dict(plan)
        entropy.pop("kind")
        model = planning.blt_dict(plan, ctx.teacher, patching, entropy)
        sources, length = (paths.entropies_train, paths.entropies_validation), calibration.mean_patch_length
    else:
        model = planning.blt_dict(plan, ctx.teacher, dict(mode="bpe", tokenizer=paths.teacher))
        sources, length = (paths.corpus_train, paths.corpus_validation), measured(ctx)["bytes_per_token"]
    patches = planning.row_patches(plan.option("data", "row_bytes"), length)
    return planning.experiment_dict(plan, model, steps, *sources, learning_rate, patches, **train), length


def stage_stage2(ctx: Context) -> StageResult:
    """Trains everything from stage 1's BLT, the latent at a lower learning rate (byteification, stage 2)."""
    factor = ctx.plan.option("stage2", "latent_lr_factor")
    raw, length = blt_experiment(
        ctx,
        ctx.plan.stage2_steps,
        ctx.plan.option("stage2", "learning_rate"),
        init_from=f"={ctx.paths.stage1}#blt",
        lr_multipliers=f"global_transformer={factor:g}",
    )
    return _train("stage2", raw, ctx.paths.stage2, ctx, length)


def stage_baseline(ctx: Context) -> StageResult:
    """Trains the same BLT from random initialisation, for as many steps and bytes as both stages."""
    raw, length = blt_experiment(ctx, ctx.plan.baseline_steps, ctx.plan.option("baseline", "learning_rate"))
    return _train("baseline", raw, ctx.paths.baseline, ctx, length)


# ---- the report ------------------------------------------------------------------------------------


def _heldout(ctx: Context, name: str, run: str) -> float:
    """Held-out bits per byte of a stage-2-like run: scored document by document (`heldout_bpb`) when
    its patches are its own (entropy), else its evaluation over the held-out rows."""
    from blt_jax.evals.heldout import heldout_bpb

    if entropy_patched(ctx):
        return heldout_bpb(
            run, ctx.paths.entropy_lm, ctx.paths.corpus_validation, ctx.plan.option("data", "row_bytes"), ctx.progress
        )[0]
    return require_result(ctx.paths, name).bpb


def _stage_row(result: StageResult, stage: int | str, bpb: float, steps: int) -> dict:
    trained = result.bytes or 0
    return dict(
        stage=stage,
        val_bpb=bpb,
        steps=steps,
        bytes=trained,
        train_flops=result.detail["flops_per_byte"] * trained,
        wall_seconds=result.seconds,
        workdir=result.detail["workdir"],
    )


def stage_report(ctx: Context, baseline: bool = True) -> StageResult:
    """Scores every model on the held-out text and writes report.json and report.md."""
    from blt_jax.byteify.report import write_markdown

    start = time.perf_counter()
    paths, plan = ctx.paths, ctx.plan
    m = measured(ctx)
    rows = []
    one = require_result(paths, "stage1")
    rows.append(_stage_row(one, 1, one.bpb, plan.stage1_steps))
    two = load_result(paths, "stage2")
    if two is not None:
        rows.append(_stage_row(two, 2, _heldout(ctx, "stage2", paths.stage2), plan.stage2_steps))
    base = load_result(paths, "baseline") if baseline else None
    report = dict(
        teacher=require_result(paths, "teacher").detail["source"],
        teacher_bpb=m["teacher_bpb"],
        bytes_per_token=m["bytes_per_token"],
        stages=rows,
        baseline_bpb=None if base is None else _heldout(ctx, "baseline", paths.baseline),
        baseline=None if base is None else _stage_row(base, "baseline", math.nan, plan.baseline_steps),
        final_run=(paths.stage2 if two is not None else paths.stage1),
        patcher=plan.option("stage2", "patcher"),
        threshold=(
            require_result(paths, "calibrate").detail["threshold"] if two is not None and entropy_patched(ctx) else None
        ),
        scoring=(
            "teacher and stage 2 / baseline: every held-out document in windows of one row (the teacher's "
            "windows hold as many tokens as a row holds bytes / bytes per token); stage 1: its evaluation "
            "over the held-out rows, patched by the teacher's tokens"
        ),
    )
    if report["baseline"] is not None:
        report["baseline"]["val_bpb"] = report["baseline_bpb"]
    write_json(paths.report_json, report)
    write_markdown(paths.report_md, report)
    best = rows[-1]["val_bpb"]
    note = f"teacher {m['teacher_bpb']:.4f}, byteified {best:.4f}" + (
        f", baseline {report['baseline_bpb']:.4f} bits per byte" if base is not None else " bits per byte"
    )
    return StageResult("report", time.perf_counter() - start, bpb=best, detail=dict(note=note))


def finite(value: float | None) -> bool:
    return value is not None and bool(np.isfinite(value))
