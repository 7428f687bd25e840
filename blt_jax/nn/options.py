"""How a model runs, as opposed to what it is: one frozen options object every module takes.

Rematerialisation, scanned stacks and the attention implementation change memory, compile time and
speed, never the parameters or what the model computes (up to float rounding). They are not model
fields: two runs that differ only in them share checkpoints, exports and configurations, and none of
them reaches `StackConfig` or an exported `config.json`. Modules read what concerns them
(`remat_for`, `scans`, `splash`), so a new switch is a field here and the one place that uses it.
"""

from __future__ import annotations

import dataclasses

import jax

from blt_jax.config import ConfigError

ATTENTION_IMPLS = ("auto", "dense", "splash")
# Keys of an experiment's `model` section that are run options (-> field here): taken out before the
# model's configuration is read, so they never reach it or an export; every experiment file has them.
MODEL_KEYS = {"attention_impl": "attention", "splash_block_q": "splash_block_q", "splash_block_kv": "splash_block_kv"}
REMAT_ALL = "all"  # the key of a policy for every stack without one of its own
REMAT_STACKS = (REMAT_ALL, "encoder", "latent", "decoder", "entropy", "token")  # the stacks `remat_for` names
SCAN_STACKS = ("all", "latent", "entropy", "token")  # "all": every stack the model can scan


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """Run-time choices of a model's implementation.

    Attributes:
      remat: (stack or "all", policy) pairs: activation rematerialisation of each stack's blocks
        (`nn.block.REMAT_POLICIES`; stacks: encoder, latent, decoder, entropy, token).
      scan: stacks run as one `nn.scan` over stacked layers (training only; no cache).
      attention: "dense" (einsum and masked softmax, or banded chunks for windows), "splash" (Pallas
        splash kernels: compiled on TPU, run in interpret mode elsewhere, for tests) or "auto"
        (splash on TPU, dense elsewhere).
      splash_block_q / splash_block_kv: the kernels' query and key block sizes (rows shorter than
        a block use one block of their padded length).
      platform: the platform the program is for (None: this process's default backend); ahead-of-time
        compiles for a TPU from another host say "tpu".
    """

    remat: tuple[tuple[str, str], ...] = ()
    scan: tuple[str, ...] = ()
    attention: str = "auto"
    splash_block_q: int = 512
    splash_block_kv: int = 512
    platform: str | None = None

    def __post_init__(self):
        if self.attention not in ATTENTION_IMPLS:
            raise ConfigError("attention_impl", f"must be one of {', '.join(ATTENTION_IMPLS)}, got {self.attention!r}")
        for name in ("splash_block_q", "splash_block_kv"):  # also the model section's keys
            value = getattr(self, name)
            if not isinstance(value, int) or value < 128 or value % 128:
                raise ConfigError(name, f"must be a multiple of 128 (TPU lanes), got {value!r}")
        object.__setattr__(self, "remat", tuple((str(k), str(v)) for k, v in dict(self.remat).items()))
        object.__setattr__(self, "scan", tuple(self.scan))

    def remat_for(self, stack: str) -> str:
        """The rematerialisation policy of one stack ("none" unless named, or set for all)."""
        policies = dict(self.remat)
        return policies.get(stack, policies.get(REMAT_ALL, "none"))

    def scans(self, stack: str) -> bool:
        """Whether a stack runs as one `nn.scan` over stacked layers."""
        return stack in self.scan

    @property
    def on_tpu(self) -> bool:
        return (self.platform or jax.default_backend()) == "tpu"

    @property
    def splash(self) -> bool:
        """Attention runs through the splash kernels (where one fits: `nn.attention`)."""
        return self.attention == "splash" or (self.attention == "auto" and self.on_tpu)

    @property
    def interpret(self) -> bool:
        """Kernels run in Pallas's interpret mode (off TPU, where they cannot compile)."""
        return not self.on_tpu

    def replace(self, **changes) -> RunOptions:
        return dataclasses.replace(self, **changes)


DEFAULT = RunOptions()
DENSE = RunOptions(attention="dense")


def from_model_keys(raw: dict) -> RunOptions:
    """The run options of a model section's run keys (`MODEL_KEYS`), validated (errors name the key).

    Raises:
      ConfigError.
    """
    return RunOptions(**{field: raw[key] for key, field in MODEL_KEYS.items() if key in raw})


def model_key_defaults() -> dict:
    """{model section key: its default} of the run options an experiment file may leave out."""
    return {key: getattr(DEFAULT, field) for key, field in MODEL_KEYS.items()}
