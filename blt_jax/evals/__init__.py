"""Downstream evaluation: the lm-evaluation-harness backend (`harness`, needs the `eval` extra),
its scoring, the paper's noisings, and task generators (these three need no lm-eval)."""

from blt_jax.errors import MissingDependency

INSTALL = 'lm-evaluation-harness is not installed (the eval extra): pip install -c constraints.txt -e ".[eval]"'


def load_harness():
    """The `harness` module (importing it registers the "blt_jax" model with lm-eval).

    Raises:
      MissingDependency: lm-eval is not installed, naming the install command.
    """
    try:
        from blt_jax.evals import harness as module
    except ImportError as e:
        if "lm_eval" not in str(e):
            raise
        raise MissingDependency(INSTALL) from None
    return module
