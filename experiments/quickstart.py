"""The quickstart's three training runs as experiment files, for running its stages by hand.

  blt-jax train --config experiments/quickstart.py:entropy_lm --workdir runs/quickstart/entropy_lm
  blt-jax train --config experiments/quickstart.py:blt --workdir runs/quickstart/blt
  blt-jax train --config experiments/quickstart.py:baseline --workdir runs/quickstart/baseline

The argument is `run[@WORKDIR]` (default workdir runs/quickstart): the plan (`plan.json`: scale, steps)
and, for `blt` and `baseline`, the calibrated threshold (`stages/calibrate.json`) are read from the
quickstart workdir, so the corpus, entropy pass and calibration stages must have run there
(`blt-jax quickstart --only corpus ...`, or `blt-jax patch` / `blt-jax calibrate` by hand).
"""

import os

import ml_collections

from blt_jax.quickstart import plan as planning
from blt_jax.quickstart import stages

RUNS = ("entropy_lm", "blt", "baseline")


def get_config(arg=None) -> ml_collections.ConfigDict:
    run, _, workdir = (arg or "entropy_lm").partition("@")
    workdir = workdir or os.path.join("runs", "quickstart")
    if run not in RUNS:
        raise ValueError(f"unknown quickstart run {run!r}; expected one of {', '.join(RUNS)} (optionally @WORKDIR)")
    plan_path = os.path.join(workdir, "plan.json")
    plan = planning.load_plan(plan_path) if os.path.exists(plan_path) else planning.make_plan()
    paths = stages.Paths(workdir)
    if run == "entropy_lm":
        raw = stages.entropy_experiment(paths, plan)
    elif run == "blt":
        raw = stages.blt_experiment(paths, plan)
    else:
        raw = stages.baseline_experiment(paths, plan)[0]
    return ml_collections.ConfigDict(raw)
