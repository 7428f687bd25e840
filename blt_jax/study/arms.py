"""The study's arms as ordinary experiment dicts, at training FLOPs per byte matched to the reference
arm (a BLT patched by entropy, at the quickstart's shapes).

Compute is matched by the analytic count of `blt_jax.metrics.flops` (the quickstart's rule) at each
arm's mean patch length as measured on its own training rows:
  * BLTs patched otherwise (space, static) see more or fewer patches per byte, so their latent
    transformer is resized (FFN width first, then width or depth if the FFN alone cannot reach);
  * the BLT without hash n-grams has the reference's FLOPs (table lookups count zero);
  * the patch-size scaling arms (a threshold calibrated to longer patches) resize their latent
    transformer the same way: at equal FLOPs per byte, longer patches pay for a bigger latent model
    (training is 3 x forward, so their inference FLOPs per byte are matched too);
  * the byte transformer is the quickstart's closest baseline shape with its FFN width tuned;
  * the BPE-token transformer starts from the same shape, reads rows of N / (bytes per token)
    tokens (the same bytes per row) and is tuned at its measured bytes per token: its FLOPs per byte
    are its FLOPs per token divided by that.
A match lands within MATCH_TOLERANCE (2%), well inside the 5% the study promises.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable
from typing import Any

from blt_jax.errors import InputError
from blt_jax.models import ModelKind, model_config_from_dict, model_kind
from blt_jax.quickstart import plan as planning
from blt_jax.quickstart.plan import QuickstartPlan
from blt_jax.study.plan import REFERENCE_ARM, StudyPlan, is_entropy_arm, row_patches

MATCH_TOLERANCE = 0.02
FFN_STEP = 8  # FFN widths are multiples of this (16 would move a tiny model's FLOPs by ~3%)
MAX_LAYERS = 6
LEARNING_RATE = 3e-3


class MatchError(InputError):
    """No stack shape reaches the target FLOPs within the tolerance."""


def quickstart_view(plan: StudyPlan, seed: int) -> QuickstartPlan:
    """The study's budgets as a quickstart plan (whose helpers build models and experiments)."""
    return QuickstartPlan(
        minutes=plan.minutes,
        scale=plan.scale,
        target_patch_length=plan.target_patch_length,
        entropy_steps=plan.entropy_steps,
        blt_steps=plan.arm_steps,
        corpus_bytes=plan.corpus_bytes,
        validation_bytes=plan.validation_bytes,
        seed=seed,
    )


def static_size(plan: StudyPlan) -> int:
    """Bytes per patch of the static arm: the target mean patch length, rounded."""
    return max(2, int(round(plan.target_patch_length)))


def patching(arm: str, plan: StudyPlan, threshold: float) -> dict:
    """The patch rule of a BLT arm (its `data.patching` and `model.patching`)."""
    rule = planning.blt_patching(threshold)
    if arm == "blt_space":
        rule.update(mode="space")
    elif arm == "blt_static":
        rule.update(mode="static", static_size=static_size(plan))
    return rule


def base_model(arm: str, plan: StudyPlan, threshold: float) -> dict:
    """A BLT arm's model at the reference shapes (before compute matching)."""
    model = planning.blt_model_dict(quickstart_view(plan, 0), threshold)
    model["patching"] = patching(arm, plan, threshold)
    if not is_entropy_arm(arm):
        model["entropy_model"] = None  # patched without an entropy LM
    if arm == "blt_nohash":
        model["hash"] = None
    return model


def flops_per_byte(model: dict, row_bytes: int, mean_patch_length: float = 1.0) -> float:
    """Training FLOPs per byte of a model section (a BLT at `mean_patch_length`)."""
    return planning.model_flops_per_byte(model, row_bytes, mean_patch_length)


def _get(tree: dict, path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def with_stack(model: dict, path: tuple[str, ...], **changes: Any) -> dict:
    """A copy of `model` whose stack at `path` has `changes` applied."""
    out = copy.deepcopy(model)
    _get(out, path[:-1])[path[-1]] = dict(_get(model, path), **changes)
    return out


def match_stack(
    model: dict,
    path: tuple[str, ...],
    target: float,
    flops: Callable[[dict], float],
    tolerance: float = MATCH_TOLERANCE,
) -> dict:
    """`model` with the stack at `path` resized so that `flops(model)` is within `tolerance` of `target`.

    Shapes are tried from the nearest to the given one: its own width and depth with a new FFN width,
    then other depths and widths (multiples of the head width, heads of the same size). FLOPs are
    linear in the FFN width, so each shape's FFN is solved for, then rounded to a multiple of FFN_STEP
    and kept within [dim / 2, 8 x dim].

    Raises:
      MatchError: no shape reaches the target.
    """
    base = _get(model, path)
    dim0, layers0 = base["dim"], base["n_layers"]
    head = dim0 // base["n_heads"]
    dims = [head * k for k in range(1, 4 * dim0 // head + 1)]
    shapes = sorted(
        ((d, n) for d in dims for n in range(1, MAX_LAYERS + 1)),
        key=lambda s: (abs(math.log(s[0] / dim0)) + abs(math.log(s[1] / layers0)), s),
    )
    for dim, layers in shapes:
        low, high = max(16, dim // 2), 8 * dim
        shape = dict(dim=dim, n_layers=layers, n_heads=dim // head)
        f_low = flops(with_stack(model, path, ffn_hidden=low, **shape))
        f_high = flops(with_stack(model, path, ffn_hidden=high, **shape))
        if not f_low <= target * (1 + tolerance) or not f_high >= target * (1 - tolerance):
            continue
        exact = low + (target - f_low) * (high - low) / (f_high - f_low)
        options = [
            with_stack(model, path, ffn_hidden=min(high, max(low, f)), **shape)
            for f in (int(exact // FFN_STEP) * FFN_STEP, int(exact // FFN_STEP + 1) * FFN_STEP)
        ]
        candidate = min(options, key=lambda m: abs(flops(m) / target - 1))
        if abs(flops(candidate) / target - 1) <= tolerance:
            return candidate
    raise MatchError(
        f"no {'.'.join(path)} shape near d{dim0} x {layers0} reaches {target / 1e6:.2f} MFLOP/byte "
        f"within {tolerance:.0%}; choose another --target-patch-length, --patch-sizes or --bpe-vocab, "
        "or leave the arm out with --arms"
    )


@dataclasses.dataclass(frozen=True)
class ArmModel:
    """One arm's model, matched.

    Attributes:
      arm: its name.
      model: the model section.
      mean_patch_length: measured on its training rows (1 for a byte transformer, bytes per token for
        a token transformer).
      train_flops_per_byte: analytic training FLOPs per byte at that length.
      row_length: positions per row (N bytes; tokens for a token transformer).
    """

    arm: str
    model: dict
    mean_patch_length: float
    train_flops_per_byte: float
    row_length: int = 0

    def kind(self) -> ModelKind:
        """The model's kind, bound to its configuration (what it reads: patches, tokens or bytes)."""
        return model_kind(model_config_from_dict(self.model))


def token_row(row_bytes: int, bytes_per_token: float) -> int:
    """Tokens per row of a token transformer: about the bytes of a byte row, a multiple of 8."""
    return max(8, int(round(row_bytes / bytes_per_token / 8)) * 8)


def token_model(plan: StudyPlan, vocab_size: int, row_tokens: int, flops_target: float) -> dict:
    """A token transformer at the quickstart's baseline shape for `flops_target` (before tuning)."""
    coarse = planning.baseline_model_dict(quickstart_view(plan, 0), flops_target)
    stack = dict(coarse["stack"], window=row_tokens)
    return dict(kind="token_lm", stack=stack, vocab_size=int(vocab_size), dtype="float32", param_dtype="float32")


def matched_models(
    plan: StudyPlan, thresholds: dict[str, float], patch_lengths: dict[str, float], token_vocab: int | None = None
) -> dict[str, ArmModel]:
    """Every arm's model at the reference arm's training FLOPs per byte.

    Args:
      plan: the study.
      thresholds: arm -> its calibrated entropy threshold (arms patched by entropy; the others
        record the reference's, unused).
      patch_lengths: arm -> mean patch length measured on its training rows (every BLT arm), and
        bytes per token for `bpe_lm`.
      token_vocab: the BPE tokenizer's vocabulary (with `bpe_lm`).
    """
    n = plan.spec.row_bytes
    threshold = lambda arm: thresholds.get(arm, thresholds[REFERENCE_ARM])
    reference = base_model(REFERENCE_ARM, plan, threshold(REFERENCE_ARM))
    target = flops_per_byte(reference, n, patch_lengths[REFERENCE_ARM])
    out = {}
    for arm in plan.all_arms:
        row = n
        if arm == "byte_lm":
            coarse = planning.baseline_model_dict(quickstart_view(plan, 0), target)
            model = match_stack(coarse, ("stack",), target, lambda m: flops_per_byte(m, n))
            length = 1.0
        elif arm == "bpe_lm":
            length = patch_lengths[arm]
            row = token_row(n, length)
            model = match_stack(
                token_model(plan, token_vocab, row, target),
                ("stack",),
                target,
                lambda m, L=length, r=row: flops_per_byte(m, r, L),
            )
        else:
            length = patch_lengths[arm]
            model = base_model(arm, plan, threshold(arm))
            if arm != REFERENCE_ARM:
                model = match_stack(model, ("latent",), target, lambda m, L=length: flops_per_byte(m, n, L))
        out[arm] = ArmModel(arm, model, length, flops_per_byte(model, row, length), row)
    return out


def experiment(plan: StudyPlan, arm: ArmModel, seed: int, sources: dict[str, str]) -> dict:
    """The training run of one arm and seed, as an experiment dict.

    Args:
      plan: the study.
      arm: the arm's matched model.
      seed: initialisation and data order.
      sources: "train" / "validation" corpus specs of raw text, "entropies_train" /
        "entropies_validation" (stored entropies) for arms patched by entropy, and "tokenizer" (the
        BPE tokenizer file) for the token transformer.
    """
    view = quickstart_view(plan, seed)
    model = arm.model
    kind = arm.kind()
    if kind.patching is not None:
        stored = model["patching"]["mode"] == "entropy"
        train = sources["entropies_train" if stored else "train"]
        validation = sources["entropies_validation" if stored else "validation"]
        raw = planning.experiment_dict(
            model, view, plan.arm_steps, train, validation, patching=model["patching"], learning_rate=LEARNING_RATE
        )
        p = row_patches(plan.spec.row_bytes, arm.mean_patch_length)
        raw["data"]["row_patches"] = raw["eval"]["row_patches"] = p
        return raw
    raw = planning.experiment_dict(
        model, view, plan.arm_steps, sources["train"], sources["validation"], learning_rate=LEARNING_RATE
    )
    if kind.token_rows:
        for section in ("data", "eval"):
            raw[section].update(row_bytes=arm.row_length, tokenizer=sources["tokenizer"])
    return raw
