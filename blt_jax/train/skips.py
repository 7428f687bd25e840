"""What the loop does about steps whose loss or gradient norm was not finite.

The train step itself keeps the parameters and optimizer state of such a step unchanged and reports
`skipped` (`train.step.train_step`); the host reads it one step late, with the other metrics, so the
device never waits. `SkipWatch` counts the skips, logs each with the step and the batch it came from,
and decides: go on, rewind to the newest checkpoint (`train.rewind_on_spike`), or stop after
`train.max_skipped_steps` in a row.
"""

from __future__ import annotations

import dataclasses
import enum
import logging

logger = logging.getLogger("blt_jax.train")


class Verdict(enum.Enum):
    GO_ON = "go on"
    REWIND = "rewind"
    STOP = "stop"


@dataclasses.dataclass
class SkipWatch:
    """Counts skipped steps of one run (the counts start at 0 in every session).

    Attributes:
      max_in_a_row: `train.max_skipped_steps`.
      rewind: `train.rewind_on_spike`.
      total: skipped steps so far.
      in_a_row: skipped steps since the last one that was not.
      first_in_a_row: the step (1-based, as checkpoints count) of the first skip of the current run.
      rewinds: rewinds so far.
    """

    max_in_a_row: int
    rewind: bool = False
    total: int = 0
    in_a_row: int = 0
    first_in_a_row: int = 0
    rewinds: int = 0

    def observe(self, step: int, values: dict[str, float]) -> Verdict:
        """Takes the metrics of step `step` (0-based: the step that made checkpoint `step + 1`)."""
        if not values.get("skipped"):
            self.in_a_row = 0
            return Verdict.GO_ON
        self.total += 1
        self.in_a_row += 1
        if self.in_a_row == 1:
            self.first_in_a_row = step + 1
        logger.warning(
            "step %d: loss %s, gradient norm %s: the update was skipped (%d in a row, %d in all)",
            step + 1,
            values.get("loss"),
            values.get("grad_norm"),
            self.in_a_row,
            self.total,
        )
        if self.in_a_row >= self.max_in_a_row:
            return Verdict.STOP
        return Verdict.REWIND if self.rewind else Verdict.GO_ON

    def stop_message(self, step: int, newest_checkpoint: int | None) -> str:
        """The one line a stopped run ends with."""
        kept = (
            f"the newest checkpoint, step {newest_checkpoint}, holds the parameters before them"
            if newest_checkpoint is not None
            else "no checkpoint was written before them"
        )
        return (
            f"training stopped at step {step + 1}: the loss or its gradient was not finite in {self.in_a_row} "
            f"steps in a row (from step {self.first_in_a_row}; train.max_skipped_steps="
            f"{self.max_in_a_row}); {kept}. Lower train.learning_rate, or look at the batches of those steps"
        )
