"""Resumable stages: what `blt-jax quickstart`, `study` and `byteify` share.

A stage is a named function that does one piece of a long job and returns a `StageResult`; the
result is recorded in `<workdir>/stages/<name>.json`, and a stage with a record is skipped the next
time the job runs (a stage marked `always`, such as a report drawn from every result, runs again).
An interrupted stage resumes from what it left: training runs from their checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import time
from collections.abc import Callable, Sequence

from blt_jax.paths import read_json, write_json


class StageInterrupted(Exception):
    """A training stage stopped on SIGTERM / Ctrl-C after saving a checkpoint (re-running resumes it)."""

    def __init__(self, stage: str, signal_name: str, step: int):
        super().__init__(
            f"stage {stage} stopped by {signal_name} at step {step} after saving a checkpoint; "
            "run the same command again to resume"
        )
        self.stage, self.signal_name, self.step = stage, signal_name, step


@dataclasses.dataclass(frozen=True)
class StageResult:
    """What a stage reports in the summary table.

    Attributes:
      name: the stage.
      seconds: wall-clock time of the run that finished it (compilation included).
      bytes: bytes it processed (trained on, patched, generated).
      bytes_per_s: its throughput (training: median of the logged windows, compilation excluded).
      bpb: validation bits per byte of the model it trained (None if it trains none).
      mean_patch_length: mean patch length it produced or trained with (None if not patching).
      detail: anything else worth keeping (paths, thresholds, FLOPs; `note`: printed when it finishes).
    """

    name: str
    seconds: float
    bytes: int | None = None
    bytes_per_s: float | None = None
    bpb: float | None = None
    mean_patch_length: float | None = None
    detail: dict = dataclasses.field(default_factory=dict)


class StagePaths:
    """A job's workdir and where its stages' records go (jobs add the paths of what they write)."""

    def __init__(self, workdir: str):
        self.root = workdir
        self.stages = os.path.join(workdir, "stages")

    def stage(self, name: str) -> str:
        return os.path.join(self.stages, f"{name}.json")


def load_result(paths: StagePaths, name: str) -> StageResult | None:
    """The recorded result of a finished stage, or None."""
    path = paths.stage(name)
    return StageResult(**read_json(path)) if os.path.exists(path) else None


def save_result(paths: StagePaths, result: StageResult) -> None:
    os.makedirs(paths.stages, exist_ok=True)
    write_json(paths.stage(result.name), dataclasses.asdict(result))


def require_result(paths: StagePaths, name: str) -> StageResult:
    result = load_result(paths, name)
    if result is None:
        raise RuntimeError(f"stage {name!r} has not finished in {paths.root}; run it first")
    return result


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage of a job.

    Attributes:
      name: its record's name.
      run: does the work.
      what: one line saying what it does (printed when it starts).
      always: run even when it has a record (a report drawn from every other result).
    """

    name: str
    run: Callable[[], StageResult]
    what: str
    always: bool = False


def run_stages(paths: StagePaths, stages: Sequence[Stage], only: Sequence[str] | None = None) -> list[StageResult]:
    """Runs the stages in order, skipping those with a record, and prints a line as each starts and
    ends (`[i/n] name: ...`).

    Args:
      paths: the job's workdir.
      stages: the stages, in order.
      only: run just these (their prerequisites must have finished); the others are left alone.

    Returns:
      The result of every stage run or recorded, in order.
    """
    results = []
    for index, stage in enumerate(stages, 1):
        tag = f"[{index}/{len(stages)}] {stage.name}"
        done = load_result(paths, stage.name)
        if done is not None and not stage.always:
            print(f"{tag}: done earlier ({done.seconds:.1f}s), skipped", flush=True)
            results.append(done)
            continue
        if only and stage.name not in only:
            continue
        print(f"{tag}: {stage.what}", flush=True)
        start = time.perf_counter()
        result = stage.run()
        save_result(paths, result)
        results.append(result)
        note = result.detail.get("note")
        print(f"{tag}: finished in {time.perf_counter() - start:.1f}s" + (f" ({note})" if note else ""), flush=True)
    return results


def first_line(fn: Callable) -> str:
    """The first line of a function's docstring (what a stage function says it does)."""
    lines = (fn.__doc__ or "").strip().splitlines()
    return lines[0] if lines else ""


def read_metrics(workdir: str) -> list[dict]:
    """The rows of a training workdir's metrics.jsonl (training and evaluation rows)."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def train_run(name: str, raw: dict, workdir: str, progress: bool, extra: dict | None = None) -> StageResult:
    """Trains (or resumes) one run of experiment dict `raw` in `workdir` and summarises it.

    Raises:
      StageInterrupted: a signal stopped the run (after its checkpoint).
    """
    from blt_jax.experiment.config import experiment_from_dict
    from blt_jax.models import model_kind
    from blt_jax.train.loop import train_and_evaluate

    experiment = experiment_from_dict(raw)
    start = time.perf_counter()
    summary = train_and_evaluate(experiment, workdir, progress=progress)
    seconds = time.perf_counter() - start
    if summary["preempted"]:
        raise StageInterrupted(name, summary.get("stop_signal") or "a signal", summary["step"])
    rates = [r["bytes_per_s"] for r in read_metrics(workdir) if r.get("bytes_per_s") is not None]
    evaluation = summary["eval"]
    trained = experiment.train.steps * experiment.data.batch_size * experiment.data.row_bytes
    mean_len = evaluation.get("eval_mean_patch_len") if model_kind(experiment.model).patching else None
    return StageResult(
        name,
        seconds,
        trained,
        statistics.median(rates) if rates else trained / seconds,
        bpb=evaluation.get("eval_bpb"),
        mean_patch_length=mean_len,
        detail=dict(
            workdir=workdir,
            steps=experiment.train.steps,
            eval_bytes=evaluation.get("eval_bytes"),
            resumed_from_step=summary["start_step"],
            **(extra or {}),
        ),
    )
