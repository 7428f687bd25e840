"""What the quickstart trains, on what, and for how long: model sizes, byte budgets and the baseline of
matched compute, derived from a wall-clock budget.

Budgets are fixed step counts computed from `--minutes` and throughputs measured on a 2-core CPU
(the slowest machine we support), then written to `<workdir>/plan.json`: a re-run resumes the same
plan, and every machine trains the same models on the same bytes (faster machines just finish early).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

from blt_jax import presets
from blt_jax.config import ConfigError, require
from blt_jax.models import model_config_from_dict, model_kind
from blt_jax.paths import read_json

SCALES = ("small", "tiny")
DEFAULT_MINUTES = 12.0
HASH_VOCAB = 8191  # per hash table; the released 500,002 would dwarf these models


class EntropyShape(NamedTuple):
    """The entropy LM's stack."""

    dim: int
    layers: int
    heads: int
    window: int


class LocalShape(NamedTuple):
    """The BLT's byte stacks (encoder and decoder share width, heads and window)."""

    dim: int
    heads: int
    encoder_layers: int
    decoder_layers: int
    window: int


class LatentShape(NamedTuple):
    """The latent transformer."""

    dim: int
    layers: int
    heads: int


@dataclasses.dataclass(frozen=True)
class ScaleSpec:
    """Model widths and row shapes of one quickstart scale.

    Attributes:
      entropy: the entropy LM's stack.
      local: the BLT's byte stacks.
      latent: the latent transformer.
      batch_size / row_bytes: B rows of N bytes per training step (all three models).
      entropy_rate / blt_rate / baseline_rate: training bytes/s on a 2-core CPU (data pipeline
        included; turns minutes into steps).
      pass_rate: bytes/s of the entropy pass on that CPU.
      overhead_minutes: compilation, evaluation, plots and generation.
      validation_bytes: bytes of held-out text every model is evaluated on.
      min_steps: the fewest training steps of a stage whatever the budget.
    """

    entropy: EntropyShape
    local: LocalShape
    latent: LatentShape
    batch_size: int
    row_bytes: int
    entropy_rate: float
    blt_rate: float
    baseline_rate: float
    pass_rate: float
    overhead_minutes: float
    validation_bytes: int
    min_steps: int


SCALE_SPECS = {
    "small": ScaleSpec(
        entropy=EntropyShape(128, 2, 4, 256),
        local=LocalShape(128, 4, 1, 2, 256),
        latent=LatentShape(256, 2, 4),
        batch_size=8,
        row_bytes=512,
        entropy_rate=9_000.0,
        blt_rate=4_300.0,
        baseline_rate=5_500.0,
        pass_rate=40_000.0,
        overhead_minutes=1.75,
        validation_bytes=48_000,
        min_steps=20,
    ),
    # CI and notebooks: every stage in seconds (the models learn little).
    "tiny": ScaleSpec(
        entropy=EntropyShape(32, 1, 2, 64),
        local=LocalShape(32, 2, 1, 1, 64),
        latent=LatentShape(64, 1, 2),
        batch_size=8,
        row_bytes=128,
        entropy_rate=20_000.0,
        blt_rate=12_000.0,
        baseline_rate=20_000.0,
        pass_rate=50_000.0,
        overhead_minutes=0.0,
        validation_bytes=4_000,
        min_steps=40,
    ),
}

# The entropy LM's share of the time left after the overhead; the rest goes to the BLT's bytes, each
# of which is also entropy-patched and trained on by the baseline.
ENTROPY_SHARE = 0.2
# Training text sampled per BLT training byte (rows the patch budget ends early waste a little).
CORPUS_SLACK = 1.15


@dataclasses.dataclass(frozen=True)
class QuickstartPlan:
    """The budgets of one quickstart run.

    Attributes:
      minutes: the wall-clock budget it was planned for.
      scale: "small" (the default) or "tiny".
      target_patch_length: the mean patch length the threshold is calibrated to.
      entropy_steps: training steps of the entropy LM.
      blt_steps: training steps of the BLT and of the baseline (same rows, same bytes).
      corpus_bytes: bytes of the training sample that is entropy-patched (what the BLT reads).
      validation_bytes: bytes of held-out text.
      seed: data order and initialisation.
    """

    minutes: float = DEFAULT_MINUTES
    scale: str = "small"
    target_patch_length: float = 4.5
    entropy_steps: int = 0
    blt_steps: int = 0
    corpus_bytes: int = 0
    validation_bytes: int = 0
    seed: int = 0

    def __post_init__(self):
        require(self.scale in SCALES, "scale", f"must be one of {', '.join(SCALES)}, got {self.scale!r}")
        require(self.minutes > 0, "minutes", f"must be > 0, got {self.minutes}")
        require(
            self.target_patch_length >= 1.5,
            "target_patch_length",
            f"must be >= 1.5 bytes (a patch per byte needs no entropy model), got {self.target_patch_length}",
        )
        for name in ("entropy_steps", "blt_steps", "corpus_bytes", "validation_bytes"):
            require(getattr(self, name) >= 1, name, "must be >= 1 (build plans with make_plan)")

    @property
    def spec(self) -> ScaleSpec:
        return SCALE_SPECS[self.scale]

    @property
    def row_patches(self) -> int:
        """P per row: room for patches 40% shorter than the target on average (rows end early
        rather than overflow), rounded up to a multiple of 8."""
        n = self.spec.row_bytes
        return int(math.ceil(1.4 * n / self.target_patch_length / 8) * 8) + 8

    @property
    def bytes_per_step(self) -> int:
        return self.spec.batch_size * self.spec.row_bytes


def make_plan(
    minutes: float = DEFAULT_MINUTES, scale: str = "small", target_patch_length: float = 4.5, seed: int = 0
) -> QuickstartPlan:
    """Turns a wall-clock budget into step counts (see the module docstring).

    Raises:
      ConfigError: for a non-positive budget, an unknown scale or a target below 1.5 bytes.
    """
    if scale not in SCALE_SPECS:
        raise ConfigError("scale", f"must be one of {', '.join(SCALES)}, got {scale!r}")
    if not minutes > 0:
        raise ConfigError("minutes", f"must be > 0, got {minutes}")
    spec = SCALE_SPECS[scale]
    seconds = max(minutes - spec.overhead_minutes, 0.0) * 60
    per_step = spec.batch_size * spec.row_bytes
    entropy_steps = max(spec.min_steps, int(spec.entropy_rate * seconds * ENTROPY_SHARE / per_step))
    # Seconds per BLT step: train it, train the baseline on as many bytes, entropy-patch its text.
    blt_step_s = per_step * (1 / spec.blt_rate + 1 / spec.baseline_rate + CORPUS_SLACK / spec.pass_rate)
    blt_steps = max(spec.min_steps, int(seconds * (1 - ENTROPY_SHARE) / blt_step_s))
    # The BLT reads every byte it trains on once (it never repeats its sample).
    corpus = int(blt_steps * per_step * CORPUS_SLACK)
    return QuickstartPlan(
        minutes=float(minutes),
        scale=scale,
        target_patch_length=float(target_patch_length),
        entropy_steps=entropy_steps,
        blt_steps=blt_steps,
        corpus_bytes=corpus,
        validation_bytes=spec.validation_bytes,
        seed=seed,
    )


def load_plan(path: str) -> QuickstartPlan:
    """The plan stored in a plan.json (written by `describe`; derived fields ignored)."""
    raw = read_json(path)
    return QuickstartPlan(**{k: v for k, v in raw.items() if k in QuickstartPlan.__dataclass_fields__})


# ---- models ------------------------------------------------------------------------------------


def _stack(dim: int, layers: int, heads: int, window: int | None, rope_theta: float = 10000.0) -> dict:
    # FFN width 8/3 x dim rounded to 32 (the reference's rounding to 256 is too coarse at these sizes).
    ffn = int(math.ceil(8 * dim / 3 / 32) * 32)
    return presets.stack(dim, layers, heads, window=window, rope_theta=rope_theta, ffn_hidden=ffn)


def entropy_model_dict(plan: QuickstartPlan) -> dict:
    """The entropy LM: a small windowed byte transformer."""
    shape = plan.spec.entropy
    return dict(
        kind="entropy_lm",
        stack=_stack(shape.dim, shape.layers, shape.heads, shape.window),
        vocab_size=260,
        dtype="float32",
        param_dtype="float32",
    )


def blt_model_dict(plan: QuickstartPlan, threshold: float) -> dict:
    """The BLT, patching with the entropy LM at the calibrated `threshold`."""
    local, latent = plan.spec.local, plan.spec.latent
    entropy = entropy_model_dict(plan)
    entropy.pop("kind")
    return dict(
        kind="blt",
        encoder=_stack(local.dim, local.encoder_layers, local.heads, local.window),
        latent=_stack(latent.dim, latent.layers, latent.heads, None),
        decoder=_stack(local.dim, local.decoder_layers, local.heads, local.window),
        cross_attn_k=2,
        cross_attn_heads=local.heads,
        cross_attn_all_layers_encoder=False,
        cross_attn_all_layers_decoder=True,
        hash=dict(group_sizes=(3, 4, 5, 6), vocab=HASH_VOCAB, n_functions=1),
        patching=blt_patching(threshold),
        entropy_model=entropy,
        vocab_size=260,
        dtype="float32",
        param_dtype="float32",
    )


def blt_patching(threshold: float) -> dict:
    """The global entropy rule at `threshold` (the rule the released models use)."""
    return dict(
        mode="entropy",
        threshold=float(threshold),
        monotonic=False,
        threshold_add=None,
        static_size=4,
        max_patch_length=None,
    )


def baseline_model_dict(plan: QuickstartPlan, flops_per_byte: float) -> dict:
    """A plain byte-level transformer whose training FLOPs per byte are closest to `flops_per_byte`.

    Searches widths in steps of 32 (heads of 32 dims) and depths 1-4, with full causal attention over
    a row, and keeps the configuration whose FLOPs per byte are closest in ratio. Narrow deep stacks
    (or 16-dim heads) would match more finely but run at half the FLOP rate on a CPU, so the baseline
    would take twice the BLT's time for the same compute.
    """
    require(flops_per_byte > 0, "flops_per_byte", f"must be > 0, got {flops_per_byte}")
    n = plan.spec.row_bytes
    best: tuple[float, dict] | None = None
    for dim in range(32, 1025, 32):
        for layers in range(1, 5):
            raw = dict(
                kind="entropy_lm",
                stack=_stack(dim, layers, dim // 32, n),
                vocab_size=260,
                dtype="float32",
                param_dtype="float32",
            )
            flops = model_flops_per_byte(raw, n)
            gap = abs(math.log(flops / flops_per_byte))
            if best is None or gap < best[0]:
                best = (gap, raw)
    return best[1]


def experiment_dict(
    model: dict,
    plan: QuickstartPlan,
    steps: int,
    train_source: str,
    eval_source: str,
    patching: dict | None = None,
    learning_rate: float = 3e-3,
) -> dict:
    """One training run of the quickstart as an experiment dict (`experiment_from_dict` validates it).

    Args:
      model: the model section.
      plan: budgets and row shapes.
      steps: training steps.
      train_source / eval_source: corpus specs (a text directory, or a `blt-jax patch` output).
      patching: the BLT's patch rule (None for byte LMs).
      learning_rate: peak learning rate (cosine decay to 10%).
    """
    spec = plan.spec
    rows = dict(
        source=train_source,
        text_field="text",
        batch_size=spec.batch_size,
        shards=0,
        row_bytes=spec.row_bytes,
        row_patches=plan.row_patches if patching else 0,
        seed=plan.seed,
        shuffle=True,
        num_epochs=None,
        strict=False,
        read_threads=2,
        prefetch=64,
    )
    if patching:
        rows["patching"] = patching
    evaluation = dict(rows, source=eval_source, shuffle=False, num_epochs=1)
    eval_batches = int(math.ceil(plan.validation_bytes / plan.bytes_per_step)) + 1
    checkpoint_every = max(10, steps // 6)  # an interrupted stage loses at most a sixth of its work
    # Validation five times along the way: the learning curves compare held-out bits per byte.
    train = dict(
        steps=steps,
        learning_rate=learning_rate,
        warmup_steps=max(5, steps // 20),
        min_lr_ratio=0.1,
        weight_decay=0.1,
        b1=0.9,
        b2=0.95,
        eps=1e-8,
        clip_norm=1.0,
        grad_accum=1,
        seed=plan.seed,
        remat="none",
        scan="",
        log_every=max(1, steps // 25),
        eval_every=max(1, steps // 5),
        eval_batches=eval_batches,
        checkpoint_every=checkpoint_every,
        keep_checkpoints=2,
        init_from=None,
        peak_flops=0.0,
    )
    return dict(model=model, data=rows, eval=evaluation, train=train, mesh=dict(data=1, fsdp=-1, tensor=1))


def model_flops_per_byte(model: dict, row_bytes: int, mean_patch_length: float = 1.0) -> float:
    """Training FLOPs per byte of a model section (BLT: at `mean_patch_length`)."""
    return model_kind(model_config_from_dict(model)).training_flops_per_byte(row_bytes, mean_patch_length)


def describe(plan: QuickstartPlan) -> dict[str, Any]:
    """The plan as a JSON-ready dict (with the derived row shapes)."""
    return dict(
        dataclasses.asdict(plan),
        batch_size=plan.spec.batch_size,
        row_bytes=plan.spec.row_bytes,
        row_patches=plan.row_patches,
    )
