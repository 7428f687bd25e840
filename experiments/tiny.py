"""A tiny BLT with a tiny entropy LM, for tests and smoke runs on a CPU (~0.2M parameters): the
experiment `blt-jax smoke` runs by default, kept in the package (blt_jax/experiment/tiny.py) so that
a wheel install has it too.

  blt-jax smoke --config experiments/tiny.py
  blt-jax train --config experiments/tiny.py --workdir runs/tiny --config.train.steps=50
"""

from blt_jax.experiment.tiny import get_config

__all__ = ["get_config"]
