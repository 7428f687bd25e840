"""What several `blt-jax` commands share: the parser class, the `--config` and entropy-model
arguments, path resolution, and SIGTERM as an interruption."""

from __future__ import annotations

import argparse
import contextlib
import signal
from collections.abc import Iterator

from blt_jax.errors import InputError

# Arguments that name files or directories (resolved: ~ expanded, made absolute; gs:// kept).
PATH_ARGS = (
    "checkpoint",
    "entropy_checkpoint",
    "workdir",
    "out",
    "entropies",
    "json",
    "text_file",
    "source",
    "dest",
    "entropy",
    "run",
)


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors are `InputError`s: one line, like every other bad input."""

    def error(self, message: str):
        raise InputError(f"{message} (see blt-jax {self.prog.split()[-1]} --help)")


def add_config_arg(p: argparse.ArgumentParser, what: str, **kwargs) -> None:
    """`--config FILE[:arg]` and its `--config.a.b=v` overrides (split off by `main`): the one way
    every command that reads an experiment takes it (`what`: the help text)."""
    p.add_argument("--config", help=f"{what}; override any field with --config.a.b=v", **kwargs)
    p.set_defaults(overrides=[])


def add_model_args(p: argparse.ArgumentParser) -> None:
    """The entropy LM a command runs: `--checkpoint DIR`, or `--config FILE` and `--seed` for a random one."""
    p.add_argument("--checkpoint", default=None, help="model directory (ours, HF or Meta) holding an entropy LM")
    add_config_arg(p, "experiment file[:arg]: a fresh randomly initialised entropy LM", default=None)
    p.add_argument("--seed", type=int, default=0, help="seed of the random initialisation (with --config)")


def model_config(spec: str, overrides: list[str]):
    """The model config of an experiment file (`FILE[:arg]`) with `--config.a.b=v` overrides."""
    from blt_jax.experiment import load_experiment
    from blt_jax.models import model_config_from_dict

    return model_config_from_dict(load_experiment(spec, overrides).model, "model")


def print_counts(config) -> None:
    """Parameter counts by group, the total, and each companion model's (an entropy LM, a teacher)."""
    from blt_jax.models import model_kind
    from blt_jax.params import abstract_params, count, count_by_group

    abstract = abstract_params(config)
    rows = sorted(count_by_group(abstract).items()) + [("total", count(abstract))]
    for label, companion in model_kind(config).companions.items():
        rows.append((label, count(abstract_params(companion))))
    width = max(len(name) for name, _ in rows)
    for name, n in rows:
        print(f"  {name:<{width}}  {n:>15,}")


def entropy_model(args: argparse.Namespace):
    """(config, params, description) of the entropy LM named by --checkpoint or --config/--seed."""
    import jax

    from blt_jax.api import load_entropy_model
    from blt_jax.models import model_kind
    from blt_jax.params import init_params

    if args.checkpoint:
        if args.overrides:
            raise InputError(f"--config.{args.overrides[0]}: overrides apply to --config, not to --checkpoint")
        config, params = load_entropy_model(args.checkpoint)
        return config, params, args.checkpoint
    if not args.config:
        raise InputError("name the entropy model: --checkpoint DIR, or --config FILE for a fresh random one")
    config = model_kind(model_config(args.config, args.overrides)).entropy_lm
    if config is None:
        raise InputError(f"{args.config} has no entropy_model")
    params = init_params(config, jax.random.key(args.seed))
    return config, params, f"random init of {args.config} (seed {args.seed})"


def resolve_paths(args: argparse.Namespace) -> None:
    """Path arguments made absolute (`~` expanded, relative to the working directory; gs:// kept)."""
    from blt_jax import paths

    for name in PATH_ARGS:
        value = getattr(args, name, None)
        if isinstance(value, str) and value and value != "-":
            setattr(args, name, paths.resolve(value))
    if getattr(args, "prompt_file", None) not in (None, "-"):
        args.prompt_file = paths.resolve(args.prompt_file)


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt while inside (commands that run stages outside a training
    loop, which checkpoints on its own, stop as on Ctrl-C and resume later)."""

    def terminate(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
