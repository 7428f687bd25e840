"""What a study trains, for how long and on how much text: the arms, the seeds and the step counts,
derived from a wall-clock budget on a 2-core CPU, then frozen in `<workdir>/plan.json` so a re-run
resumes the same plan on any machine (faster machines just finish early).

Every arm of every seed trains the same number of steps of the same rows (B x N bytes), so all arms
read the same bytes in the same order; they differ in the model, and for BLT arms in the patching.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from blt_jax.config import ConfigError, require
from blt_jax.data.bpe import MAX_VOCAB, MIN_VOCAB
from blt_jax.paths import read_json
from blt_jax.quickstart.plan import SCALE_SPECS, SCALES, ScaleSpec

# name -> what the report calls it. The first arm is the reference the others are matched to.
ARMS: dict[str, str] = {
    "blt_entropy": "BLT, entropy patching",
    "blt_space": "BLT, space patching",
    "blt_static": "BLT, static patches",
    "blt_nohash": "BLT, entropy patching, no hash n-grams",
    "byte_lm": "byte transformer",
    "bpe_lm": "BPE-token transformer",
}
# Arms of plain transformers (no patches): a byte LM and a token LM.
TRANSFORMER_ARMS = ("byte_lm", "bpe_lm")
# BPE vocabulary per scale (specials included): the output head of a tiny model could not afford 4096.
DEFAULT_BPE_VOCAB = {"small": 4096, "tiny": 512}
REFERENCE_ARM = "blt_entropy"
# Arms that patch with the entropy LM (they need the entropy pass and calibration).
ENTROPY_ARMS = ("blt_entropy", "blt_nohash")
# Patch-size scaling arms (`--patch-sizes`): the reference BLT with the threshold calibrated to
# another mean patch length and its latent transformer resized to the reference's FLOPs per byte.
SCALING_PREFIX = "blt_entropy_p"
DEFAULT_MINUTES = 60.0
DEFAULT_SEEDS = 2
# The entropy LM's share of the time left after the fixed overhead.
ENTROPY_SHARE = 0.1
# Seconds per training run spent outside the steps: compiling the train and eval programs, the
# evaluations and checkpoints along the way, the held-out scoring. Measured on the 2-core CPU at the
# small scale: 27-31 s in training beyond the planned step rate, 12-21 s of held-out scoring; the
# rest is a margin, so the default study ends inside its hour.
RUN_OVERHEAD_S = {"small": 60.0, "tiny": 0.0}
# Training text per trained byte: rows cut short by the patch budget waste a little.
CORPUS_SLACK = 1.15


@dataclasses.dataclass(frozen=True)
class StudyPlan:
    """The budgets of one study.

    Attributes:
      minutes: the wall-clock budget it was planned for (2-core CPU).
      scale: model and row sizes ("small", or "tiny" for CI and notebooks; the quickstart's scales).
      arms: the arms trained, in report order.
      seeds: how many seeds each arm is trained with (0, 1, ...: initialisation and data order).
      target_patch_length: the mean patch length the entropy threshold is calibrated to, and the size
        of static patches (rounded).
      patch_sizes: more mean patch lengths, one BLT arm each (patch-size scaling at matched
        inference FLOPs per byte).
      bpe_vocab: vocabulary of the BPE tokenizer trained for the `bpe_lm` arm (specials included).
      entropy_steps: training steps of the entropy LM (one, shared by every seed).
      arm_steps: training steps of every arm and seed.
      corpus_bytes: bytes of training text sampled from the corpus.
      validation_bytes: bytes of held-out text every arm is scored on.
    """

    minutes: float = DEFAULT_MINUTES
    scale: str = "small"
    arms: tuple[str, ...] = tuple(ARMS)
    seeds: int = DEFAULT_SEEDS
    target_patch_length: float = 4.5
    patch_sizes: tuple[float, ...] = ()
    bpe_vocab: int = DEFAULT_BPE_VOCAB["small"]
    entropy_steps: int = 0
    arm_steps: int = 0
    corpus_bytes: int = 0
    validation_bytes: int = 0

    def __post_init__(self):
        require(self.scale in SCALES, "scale", f"must be one of {', '.join(SCALES)}, got {self.scale!r}")
        require(self.minutes > 0, "minutes", f"must be > 0, got {self.minutes}")
        require(self.seeds >= 1, "seeds", f"must be >= 1, got {self.seeds}")
        require(len(self.arms) >= 1, "arms", "name at least one arm")
        for arm in self.arms:
            require(arm in ARMS, "arms", f"unknown arm {arm!r}; arms: {', '.join(ARMS)}")
        require(len(set(self.arms)) == len(self.arms), "arms", f"an arm is named twice: {','.join(self.arms)}")
        require(
            self.target_patch_length >= 1.5,
            "target_patch_length",
            f"must be >= 1.5 bytes, got {self.target_patch_length}",
        )
        for size in self.patch_sizes:
            require(
                size >= 1.5 and size != self.target_patch_length,
                "patch_sizes",
                f"each must be >= 1.5 bytes and differ from the target {self.target_patch_length:g}, got {size:g}",
            )
        require(len(set(self.patch_sizes)) == len(self.patch_sizes), "patch_sizes", "a size is named twice")
        require(
            isinstance(self.bpe_vocab, int) and MIN_VOCAB <= self.bpe_vocab <= MAX_VOCAB,
            "bpe_vocab",
            f"must be an integer in [{MIN_VOCAB}, {MAX_VOCAB}], got {self.bpe_vocab!r}",
        )
        for name in ("entropy_steps", "arm_steps", "corpus_bytes", "validation_bytes"):
            require(getattr(self, name) >= 1, name, "must be >= 1 (build plans with make_plan)")

    @property
    def spec(self) -> ScaleSpec:
        return SCALE_SPECS[self.scale]

    @property
    def bytes_per_step(self) -> int:
        return self.spec.batch_size * self.spec.row_bytes

    @property
    def all_arms(self) -> tuple[str, ...]:
        """The arms, then the patch-size scaling arms."""
        return (*self.arms, *(scaling_arm(size) for size in self.patch_sizes))

    def runs(self) -> list[tuple[str, int]]:
        """(arm, seed) of every training run, seed-major (a stopped study has whole seeds done)."""
        return [(arm, seed) for seed in range(self.seeds) for arm in self.all_arms]

    def target_of(self, arm: str) -> float:
        """The mean patch length an arm's entropy threshold is calibrated to."""
        return scaling_size(arm) or self.target_patch_length


def scaling_arm(size: float) -> str:
    """The name of the patch-size scaling arm of mean patch length `size` (6 -> blt_entropy_p6)."""
    return SCALING_PREFIX + f"{size:g}".replace(".", "_")


def scaling_size(arm: str) -> float | None:
    """The mean patch length of a scaling arm; None for the other arms."""
    return float(arm[len(SCALING_PREFIX) :].replace("_", ".")) if arm.startswith(SCALING_PREFIX) else None


def is_entropy_arm(arm: str) -> bool:
    """Whether an arm patches with the entropy LM."""
    return arm in ENTROPY_ARMS or scaling_size(arm) is not None


def label(arm: str) -> str:
    """What the report calls an arm."""
    size = scaling_size(arm)
    if size is not None:
        return f"BLT, entropy patching, {size:g}-byte patches, latent resized"
    return ARMS[arm]


def parse_sizes(text: str | None) -> tuple[float, ...]:
    """Patch sizes of a comma-separated list ("6,8").

    Raises:
      ConfigError: a value that is not a number (one line).
    """
    out = []
    for item in (text or "").split(","):
        if item.strip():
            try:
                out.append(float(item))
            except ValueError:
                raise ConfigError("patch_sizes", f"expected numbers such as 6,8, got {item.strip()!r}") from None
    return tuple(out)


def parse_arms(text: str | None) -> tuple[str, ...]:
    """The arms of a comma-separated list ("all" or None: every arm), reference arm first.

    Raises:
      ConfigError: an unknown arm (one line, listing the arms).
    """
    if not text or text == "all":
        return tuple(ARMS)
    names = [a.strip() for a in text.split(",") if a.strip()]
    for name in names:
        if name not in ARMS:
            raise ConfigError("arms", f"unknown arm {name!r}; arms: {', '.join(ARMS)}")
    # The reference arm is trained whatever is asked: the others are matched to its compute.
    return (REFERENCE_ARM, *[a for a in ARMS if a in names and a != REFERENCE_ARM])


def _rate(spec: ScaleSpec, arm: str) -> float:
    """Training bytes/s of an arm on the 2-core CPU (a byte or token transformer of matched FLOPs runs
    at the baseline's rate, every BLT at the BLT's)."""
    return spec.baseline_rate if arm in TRANSFORMER_ARMS else spec.blt_rate


def make_plan(
    minutes: float = DEFAULT_MINUTES,
    scale: str = "small",
    arms: tuple[str, ...] = tuple(ARMS),
    seeds: int = DEFAULT_SEEDS,
    target_patch_length: float = 4.5,
    patch_sizes: tuple[float, ...] = (),
    bpe_vocab: int | None = None,
) -> StudyPlan:
    """Turns a wall-clock budget into step counts (see the module docstring).

    Raises:
      ConfigError: a non-positive budget, an unknown scale or arm, fewer than one seed.
    """
    if scale not in SCALE_SPECS:
        raise ConfigError("scale", f"must be one of {', '.join(SCALES)}, got {scale!r}")
    if not minutes > 0:
        raise ConfigError("minutes", f"must be > 0, got {minutes}")
    if seeds < 1:
        raise ConfigError("seeds", f"must be >= 1, got {seeds}")
    spec = SCALE_SPECS[scale]
    trained = (*arms, *(scaling_arm(size) for size in patch_sizes))
    runs = len(trained) * seeds
    seconds = max(minutes - spec.overhead_minutes, 0.0) * 60 - RUN_OVERHEAD_S[scale] * (runs + 1)
    seconds = max(seconds, 0.0)
    per_step = spec.batch_size * spec.row_bytes
    entropy_steps = max(spec.min_steps, int(spec.entropy_rate * seconds * ENTROPY_SHARE / per_step))
    # Seconds per step of every run: each seed of each arm trains one step; the entropy pass reads
    # the text of one step (the corpus is sampled once, for all seeds).
    step_s = seeds * sum(per_step / _rate(spec, arm) for arm in trained) + per_step * CORPUS_SLACK / spec.pass_rate
    arm_steps = max(spec.min_steps, int(seconds * (1 - ENTROPY_SHARE) / step_s))
    return StudyPlan(
        minutes=float(minutes),
        scale=scale,
        arms=tuple(arms),
        seeds=int(seeds),
        target_patch_length=float(target_patch_length),
        patch_sizes=tuple(float(x) for x in patch_sizes),
        bpe_vocab=int(bpe_vocab or DEFAULT_BPE_VOCAB[scale]),
        entropy_steps=entropy_steps,
        arm_steps=arm_steps,
        corpus_bytes=int(arm_steps * per_step * CORPUS_SLACK),
        validation_bytes=spec.validation_bytes,
    )


def describe(plan: StudyPlan) -> dict[str, Any]:
    """The plan as a JSON-ready dict (with the derived row shapes)."""
    return dict(
        dataclasses.asdict(plan),
        arms=list(plan.arms),
        patch_sizes=list(plan.patch_sizes),
        batch_size=plan.spec.batch_size,
        row_bytes=plan.spec.row_bytes,
        trained_bytes_per_run=plan.arm_steps * plan.bytes_per_step,
    )


def load_plan(path: str) -> StudyPlan:
    """The plan stored in a plan.json (derived fields ignored)."""
    raw = read_json(path)
    fields = {k: v for k, v in raw.items() if k in StudyPlan.__dataclass_fields__}
    return StudyPlan(**dict(fields, arms=tuple(fields["arms"]), patch_sizes=tuple(fields.get("patch_sizes", ()))))


def row_patches(row_bytes: int, mean_patch_length: float) -> int:
    """P per row for patches of a measured mean length: room for patches 40% shorter on average
    (rows end early rather than overflow), a multiple of 8, never above N + 1."""
    return min(row_bytes + 1, int(math.ceil(1.4 * row_bytes / mean_patch_length / 8) * 8) + 8)
