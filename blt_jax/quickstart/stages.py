"""The quickstart's stages, each a function of (workdir, plan) that can be re-run: a finished stage
records its result in `<workdir>/stages/<name>.json` and is skipped next time; an interrupted one
resumes from what it left (training checkpoints, finished entropy shards, the copied corpus).

    corpus       sample the default corpus (Python's standard library) into corpus/{train,validation}
    entropy_lm   train the entropy byte LM                          -> entropy_lm/ (a training workdir)
    entropy_pass per-byte entropies of the sample                   -> entropies/{train,validation}
    calibrate    the threshold giving the target mean patch length  -> calibration.json
    blt          train the BLT on the entropy-patched stream         -> blt/
    baseline     train a byte LM of the BLT's training FLOPs/byte    -> baseline/
    plots        loss curves, BPB vs training FLOPs, entropy figure  -> *.png
    generate     a continuation with the cached decoder             -> sample.txt

The layout is the same as running the CLI commands by hand (see the README), so every stage can be
inspected or redone with `blt-jax train / patch / calibrate / eval / plot-entropy / generate`.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from collections.abc import Callable

import numpy as np

from blt_jax.paths import write_json
from blt_jax.quickstart import plan as planning
from blt_jax.quickstart.plan import QuickstartPlan
from blt_jax.stages import StagePaths, StageResult, read_metrics, require_result, train_run

SAMPLE_TEXT = 'def greet(name):\n    return "Hello, " + name + "!"\n'
PROMPT = "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n\n    def "


class Paths(StagePaths):
    """Where each stage writes, under one workdir."""

    def __init__(self, workdir: str):
        super().__init__(workdir)
        self.corpus_train = os.path.join(workdir, "corpus", "train")
        self.corpus_validation = os.path.join(workdir, "corpus", "validation")
        self.entropy_lm = os.path.join(workdir, "entropy_lm")
        self.entropies_train = os.path.join(workdir, "entropies", "train")
        self.entropies_validation = os.path.join(workdir, "entropies", "validation")
        self.calibration = os.path.join(workdir, "calibration.json")
        self.blt = os.path.join(workdir, "blt")
        self.baseline = os.path.join(workdir, "baseline")
        self.loss_curves = os.path.join(workdir, "loss_curves.png")
        self.bpb_vs_flops = os.path.join(workdir, "bpb_vs_flops.png")
        self.entropy_figure = os.path.join(workdir, "entropy_figure.png")
        self.sample = os.path.join(workdir, "sample.txt")


# ---- corpus ------------------------------------------------------------------------------------


def sample_files(files: list[str], budget: int, out_dir: str, seed: int) -> tuple[int, int]:
    """Copies a seeded sample of `files` (each cut at a line end to at most 1/64 of the budget, so the
    sample mixes many files and the entropy pass has documents for all its lanes) until `budget`
    bytes; returns (files, bytes) written."""
    tmp = out_dir + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    order = np.random.default_rng(seed).permutation(len(files))
    cap, total, count = max(budget // 64, 2048), 0, 0
    for index in order:
        if total >= budget:
            break
        with open(files[index], "rb") as f:
            data = f.read(min(cap, budget - total) + 1)
        if len(data) > min(cap, budget - total):
            data = data[: data.rfind(b"\n", 0, min(cap, budget - total)) + 1]
        if not data.strip():
            continue
        name = f"{count:05d}_{os.path.basename(files[index])}"
        with open(os.path.join(tmp, name), "wb") as f:
            f.write(data)
        total, count = total + len(data), count + 1
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return count, total


def stage_corpus(paths: Paths, plan: QuickstartPlan, progress: bool) -> StageResult:
    """Samples the training text the BLT reads and the held-out text every model is evaluated on."""
    from blt_jax.data.sources import stdlib_files

    start = time.perf_counter()
    train_files, train_bytes = sample_files(stdlib_files("train"), plan.corpus_bytes, paths.corpus_train, plan.seed)
    val_files, val_bytes = sample_files(
        stdlib_files("validation"), plan.validation_bytes, paths.corpus_validation, plan.seed
    )
    seconds = time.perf_counter() - start
    return StageResult(
        "corpus",
        seconds,
        train_bytes + val_bytes,
        (train_bytes + val_bytes) / max(seconds, 1e-9),
        detail=dict(
            train_files=train_files,
            train_bytes=train_bytes,
            validation_files=val_files,
            validation_bytes=val_bytes,
            source="Python standard library (default corpus)",
        ),
    )


# ---- training ----------------------------------------------------------------------------------


def entropy_experiment(paths: Paths, plan: QuickstartPlan) -> dict:
    """The entropy LM run: all of the default corpus's training split, evaluated on the held-out sample."""
    return planning.experiment_dict(
        planning.entropy_model_dict(plan), plan, plan.entropy_steps, "default", paths.corpus_validation
    )


def stage_entropy_lm(paths: Paths, plan: QuickstartPlan, progress: bool) -> StageResult:
    """Trains the entropy byte LM on the default corpus (all of its training split)."""
    raw = entropy_experiment(paths, plan)
    flops = planning.model_flops_per_byte(raw["model"], plan.spec.row_bytes)
    return train_run(
        "entropy_lm",
        raw,
        paths.entropy_lm,
        progress,
        dict(flops_per_byte=flops, note=f"{plan.entropy_steps} steps, {flops / 1e6:.1f} MFLOP/byte"),
    )


# ---- entropy pass and calibration ----------------------------------------------------------------


def stage_entropy_pass(paths: Paths, plan: QuickstartPlan, progress: bool) -> StageResult:
    """Runs the trained entropy LM over the training sample and the held-out text, storing entropies."""
    from blt_jax.api import load_entropy_model
    from blt_jax.data.entropy_pass import PassOptions, run_pass

    config, params = load_entropy_model(paths.entropy_lm)
    options = PassOptions(docs_per_shard=32, chunk=min(1024, 4 * config.stack.window), lanes=8, progress=progress)
    start = time.perf_counter()
    manifests = [
        run_pass(src, out, config, params, os.path.abspath(paths.entropy_lm), options)
        for src, out in (
            (paths.corpus_train, paths.entropies_train),
            (paths.corpus_validation, paths.entropies_validation),
        )
    ]
    seconds = time.perf_counter() - start
    total = sum(m["counts"]["bytes"] for m in manifests)
    tokens = sum(m["counts"]["tokens"] for m in manifests)
    mean_entropy = sum(m["mean_entropy"] * m["counts"]["tokens"] for m in manifests) / tokens
    return StageResult(
        "entropy_pass",
        seconds,
        total,
        total / max(seconds, 1e-9),
        detail=dict(
            note=f"mean entropy {mean_entropy:.3f} nats",
            mean_entropy=mean_entropy,
            documents=sum(m["counts"]["documents"] for m in manifests),
            train=paths.entropies_train,
            validation=paths.entropies_validation,
        ),
    )


def stage_calibrate(paths: Paths, plan: QuickstartPlan, progress: bool) -> StageResult:
    """Finds the global threshold whose mean patch length over the stored entropies is the target."""
    from blt_jax.patching.calibrate import calibrate
    from blt_jax.patching.store import sample_stored

    start = time.perf_counter()
    entropies = sample_stored(paths.entropies_train, max_tokens=400_000, seed=plan.seed)
    result = calibrate(entropies, plan.target_patch_length, "global")
    write_json(paths.calibration, dataclasses.asdict(result))
    seconds = time.perf_counter() - start
    print(result.summary())
    return StageResult(
        "calibrate",
        seconds,
        result.tokens,
        result.tokens / max(seconds, 1e-9),
        mean_patch_length=result.achieved_mean,
        detail=dict(
            note=f"threshold {result.threshold:.4f} (target {plan.target_patch_length})",
            threshold=result.threshold,
            target=plan.target_patch_length,
            patches=result.patches,
            histogram=list(result.histogram),
        ),
    )


def calibrated(paths: Paths) -> tuple[float, float]:
    """(threshold, achieved mean patch length) of the calibration stage."""
    result = require_result(paths, "calibrate")
    return result.detail["threshold"], result.mean_patch_length


# ---- the BLT and its baseline ------------------------------------------------------------------


def blt_experiment(paths: Paths, plan: QuickstartPlan) -> dict:
    """The BLT run: entropy patching at the calibrated threshold over the stored entropies."""
    threshold, _ = calibrated(paths)
    model = planning.blt_model_dict(plan, threshold)
    return planning.experiment_dict(
        model,
        plan,
        plan.blt_steps,
        paths.entropies_train,
        paths.entropies_validation,
        patching=planning.blt_patching(threshold),
    )


def baseline_experiment(paths: Paths, plan: QuickstartPlan) -> tuple[dict, float, float]:
    """The byte LM of matched compute: (experiment, its FLOPs/byte, the BLT's FLOPs/byte)."""
    threshold, mean_len = calibrated(paths)
    blt_flops = planning.model_flops_per_byte(planning.blt_model_dict(plan, threshold), plan.spec.row_bytes, mean_len)
    model = planning.baseline_model_dict(plan, blt_flops)
    raw = planning.experiment_dict(model, plan, plan.blt_steps, paths.corpus_train, paths.corpus_validation)
    return raw, planning.model_flops_per_byte(model, plan.spec.row_bytes), blt_flops


def stage_blt(paths: Paths, plan: QuickstartPlan, progress: bool) -> StageResult:
    """Trains the BLT on the packed, entropy-patched stream."""
    raw = blt_experiment(paths, plan)
    _, mean_len = calibrated(paths)
    flops = planning.model_flops_per_byte(raw["model"], plan.spec.row_bytes, mean_len)
    return train_run(
        "blt",
        raw,
        paths.blt,
        progress,
        dict(
            flops_per_byte=flops,
            threshold=raw["model"]["patching"]["threshold"],
            note=f"{plan.blt_steps} steps, {flops / 1e6:.1f} MFLOP/byte",
        ),
    )


def stage_baseline(paths: Paths, plan: QuickstartPlan, progress: bool) -> StageResult:
    """Trains the byte-level transformer whose training FLOPs per byte match the BLT's, on the same
    number of bytes (so both spend the same training compute)."""
    raw, flops, blt_flops = baseline_experiment(paths, plan)
    stack = raw["model"]["stack"]
    return train_run(
        "baseline",
        raw,
        paths.baseline,
        progress,
        dict(
            flops_per_byte=flops,
            blt_flops_per_byte=blt_flops,
            note=f"d{stack['dim']} x {stack['n_layers']} layers, {flops / 1e6:.1f} MFLOP/byte",
        ),
    )


# ---- plots and generation ----------------------------------------------------------------------


def stage_plots(paths: Paths, plan: QuickstartPlan, progress: bool) -> StageResult:
    """Loss curves, BPB against training FLOPs, and the entropy figure of a sample paragraph."""
    from blt_jax.api import load_entropy_model
    from blt_jax.quickstart import report

    start = time.perf_counter()
    runs = {
        name: (read_metrics(path), require_result(paths, name).detail["flops_per_byte"])
        for name, path in (("blt", paths.blt), ("baseline", paths.baseline), ("entropy_lm", paths.entropy_lm))
    }
    report.plot_loss_curves(paths.loss_curves, runs, plan.bytes_per_step)
    report.plot_bpb_vs_flops(
        paths.bpb_vs_flops, {k: v for k, v in runs.items() if k != "entropy_lm"}, plan.bytes_per_step
    )
    config, params = load_entropy_model(paths.entropy_lm)
    threshold, _ = calibrated(paths)
    report.entropy_figure(paths.entropy_figure, config, params, SAMPLE_TEXT, threshold)
    return StageResult(
        "plots",
        time.perf_counter() - start,
        detail=dict(
            note="loss_curves.png bpb_vs_flops.png entropy_figure.png",
            files=[paths.loss_curves, paths.bpb_vs_flops, paths.entropy_figure],
        ),
    )


def stage_generate(
    paths: Paths, plan: QuickstartPlan, progress: bool, prompt: str = PROMPT, max_new_bytes: int | None = None
) -> StageResult:
    """Samples a continuation of a prompt with the cached decoder and prints it as it is produced."""
    import sys

    from blt_jax.api import from_training_run
    from blt_jax.tokenizer import Utf8Stream

    model = from_training_run(paths.blt, paths.entropy_lm)
    max_new = max_new_bytes or (48 if plan.scale == "tiny" else 240)
    print(f"--- prompt + sampled continuation (temperature 0.7, top-p 0.95) ---\n{prompt}", end="")
    stream = Utf8Stream(sys.stdout)
    start = time.perf_counter()
    result = model.generate_tokens(
        prompt, max_new, temperature=0.7, top_p=0.95, seed=plan.seed, on_bytes=lambda row, data: stream.write(data)
    )
    seconds = time.perf_counter() - start
    stream.close()
    print("\n---")
    text = result.texts[0]
    with open(paths.sample, "w", encoding="utf-8") as f:
        f.write(prompt + text)
    produced = len(result.tokens[0])
    return StageResult(
        "generate",
        seconds,
        produced,
        produced / max(seconds, 1e-9),
        detail=dict(note="sample.txt (cached decoding)", prompt=prompt, completion=text, path=paths.sample),
    )


STAGES: tuple[tuple[str, Callable[[Paths, QuickstartPlan, bool], StageResult]], ...] = (
    ("corpus", stage_corpus),
    ("entropy_lm", stage_entropy_lm),
    ("entropy_pass", stage_entropy_pass),
    ("calibrate", stage_calibrate),
    ("blt", stage_blt),
    ("baseline", stage_baseline),
    ("plots", stage_plots),
    ("generate", stage_generate),
)
