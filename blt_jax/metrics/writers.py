"""Metric writers (process 0 only): `metrics.jsonl` (one JSON object per logged step) and TensorBoard."""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping

import jax

from blt_jax import paths
from blt_jax.errors import DiskFull, no_space


def _summary_writer_class():
    """tensorboardX's SummaryWriter, imported without PyTorch.

    tensorboardX imports torch whenever it is installed (only to accept torch tensors as values); we
    write Python floats, and importing torch costs seconds and hundreds of MB at every run's start.
    """
    if "torch" in sys.modules:
        from tensorboardX import SummaryWriter

        return SummaryWriter
    sys.modules["torch"] = None  # `import torch` raises ImportError, which tensorboardX expects
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


class MetricsWriter:
    """Appends metrics to `<workdir>/metrics.jsonl` and TensorBoard events in `<workdir>/tensorboard`.

    On an object store (`gs://`), which cannot append, `metrics.jsonl` is rewritten whole at most
    every `upload_every` seconds, at `flush()` (the loop calls it with every checkpoint) and at
    `close()`: a bucket takes about one write per second per object, and each upload costs the whole
    file. TensorBoard's events are written to a local directory there and uploaded with it, through
    `blt_jax.paths` (so they get the same retries as everything else the run writes).

    Args:
      workdir: the run directory (local path or URI).
      enabled: write at all (default: only on process 0).
      upload_every: seconds between uploads of `metrics.jsonl` on an object store.
      resumed_at: the step a resumed run starts from (0: a new run). Rows after it, written by a
        session that died before its next checkpoint, are dropped: the steps run again and write
        them again, so no row is lost or written twice.
    """

    def __init__(self, workdir: str, enabled: bool | None = None, upload_every: float = 30.0, resumed_at: int = 0):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._jsonl = self._tb = self._tb_local = None
        self._tb_remote = paths.join(workdir, "tensorboard")
        self._path = paths.join(workdir, "metrics.jsonl")
        self._remote = paths.is_uri(workdir)
        self._lines: list[str] = []
        self._upload_every = upload_every
        self._uploaded_at = time.monotonic()
        self._dirty = False
        if self.enabled:
            paths.makedirs(workdir)
            earlier = paths.read_text(self._path).splitlines() if paths.exists(self._path) else []
            kept = [line for line in earlier if line.strip() and _step_of(line) <= resumed_at]
            if self._remote:
                self._lines = kept
                self._dirty = len(kept) != len(earlier)
            else:
                if len(kept) != len(earlier):
                    paths.write_text(self._path, "".join(line + "\n" for line in kept))
                self._jsonl = open(self._path, "a")
            try:
                SummaryWriter = _summary_writer_class()
                if self._remote:
                    self._tb_local = tempfile.mkdtemp(prefix="blt_jax_tensorboard_")
                self._tb = SummaryWriter(self._tb_local or self._tb_remote)
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
            try:
                self._jsonl.write(line + "\n")
                self._jsonl.flush()
            except OSError as error:
                if not no_space(error):
                    raise
                raise DiskFull(
                    f"{self._path}: no space left on the device for a metrics row of {len(line) + 1} bytes"
                ) from error
        if self._tb is not None:
            for key, value in row.items():
                if key != "step" and value is not None:
                    self._tb.add_scalar(key, value, step)

    def flush(self) -> None:
        """Makes every row written so far visible in `metrics.jsonl` (and TensorBoard's file)."""
        if self._tb is not None:
            self._tb.flush()
        if self._remote and self._dirty:
            paths.write_text(self._path, "\n".join(self._lines) + "\n")
            if self._tb_local is not None:
                for name in sorted(os.listdir(self._tb_local)):
                    paths.copy_file(os.path.join(self._tb_local, name), paths.join(self._tb_remote, name))
            self._dirty = False
            self._uploaded_at = time.monotonic()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()  # its last events reach the local file, uploaded by the flush below
            self._tb = None
            self._dirty = self._dirty or self._tb_local is not None
        try:
            if self.enabled:
                self.flush()
        finally:
            if self._jsonl is not None:
                self._jsonl.close()
            if self._tb_local is not None:
                shutil.rmtree(self._tb_local, ignore_errors=True)
                self._tb_local = None


def _step_of(line: str) -> float:
    """The step of a metrics.jsonl row (a row that does not parse, cut short by a crash: infinity)."""
    try:
        return float(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return math.inf
