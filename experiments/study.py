"""The runs of a `blt-jax study` as experiment files, to train (or retrain) one arm by hand.

  blt-jax train --config experiments/study.py:blt_space@1 --workdir runs/study/arms/blt_space/seed1
  blt-jax train --config "experiments/study.py:byte_lm@0@runs/my_study" --workdir ...

The argument is `ARM[@SEED[@WORKDIR]]` (seed 0, workdir runs/study): the plan (`plan.json`) and the
matched models (`arms.json`) are read from the study's workdir, so its preprocessing stages (corpus
through arms) must have run there (`blt-jax study` runs them first).
"""

import os

import ml_collections

from blt_jax.study import plan as planning
from blt_jax.study import stages


def get_config(arg=None) -> ml_collections.ConfigDict:
    arm, _, rest = (arg or planning.REFERENCE_ARM).partition("@")
    seed, _, workdir = rest.partition("@")
    workdir = workdir or os.path.join("runs", "study")
    paths = stages.Paths(workdir)
    plan = planning.load_plan(os.path.join(workdir, "plan.json"))
    if arm not in plan.all_arms:
        raise ValueError(
            f"{workdir} has no study arm {arm!r}; its arms: {', '.join(plan.all_arms)} (ARM[@SEED[@WORKDIR]])"
        )
    return ml_collections.ConfigDict(stages.run_experiment(paths, plan, arm, int(seed or 0)))
