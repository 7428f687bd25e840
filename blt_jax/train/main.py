"""`blt-jax train`: a thin absl entry point around `train_and_evaluate`.

  blt-jax train --config experiments/tiny.py[:arg] --workdir DIR [--config.train.steps=50 ...]
"""

from __future__ import annotations

import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "experiment file[:arg] defining get_config()", lock_config=True)
flags.DEFINE_string("workdir", None, "run directory (resumed if it holds checkpoints)")
flags.DEFINE_bool("progress", True, "show a progress bar")


def _maybe_initialize_distributed() -> None:
    """Joins the other processes of a multi-host run (Cloud TPU pods set the environment)."""
    import jax

    multi_host = any(os.environ.get(k) for k in ("TPU_WORKER_HOSTNAMES", "JAX_COORDINATOR_ADDRESS",
                                                 "COORDINATOR_ADDRESS", "SLURM_JOB_ID"))
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    if multi_host and (len(hosts.split(",")) > 1 or not hosts):
        jax.distributed.initialize()


def _main(argv) -> None:
    del argv
    from blt_jax.config import ConfigError
    from blt_jax.train.config import experiment_from_dict
    from blt_jax.train.loop import train_and_evaluate

    if FLAGS.config is None or FLAGS.workdir is None:
        print("blt-jax train: error: --config and --workdir are required", file=sys.stderr)
        sys.exit(2)
    try:
        experiment = experiment_from_dict(FLAGS.config)
    except ConfigError as e:
        print(f"blt-jax train: error in the configuration: {e}", file=sys.stderr)
        sys.exit(2)
    _maybe_initialize_distributed()
    summary = train_and_evaluate(experiment, FLAGS.workdir, progress=FLAGS.progress)
    metrics, evaluation = summary["metrics"], summary["eval"]
    if metrics:
        rate = "" if metrics["bytes_per_s"] is None else (
            f", {metrics['bytes_per_s']:,.0f} bytes/s, MFU {100 * metrics['mfu']:.1f}%")
        print(f"step {metrics['step']}: loss {metrics['loss']:.4f}, bpb {metrics['bpb']:.4f}, "
              f"mean patch {metrics['mean_patch_len']:.2f}{rate}")
    if evaluation:
        print(f"eval at step {evaluation['step']}: bpb {evaluation['eval_bpb']:.4f}, "
              f"mean patch {evaluation['eval_mean_patch_len']:.2f}")
    if summary["preempted"]:
        print(f"stopped by {summary.get('stop_signal') or 'SIGTERM'} at step {summary['step']}; checkpoint saved in "
              f"{FLAGS.workdir}; the same command resumes")


def run(argv: list[str]) -> None:
    """Runs the entry with `argv` = ["blt-jax train", *flags]."""
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax and grain log every save at INFO
    logging.getLogger("blt_jax").setLevel(logging.INFO)
    app.run(_main, argv=argv)
