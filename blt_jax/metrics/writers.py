"""Metric writers (process 0 only): `metrics.jsonl` (one JSON object per logged step) and TensorBoard."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping

import jax

from blt_jax import paths


class MetricsWriter:
    """Appends metrics to `<workdir>/metrics.jsonl` and TensorBoard events in `<workdir>/tensorboard`.

    On an object store (`gs://`), which cannot append, `metrics.jsonl` is rewritten whole at most
    every `upload_every` seconds, at `flush()` (the loop calls it with every checkpoint) and at
    `close()`: a bucket takes about one write per second per object, and each upload costs the whole
    file. TensorBoard's events go through tensorboardX's own writer for that store.

    Args:
      workdir: the run directory (local path or URI).
      enabled: write at all (default: only on process 0).
      upload_every: seconds between uploads of `metrics.jsonl` on an object store.
    """

    def __init__(self, workdir: str, enabled: bool | None = None, upload_every: float = 30.0):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._jsonl = self._tb = None
        self._path = paths.join(workdir, "metrics.jsonl")
        self._remote = paths.is_uri(workdir)
        self._lines: list[str] = []
        self._upload_every = upload_every
        self._uploaded_at = time.monotonic()
        self._dirty = False
        if self.enabled:
            paths.makedirs(workdir)
            if self._remote:
                self._lines = paths.read_text(self._path).splitlines() if paths.exists(self._path) else []
            else:
                self._jsonl = open(self._path, "a")
            try:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(paths.join(workdir, "tensorboard"))
            except ImportError:  # TensorBoard events are optional; metrics.jsonl is always written
                self._tb = None

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": int(step)}
        row.update({k: (float(v) if v is not None and math.isfinite(float(v)) else None) for k, v in metrics.items()})
        line = json.dumps(row)
        if self._remote:
            self._lines.append(line)
            self._dirty = True
            if time.monotonic() - self._uploaded_at >= self._upload_every:
                self.flush()
        else:
            self._jsonl.write(line + "\n")
            self._jsonl.flush()
        if self._tb is not None:
            for key, value in row.items():
                if key != "step" and value is not None:
                    self._tb.add_scalar(key, value, step)

    def flush(self) -> None:
        """Makes every row written so far visible in `metrics.jsonl` (and TensorBoard's file)."""
        if self._remote and self._dirty:
            paths.write_text(self._path, "\n".join(self._lines) + "\n")
            self._dirty = False
            self._uploaded_at = time.monotonic()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self.enabled:
            self.flush()
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
