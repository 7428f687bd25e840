"""`blt-jax quickstart`: the whole BLT pipeline on a laptop CPU in one command (see stages.py).

    from blt_jax.quickstart import run_quickstart
    results = run_quickstart("runs/quickstart", minutes=12)

Stage by stage from Python: `make_plan`, then the `stage_*` functions of `blt_jax.quickstart.stages`
with a `Paths(workdir)`.
"""

from __future__ import annotations

import dataclasses
import functools
import os

from blt_jax.errors import InputError
from blt_jax.paths import resolve, write_json
from blt_jax.quickstart import plan as planning
from blt_jax.quickstart.plan import DEFAULT_MINUTES, QuickstartPlan, make_plan
from blt_jax.quickstart.report import summary_table
from blt_jax.quickstart.stages import STAGES, Paths
from blt_jax.stages import Stage, StageResult, first_line, run_stages

PLAN_FILE = "plan.json"

__all__ = ["DEFAULT_MINUTES", "Paths", "QuickstartPlan", "StageResult", "make_plan", "open_plan", "run_quickstart"]


def open_plan(workdir: str, plan: QuickstartPlan) -> QuickstartPlan:
    """The plan of `workdir`: `plan` for a new workdir; the stored one (made with the same options)
    when resuming, so a re-run never mixes budgets.

    Raises:
      ValueError: the workdir was planned with other options.
    """
    path = os.path.join(workdir, PLAN_FILE)
    if os.path.exists(path):
        stored = planning.load_plan(path)
        options = lambda p: (p.minutes, p.scale, p.target_patch_length, p.seed)
        # Only the options must match: the stored step counts win, even if a newer version would plan
        # other ones, so a run always finishes the plan it started.
        if options(stored) != options(plan):
            raise InputError(
                f"{workdir} holds a quickstart planned with --minutes {stored.minutes:g} --scale {stored.scale} "
                f"--target-patch-length {stored.target_patch_length:g} --seed {stored.seed}; re-run with those "
                "options to resume it, or choose another --workdir"
            )
        return stored
    os.makedirs(workdir, exist_ok=True)
    write_json(path, planning.describe(plan))
    return plan


def run_quickstart(
    workdir: str,
    minutes: float = DEFAULT_MINUTES,
    scale: str = "small",
    target_patch_length: float = 4.5,
    seed: int = 0,
    progress: bool = True,
    only: tuple[str, ...] | None = None,
) -> list[StageResult]:
    """Runs (or resumes) every stage and prints the summary table.

    Args:
      workdir: where everything goes; a re-run resumes it.
      minutes: wall-clock budget on a 2-core CPU (sets the training steps; see plan.py).
      scale: "small" (default) or "tiny" (CI, notebooks).
      target_patch_length: mean patch length to calibrate the entropy threshold to.
      seed: data sample, order and initialisation.
      progress: progress bars.
      only: run just these stages (their prerequisites must have finished).

    Returns:
      The result of every stage, in order.
    """
    import jax

    workdir = resolve(workdir)  # the stages' configs name files under it; Orbax needs it absolute
    plan = open_plan(workdir, make_plan(minutes, scale, target_patch_length, seed))
    if plan.spec.batch_size % jax.device_count():
        raise InputError(
            f"the quickstart's {plan.spec.batch_size} rows per step cannot be split over "
            f"{jax.device_count()} devices; run it on 1, 2, 4 or 8 devices"
        )
    paths = Paths(workdir)
    names = [name for name, _ in STAGES]
    for name in only or ():
        if name not in names:
            raise InputError(f"unknown stage {name!r}; stages: {', '.join(names)}")
    print(
        f"blt-jax quickstart in {workdir}: {plan.scale} models, {plan.entropy_steps} entropy-LM steps, "
        f"{plan.blt_steps} BLT and baseline steps of {plan.bytes_per_step:,} bytes, "
        f"target patch length {plan.target_patch_length:g}",
        flush=True,
    )
    todo = [Stage(name, functools.partial(fn, paths, plan, progress), first_line(fn)) for name, fn in STAGES]
    results = run_stages(paths, todo, only)
    table = summary_table(results)
    print("\n" + table)
    write_json(os.path.join(workdir, "summary.json"), [dataclasses.asdict(r) for r in results])
    with open(os.path.join(workdir, "summary.txt"), "w") as f:
        f.write(table + "\n")
    return results
