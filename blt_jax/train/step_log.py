"""The metrics row of each logged step: fetched one step late (so the device never waits), timed
over a window of steps, with FLOPs, MFU and the skip counts.

A window is timed from the start of its first step to the start of the step after its last (the
loop calls `step_started` before each step reads its batch); the final row, with no step after it,
to now. The first step of a session compiles: it is never throughput. Time spent evaluating inside a
window is taken out of it (`pause`).
"""

from __future__ import annotations

import time
from typing import Any

import jax

from blt_jax.data.packing import mean_patch_length
from blt_jax.experiment.config import ExperimentConfig
from blt_jax.metrics.throughput import Window
from blt_jax.metrics.writers import MetricsWriter
from blt_jax.models import model_kind
from blt_jax.train.skips import SkipWatch, Verdict

# What every train step reports (`train.step.train_step`); a kind's objective may add more.
STEP_METRICS = ("loss", "bpb", "grad_norm", "skipped", "lr", "bytes", "patches")


class StepLog:
    """Turns the train step's metrics into `metrics.jsonl` / TensorBoard rows and the progress bar's
    postfix, and feeds the skip watch.

    Args:
      experiment: the run.
      writer: where rows go.
      watch: counts skipped steps and says what to do about them.
      peak_flops: the mesh's peak FLOP/s (for MFU).
      start: the first step of this session (it compiles).
      bar: the progress bar (tqdm), or None.
    """

    def __init__(
        self,
        experiment: ExperimentConfig,
        writer: MetricsWriter,
        watch: SkipWatch,
        peak_flops: float,
        start: int,
        bar: Any = None,
    ):
        self.kind = model_kind(experiment.model)
        self.rows, self.row_bytes = experiment.data.batch_size, experiment.data.row_bytes
        self.log_every = experiment.train.log_every
        self.writer, self.watch, self.peak, self.start, self.bar = writer, watch, peak_flops, start, bar
        self.window = Window()
        self.step_start = self.window.start
        self.last: dict[str, Any] = {}  # the newest row, with its step

    def step_started(self) -> None:
        """Marks the start of a step (before it reads its batch): the end of the window before it."""
        self.step_start = time.perf_counter()

    def pause(self, seconds: float) -> None:
        """Takes time spent on other work (evaluation) out of the window, keeping its steps."""
        self.window.pause(seconds)

    def log(self, step: int, metrics: Any, final: bool = False) -> Verdict:
        """Takes the metrics of step `step` (0-based) and writes a row when one is due (every
        `train.log_every` steps, and the final one). Returns the skip watch's verdict on the step."""
        now = time.perf_counter() if final else self.step_start
        # The step's own global counts (over every process's rows), not this host's share.
        values = {k: float(v) for k, v in jax.device_get(metrics).items()}
        verdict = self.watch.observe(step, values)
        counts = {"bytes": values["bytes"], "patches": values["patches"], "rows": self.rows}
        if step == self.start:  # the first step includes compilation: not throughput
            self.window.restart(now)
        else:
            self.window.add(**counts)
        if (step + 1) % self.log_every == 0 or final:
            self._write(step + 1, values, counts, now)
        return verdict

    def _write(self, done: int, values: dict[str, float], step_counts: dict[str, float], now: float) -> None:
        window = self.window
        timed = window.get("bytes") > 0  # else only the compilation step is in the window
        counts = window.counts if timed else step_counts
        mean_len = mean_patch_length(counts["bytes"], counts["rows"], counts["patches"], self.kind.token_rows)
        flops_per_byte = self.kind.training_flops_per_byte(self.row_bytes, mean_len)
        bytes_per_s = window.rate("bytes", now) if timed else None
        row = {
            "loss": values["loss"],
            "bpb": values["bpb"],
            "grad_norm": values["grad_norm"],
            "lr": values["lr"],
            "bytes_per_s": bytes_per_s,
            "patches_per_s": window.rate("patches", now) if timed else None,
            "mean_patch_len": mean_len,
            "flops_per_byte": flops_per_byte,
            "mfu": flops_per_byte * bytes_per_s / self.peak if timed else None,
            "skipped_steps": self.watch.total,
            "rewinds": self.watch.rewinds,
            # The objective's other losses (a model kind's own: byteification's hidden and distill).
            **{k: v for k, v in values.items() if k not in STEP_METRICS},
        }
        self.writer.write(done, row)
        self.last = {"step": done, **row}
        if self.bar is not None:
            rate = f"{bytes_per_s:,.0f}" if timed else "-"
            self.bar.set_postfix(loss=f"{row['loss']:.3f}", bpb=f"{row['bpb']:.3f}", Bps=rate)
        window.restart(now)
