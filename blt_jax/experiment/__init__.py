"""An experiment: the files that describe one (`files`: `experiments/<name>.py[:arg]` with
`--config.a.b=v` overrides) and the typed configuration they become (`config`: `ExperimentConfig`).

    from blt_jax.experiment import load_experiment
    from blt_jax.experiment.config import experiment_from_dict
    experiment = experiment_from_dict(load_experiment("experiments/tiny.py", ["train.steps=50"]))

Only the file loader is imported here: the typed configuration brings the data pipeline with it.
"""

from blt_jax.experiment.files import OVERRIDE_PREFIX, apply_override, load_experiment, split_overrides, split_spec

__all__ = ["OVERRIDE_PREFIX", "apply_override", "load_experiment", "split_overrides", "split_spec"]
