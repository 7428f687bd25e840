"""The study's stages, each re-runnable: a finished stage records its result in
`<workdir>/stages/<name>.json` and is skipped next time; an interrupted training run resumes from its
checkpoint.

    corpus        split the corpus into held-out and training text   -> corpus/{validation,train}
    tokenizer     train the BPE tokenizer of the `bpe_lm` arm         -> bpe/tokenizer.json
    entropy_lm    train the entropy LM on the training text           -> entropy_lm/
    entropy_pass  store per-byte entropies of both splits             -> entropies/{train,validation}
    calibrate     the threshold giving the target mean patch length   -> calibration.json
    arms          measure each BLT arm's mean patch length on its
                  training rows, match every arm's training FLOPs     -> arms.json
    <arm>@<seed>  train one arm with one seed, score the held-out text -> arms/<arm>/seed<seed>/
    report        table, report.json and two figures   -> report.{md,json}, bpb_vs_flops.png, bpb_vs_patch_size.png

The layout is that of the quickstart (`blt_jax.quickstart.stages`), whose stages for the entropy pass
and calibration run here unchanged.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import time
from collections.abc import Iterator

import numpy as np

from blt_jax.data.split import check_corpus, pieces, split_corpus  # noqa: F401 - the study's corpus stage
from blt_jax.errors import InputError
from blt_jax.evals.heldout import heldout_bpb
from blt_jax.paths import read_json, write_json
from blt_jax.quickstart import plan as planning
from blt_jax.quickstart import stages as qs
from blt_jax.stages import StageResult, read_metrics, require_result, train_run
from blt_jax.study import arms as arming
from blt_jax.study.plan import REFERENCE_ARM, StudyPlan, describe, is_entropy_arm, label

# Patch lengths are measured on this many training batches of each BLT arm.
MEASURE_BATCHES = 16


class Paths(qs.Paths):
    """Where each stage writes, under one workdir (the quickstart's names, plus the arms)."""

    def __init__(self, workdir: str):
        super().__init__(workdir)
        self.arms = os.path.join(workdir, "arms.json")
        self.report_json = os.path.join(workdir, "report.json")
        self.report_md = os.path.join(workdir, "report.md")
        self.figure = os.path.join(workdir, "bpb_vs_flops.png")
        self.patch_figure = os.path.join(workdir, "bpb_vs_patch_size.png")
        self.tokenizer = os.path.join(workdir, "bpe", "tokenizer.json")

    def run(self, arm: str, seed: int) -> str:
        return os.path.join(self.root, "arms", arm, f"seed{seed}")

    def sources(self) -> dict[str, str]:
        return {
            "train": self.corpus_train,
            "validation": self.corpus_validation,
            "entropies_train": self.entropies_train,
            "entropies_validation": self.entropies_validation,
            "tokenizer": self.tokenizer,
        }


def run_name(arm: str, seed: int) -> str:
    """The stage name of one training run."""
    return f"{arm}@{seed}"


# ---- corpus ------------------------------------------------------------------------------------


def stage_corpus(paths: Paths, plan: StudyPlan, corpus: str, progress: bool) -> StageResult:
    """Splits the corpus into held-out text (every arm is scored on it) and training text."""
    start = time.perf_counter()
    detail = split_corpus(corpus, paths.corpus_train, paths.corpus_validation, plan.corpus_bytes, plan.validation_bytes)
    if detail["validation_bytes"] < plan.bytes_per_step:  # evaluations along the way need one batch
        raise InputError(
            f"{corpus}: only {detail['validation_bytes']:,} bytes could be held out (at most a fifth of "
            f"the documents), less than one batch of {plan.bytes_per_step:,}; give a bigger corpus"
        )
    seconds = time.perf_counter() - start
    total = detail["train_bytes"] + detail["validation_bytes"]
    repeats = plan.arm_steps * plan.bytes_per_step / max(detail["train_bytes"], 1)
    note = f"{detail['train_bytes']:,} training bytes, {detail['validation_bytes']:,} held out"
    if repeats > 1.05:
        note += f" (each arm reads its training text {repeats:.1f} times)"
    return StageResult(
        "corpus", seconds, total, total / max(seconds, 1e-9), detail=dict(detail, source=corpus, note=note)
    )


# ---- the BPE tokenizer ----------------------------------------------------------------------------


def stage_tokenizer(paths: Paths, plan: StudyPlan, corpus: str, progress: bool) -> StageResult:
    """Trains the byte-level BPE tokenizer of the token transformer on the training text."""
    from blt_jax.data.bpe import train_bpe
    from blt_jax.data.sources import iter_documents

    start = time.perf_counter()
    documents = [doc.data for doc in iter_documents(paths.corpus_train)]
    tokenizer = train_bpe(documents, plan.bpe_vocab, paths.tokenizer)
    tokens = sum(len(tokenizer.encode(d, add_bos=False, add_eos=False)) for d in documents)
    total = sum(len(d) for d in documents)
    seconds = time.perf_counter() - start
    return StageResult(
        "tokenizer",
        seconds,
        total,
        total / max(seconds, 1e-9),
        detail=dict(
            note=f"{tokenizer.vocab_size} ids, {total / max(tokens, 1):.2f} bytes per token",
            vocab_size=tokenizer.vocab_size,
            path=paths.tokenizer,
            bytes_per_token=total / max(tokens, 1),
        ),
    )


# ---- the entropy LM ------------------------------------------------------------------------------


def stage_entropy_lm(paths: Paths, plan: StudyPlan, corpus: str, progress: bool) -> StageResult:
    """Trains the entropy LM on the training text (one, shared by every seed)."""
    view = arming.quickstart_view(plan, 0)
    raw = planning.experiment_dict(
        planning.entropy_model_dict(view), view, plan.entropy_steps, paths.corpus_train, paths.corpus_validation
    )
    flops = planning.model_flops_per_byte(raw["model"], plan.spec.row_bytes)
    return train_run(
        "entropy_lm",
        raw,
        paths.entropy_lm,
        progress,
        dict(flops_per_byte=flops, note=f"{plan.entropy_steps} steps, {flops / 1e6:.2f} MFLOP/byte"),
    )


def stage_entropy_pass(paths: Paths, plan: StudyPlan, corpus: str, progress: bool) -> StageResult:
    """Stores the entropy LM's per-byte entropies of the training and held-out text."""
    return qs.stage_entropy_pass(paths, arming.quickstart_view(plan, 0), progress)


def stage_calibrate(paths: Paths, plan: StudyPlan, corpus: str, progress: bool) -> StageResult:
    """Finds the entropy thresholds whose mean patch lengths are the targets."""
    from blt_jax.patching.calibrate import calibrate
    from blt_jax.patching.store import sample_stored

    start = time.perf_counter()
    entropies = sample_stored(paths.entropies_train, max_tokens=400_000, seed=0)
    results = {f"{t:g}": calibrate(entropies, t, "global") for t in (plan.target_patch_length, *plan.patch_sizes)}
    reference = results[f"{plan.target_patch_length:g}"]
    write_json(paths.calibration, {t: dataclasses.asdict(r) for t, r in results.items()})
    for result in results.values():
        print(result.summary())
    note = ", ".join(f"{r.threshold:.4f} -> {r.achieved_mean:.2f}" for r in results.values())
    return StageResult(
        "calibrate",
        time.perf_counter() - start,
        reference.tokens,
        mean_patch_length=reference.achieved_mean,
        detail=dict(
            note=f"thresholds {note}",
            threshold=reference.threshold,
            thresholds={t: r.threshold for t, r in results.items()},
            target=plan.target_patch_length,
        ),
    )


def thresholds(paths: Paths, plan: StudyPlan) -> dict[str, float]:
    """arm -> the calibrated threshold of its target, for every arm patched by entropy."""
    by_target = require_result(paths, "calibrate").detail["thresholds"]
    return {arm: by_target[f"{plan.target_of(arm):g}"] for arm in plan.all_arms if is_entropy_arm(arm)}


# ---- arms ----------------------------------------------------------------------------------------


def _first_batches(raw: dict, batches: int, **changes) -> Iterator[dict]:
    """The first training batches of an experiment dict, its data section changed by `changes`."""
    from blt_jax.data.pipeline import build_dataset
    from blt_jax.experiment.config import experiment_from_dict

    data = dataclasses.replace(experiment_from_dict(raw).data, read_threads=1, **changes)
    return itertools.islice(build_dataset(data), batches)


def measure_patch_length(raw: dict, batches: int = MEASURE_BATCHES) -> float:
    """Mean patch length of a BLT experiment's first training batches, as its training rows hold
    them (document ends and row ends included), with a patch budget that never cuts a row short."""
    from blt_jax.data.packing import mean_patch_length

    real = rows = patches = 0
    row_bytes = raw["data"]["row_bytes"]
    for batch in _first_batches(raw, batches, row_patches=row_bytes + 1):
        real += int(np.sum(batch["mask"]))
        rows += int(batch["tokens"].shape[0])
        patches += int(np.sum(batch["patch_lengths"] > 0))
    return mean_patch_length(real, rows, patches)


def measure_bytes_per_token(raw: dict, batches: int = MEASURE_BATCHES) -> float:
    """Mean bytes per token of a token transformer's first training batches (BOS and EOS targets
    count one byte, as a byte model's do)."""
    total = count = 0.0
    for batch in _first_batches(raw, batches):
        total += float(np.sum(batch["target_bytes"]))
        count += float(np.sum(batch["mask"]))
    return total / max(count, 1.0)


def stage_arms(paths: Paths, plan: StudyPlan, corpus: str, progress: bool) -> StageResult:
    """Matches every arm's training FLOPs per byte to the reference arm's.

    Each BLT arm's mean patch length is measured on its own training rows first.
    """
    start = time.perf_counter()
    by_arm = thresholds(paths, plan)
    lengths = {}
    vocab = None
    for arm in plan.all_arms:
        if arm == "byte_lm":
            continue
        if arm == "bpe_lm":
            vocab = require_result(paths, "tokenizer").detail["vocab_size"]
            row = arming.token_row(plan.spec.row_bytes, 4.0)  # any row length measures the same rate
            probe = arming.ArmModel(arm, arming.token_model(plan, vocab, row, 1e6), 4.0, 0.0, row)
            lengths[arm] = measure_bytes_per_token(arming.experiment(plan, probe, 0, paths.sources()))
            continue
        model = arming.base_model(arm, plan, by_arm.get(arm, by_arm[REFERENCE_ARM]))
        unmatched = arming.ArmModel(arm, model, plan.target_of(arm), 0.0)
        lengths[arm] = measure_patch_length(arming.experiment(plan, unmatched, 0, paths.sources()))
    models = arming.matched_models(plan, by_arm, lengths, vocab)
    write_json(paths.arms, {arm: dataclasses.asdict(m) for arm, m in models.items()})
    target = models[REFERENCE_ARM].train_flops_per_byte
    spread = max(abs(m.train_flops_per_byte / target - 1) for m in models.values())
    note = ", ".join(f"{arm} {m.mean_patch_length:.2f}" for arm, m in models.items() if arm in lengths)
    return StageResult(
        "arms",
        time.perf_counter() - start,
        mean_patch_length=lengths[REFERENCE_ARM],
        detail=dict(
            note=f"patch lengths {note}; FLOPs within {spread:.1%}",
            thresholds=by_arm,
            flops_per_byte=target,
            patch_lengths=lengths,
        ),
    )


def arm_models(paths: Paths) -> dict[str, arming.ArmModel]:
    """The matched models the `arms` stage wrote."""
    if not os.path.exists(paths.arms):
        raise InputError(f"{paths.arms} is missing: run the study's `arms` stage first")
    return {arm: arming.ArmModel(**raw) for arm, raw in read_json(paths.arms).items()}


def run_experiment(paths: Paths, plan: StudyPlan, arm: str, seed: int) -> dict:
    """The training run of one arm and seed (what `experiments/study.py` hands `blt-jax train`)."""
    return arming.experiment(plan, arm_models(paths)[arm], seed, paths.sources())


# In a run's directory: seconds its earlier, interrupted sessions spent.
SPENT_FILE = "study_seconds.json"


def train_arm(paths: Paths, plan: StudyPlan, arm: str, seed: int, progress: bool) -> StageResult:
    """Trains one arm with one seed (resuming its checkpoint) and scores the held-out text."""
    models = arm_models(paths)
    raw = arming.experiment(plan, models[arm], seed, paths.sources())
    workdir = paths.run(arm, seed)
    # Sessions stopped by a signal leave their time behind, so a resumed run reports all of it.
    spent_file = os.path.join(workdir, SPENT_FILE)
    earlier = read_json(spent_file)["seconds"] if os.path.exists(spent_file) else 0.0
    began = time.perf_counter()
    try:
        result = train_run(
            run_name(arm, seed),
            raw,
            workdir,
            progress,
            dict(arm=arm, seed=seed, flops_per_byte=models[arm].train_flops_per_byte),
        )
        start = time.perf_counter()
        entropy = paths.entropy_lm if is_entropy_arm(arm) else None
        bpb, scored = heldout_bpb(
            workdir, entropy, paths.corpus_validation, models[arm].row_length or plan.spec.row_bytes, progress
        )
    except BaseException:  # a signal (in training or scoring), Ctrl-C, an error: the time was spent
        write_json(spent_file, {"seconds": earlier + time.perf_counter() - began})
        raise
    detail = dict(
        result.detail,
        heldout_bpb=bpb,
        heldout_bytes=scored,
        score_seconds=time.perf_counter() - start,
        train_seconds=result.seconds,
        earlier_seconds=earlier,
        note=f"held-out {bpb:.3f} bits/byte, {models[arm].train_flops_per_byte / 1e6:.2f} MFLOP/byte",
    )
    return dataclasses.replace(result, seconds=result.seconds + detail["score_seconds"], detail=detail)


# ---- report --------------------------------------------------------------------------------------


def _params(model: dict) -> tuple[int, int]:
    """(parameters without hash n-gram tables, parameters of the tables) of a model section."""
    from blt_jax.models import model_config_from_dict
    from blt_jax.params import abstract_params, count_by_group

    groups = count_by_group(abstract_params(model_config_from_dict(model)))
    hashed = groups.pop("hash_embeddings", 0)
    return sum(groups.values()), hashed


def report_row(
    plan: StudyPlan, arm: arming.ArmModel, result: StageResult, metrics: list[dict], entropy_flops_per_byte: float
) -> dict:
    """One arm and seed of `report.json` (`metrics`: the run's metrics.jsonl rows)."""
    params, hashed = _params(arm.model)
    inference = arm.train_flops_per_byte / 3  # training = 3 x forward
    kind = arm.kind()
    token_rows = kind.token_rows
    # Bytes per row: N, or a token row's tokens x the measured bytes per token.
    row_bytes = (arm.row_length or plan.spec.row_bytes) * (arm.mean_patch_length if token_rows else 1.0)
    trained = plan.arm_steps * plan.spec.batch_size * row_bytes
    # Patching the training bytes costs one entropy-LM forward per byte.
    extra = entropy_flops_per_byte if is_entropy_arm(arm.arm) else 0.0
    patch_len = next((r["eval_mean_patch_len"] for r in reversed(metrics) if r.get("eval_mean_patch_len")), None)
    return dict(
        arm=arm.arm,
        label=label(arm.arm),
        seed=result.detail["seed"],
        val_bpb=result.detail["heldout_bpb"],
        heldout_bytes=result.detail["heldout_bytes"],
        final_eval_bpb=result.bpb,
        train_flops_per_byte=arm.train_flops_per_byte,
        train_flops=arm.train_flops_per_byte * trained,
        train_flops_per_byte_with_entropy_lm=arm.train_flops_per_byte + extra,
        inference_flops_per_byte=inference,
        inference_flops_per_byte_with_entropy_lm=inference + extra,
        params=params,
        hash_params=hashed,
        # A byte transformer's rows report patches of 1 byte: only patches and tokens group bytes.
        bytes_per_patch_or_token=patch_len if (kind.patching is not None or kind.token_rows) and patch_len else 1.0,
        planned_patch_length=arm.mean_patch_length,
        steps=plan.arm_steps,
        trained_bytes=trained,
        # Training and scoring, in every session of the run (a session killed by SIGKILL leaves no record).
        wall_seconds=result.seconds + result.detail.get("earlier_seconds", 0.0),
        workdir=result.detail["workdir"],
    )


def stage_report(paths: Paths, plan: StudyPlan, corpus: str, progress: bool) -> StageResult:
    """Writes report.json, report.md, bpb_vs_flops.png and bpb_vs_patch_size.png from every finished run."""
    from blt_jax.api import load_entropy_model
    from blt_jax.metrics.flops import entropy_lm_forward_flops
    from blt_jax.study import report

    start = time.perf_counter()
    models = arm_models(paths)
    config, _ = load_entropy_model(paths.entropy_lm)
    n = plan.spec.row_bytes
    entropy_flops = entropy_lm_forward_flops(config, n) / n
    rows, curves = [], {}
    for arm, seed in plan.runs():
        result = require_result(paths, run_name(arm, seed))
        curves[(arm, seed)] = read_metrics(result.detail["workdir"])
        rows.append(report_row(plan, models[arm], result, curves[(arm, seed)], entropy_flops))
    claims = report.orderings(rows)
    entropy_run = require_result(paths, "entropy_lm")
    write_json(
        paths.report_json,
        dict(
            corpus=corpus,
            plan=describe(plan),
            arms=rows,
            orderings=claims,
            entropy_lm_inference_flops_per_byte=entropy_flops,
            entropy_lm_training_flops=entropy_run.detail["flops_per_byte"] * (entropy_run.bytes or 0),
        ),
    )
    text = report.markdown(rows, claims)
    with open(paths.report_md, "w", encoding="utf-8") as f:
        f.write(text)
    report.figure(paths.figure, rows, curves)
    report.patch_size_figure(paths.patch_figure, rows)
    print(text)
    return StageResult(
        "report",
        time.perf_counter() - start,
        detail=dict(
            note="report.md report.json bpb_vs_flops.png bpb_vs_patch_size.png",
            files=[paths.report_md, paths.report_json, paths.figure, paths.patch_figure],
        ),
    )
