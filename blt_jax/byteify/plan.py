"""What `blt-jax byteify` trains: its options (a config file's `get_config`, overridable with
`--config.a.b=v`), the models built around the teacher, and the step budgets.

The options (`default_options`):
    local     the byte stacks: width (0: the teacher's width / cross_attn_k, so k patch slots make
              one latent input and no projection is needed), heads (0: width / 64, at least 2),
              encoder and decoder layers, window, cross_attn_k, hash n-gram sizes and buckets
    data      rows per step, bytes per row, held-out bytes
    entropy   the entropy LM of stage 2's patches (width, layers, heads, window), its steps and rate
    stage1    steps (0: from --minutes), learning rate, the teacher losses (block k, weights,
              temperature), and where the encoder's byte and hash tables start ("teacher": from the
              teacher's token embeddings, `byteify.embeddings`; "random")
    stage2    steps (0: from --minutes), learning rate of the byte stacks, the latent's multiple of it
              (Bolmo: 0.5), and the patcher ("entropy", or "teacher" to keep the teacher's tokens)
    baseline  learning rate of the same BLT trained from scratch (as many steps as stages 1 and 2)

Step budgets come from `--minutes` when the options leave them 0: each stage's analytic training
FLOPs per byte over this machine's measured matmul rate times an efficiency measured on 2-core CPUs
for models of these sizes (`EFFICIENCY`), so the plan is a forecast; the report gives the real times.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import ml_collections

from blt_jax.config import ConfigError, TokenLMConfig, require
from blt_jax.models import model_config_from_dict, model_kind

SCALES = ("small", "tiny")
DEFAULT_MINUTES = 30.0
# Training FLOP/s of models of these sizes over the host's fp32 matmul peak, measured on 2-core CPUs
# (the quickstart's small BLT trains at ~4,300 bytes/s = 12% of a 300 GFLOP/s peak).
EFFICIENCY = 0.12
# Shares of the training time: the entropy LM, then stages 1 and 2 and the baseline (which trains as
# many steps as both stages, at about stage 2's cost per step).
ENTROPY_SHARE = 0.1
CORPUS_SLACK = 1.15  # training text per trained byte (rows that end early waste some)
MIN_STEPS = 10


def default_options(scale: str = "small") -> ml_collections.ConfigDict:
    """The options of `blt-jax byteify` ("tiny": CI and notebooks, every stage in seconds)."""
    if scale not in SCALES:
        raise ConfigError("scale", f"must be one of {', '.join(SCALES)}, got {scale!r}")
    tiny = scale == "tiny"
    return ml_collections.ConfigDict(
        dict(
            scale=scale,
            local=dict(
                dim=0,
                heads=0,
                encoder_layers=1,
                decoder_layers=1 if tiny else 2,
                window=64 if tiny else 256,
                cross_attn_k=2,
                hash_sizes=(3, 4, 5, 6),
                hash_vocab=1021 if tiny else 8191,
            ),
            data=dict(batch_size=8, row_bytes=128 if tiny else 512, validation_bytes=6_000 if tiny else 48_000),
            entropy=dict(
                dim=64 if tiny else 128,
                layers=2,
                heads=2 if tiny else 4,
                window=64 if tiny else 256,
                steps=0,
                learning_rate=3e-3,
            ),
            # Rates measured at the tiny scale (a d96 x 4 teacher, 300 + 300 steps): stage 1 at 4e-3 reached
            # 2.16 held-out bits per byte where 2e-3 reached 2.59; a hidden-state weight of 4 (Bolmo's)
            # gave 2.59 where 1 gave 2.48 and 0 gave 2.46 (H-Net also found a high weight hurts).
            stage1=dict(
                steps=0,
                learning_rate=4e-3 if tiny else 3e-3,
                hidden_layer=4,
                hidden_weight=1.0,
                distill_weight=1.0,
                temperature=5.0,
                embeddings="teacher",
            ),
            stage2=dict(steps=0, learning_rate=3e-3 if tiny else 2e-3, latent_lr_factor=0.5, patcher="entropy"),
            baseline=dict(learning_rate=4e-3 if tiny else 3e-3),
        )
    )


PATCHERS = ("entropy", "teacher")
EMBEDDINGS = ("teacher", "random")  # the local encoder's tables: from the teacher's (`byteify.embeddings`), or not


@dataclasses.dataclass(frozen=True)
class ByteifyPlan:
    """The budgets of one byteification (stored in `<workdir>/plan.json`).

    Attributes:
      options: the options it was made with (`default_options`, overridden), as a dict.
      minutes: the wall-clock budget the steps were planned for.
      teacher_dim / teacher_layers / teacher_vocab: the teacher's shape.
      entropy_steps / stage1_steps / stage2_steps: training steps (the baseline trains
        stage1_steps + stage2_steps).
      corpus_bytes / validation_bytes: training and held-out text.
    """

    options: dict
    minutes: float
    teacher_dim: int
    teacher_layers: int
    teacher_vocab: int
    entropy_steps: int
    stage1_steps: int
    stage2_steps: int
    corpus_bytes: int
    validation_bytes: int

    @property
    def baseline_steps(self) -> int:
        return self.stage1_steps + self.stage2_steps

    @property
    def bytes_per_step(self) -> int:
        data = self.options["data"]
        return data["batch_size"] * data["row_bytes"]

    def option(self, section: str, name: str) -> Any:
        return self.options[section][name]


def local_shape(options: dict, teacher_dim: int) -> tuple[int, int]:
    """(width, heads) of the byte stacks for a teacher of width `teacher_dim`.

    Raises:
      ConfigError: a width wider than the teacher's, or heads that do not divide it.
    """
    local = options["local"]
    k = local["cross_attn_k"]
    require(isinstance(k, int) and k >= 1, "local.cross_attn_k", f"must be an integer >= 1, got {k!r}")
    dim = local["dim"] or max(8, teacher_dim // k)
    require(
        dim <= teacher_dim,
        "local.dim",
        f"{dim} is wider than the teacher's {teacher_dim}: the byte stacks "
        "are the light part of a BLT (give a width up to the teacher's)",
    )
    heads = local["heads"] or max(2, dim // 64)
    require(
        dim % heads == 0 and (dim // heads) % 2 == 0,
        "local.heads",
        f"{heads} heads do not split the byte stacks' width {dim} into even head widths",
    )
    return dim, heads


def check_options(options: dict, teacher: TokenLMConfig) -> None:
    """Refuses options that cannot make a BLT of this teacher, naming the option.

    Raises:
      ConfigError.
    """
    local_shape(options, teacher.stack.dim)
    layer = options["stage1"]["hidden_layer"]  # beyond the teacher's depth: its last block
    require(isinstance(layer, int) and layer >= 1, "stage1.hidden_layer", f"must be an integer >= 1, got {layer!r}")
    require(
        options["stage1"]["embeddings"] in EMBEDDINGS,
        "stage1.embeddings",
        f"must be one of {', '.join(EMBEDDINGS)}, got {options['stage1']['embeddings']!r}",
    )
    require(
        options["stage2"]["patcher"] in PATCHERS,
        "stage2.patcher",
        f"must be one of {', '.join(PATCHERS)}, got {options['stage2']['patcher']!r}",
    )
    require(options["stage2"]["latent_lr_factor"] > 0, "stage2.latent_lr_factor", "must be > 0")
    data = options["data"]
    require(data["batch_size"] >= 1 and data["row_bytes"] >= 16, "data.row_bytes", "rows of at least 16 bytes")


def _stack(dim: int, layers: int, heads: int, window: int | None, rope_theta: float = 10000.0) -> dict:
    ffn = int(math.ceil(8 * dim / 3 / 32) * 32)  # 8/3 x width rounded to 32 (256 is too coarse here)
    return dict(dim=dim, n_layers=layers, n_heads=heads, ffn_hidden=ffn, window=window, rope_theta=rope_theta)


def row_patches(row_bytes: int, bytes_per_patch: float) -> int:
    """P per row: room for patches 40% shorter than their mean (rows end early rather than overflow)."""
    return int(math.ceil(1.4 * row_bytes / max(bytes_per_patch, 1.0) / 8) * 8) + 8


def teacher_stack(teacher: TokenLMConfig) -> dict:
    """The teacher's blocks as a latent stack (its window kept: Mistral's)."""
    return json_ready(dataclasses.asdict(teacher.stack))


def json_ready(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


def blt_dict(plan: ByteifyPlan, teacher: TokenLMConfig, patching: dict, entropy_model: dict | None = None) -> dict:
    """The byteified BLT: byte stacks of the options around the teacher's blocks and final norm."""
    local = plan.options["local"]
    dim, heads = local_shape(plan.options, teacher.stack.dim)
    window = min(local["window"], plan.option("data", "row_bytes"))
    return dict(
        kind="blt",
        encoder=_stack(dim, local["encoder_layers"], heads, window),
        latent=teacher_stack(teacher),
        decoder=_stack(dim, local["decoder_layers"], heads, window),
        cross_attn_k=local["cross_attn_k"],
        cross_attn_heads=heads,
        hash=dict(group_sizes=list(local["hash_sizes"]), vocab=local["hash_vocab"], n_functions=1),
        patching=patching,
        entropy_model=entropy_model,
        latent_norm=True,
    )


def entropy_model_dict(plan: ByteifyPlan) -> dict:
    shape = plan.options["entropy"]
    window = min(shape["window"], plan.option("data", "row_bytes"))
    return dict(kind="entropy_lm", stack=_stack(shape["dim"], shape["layers"], shape["heads"], window), vocab_size=260)


def distill_dict(plan: ByteifyPlan, teacher: TokenLMConfig, teacher_dir: str) -> dict:
    """Stage 1's model: the BLT patched by the teacher's tokens, beside the teacher's ends."""
    blt = blt_dict(plan, teacher, dict(mode="bpe", tokenizer=teacher_dir))
    blt.pop("kind")
    stage1 = plan.options["stage1"]
    return dict(
        kind="blt_distill",
        blt=blt,
        teacher_vocab=teacher.vocab_size,
        teacher_tied=teacher.tie_embeddings,
        hidden_layer=min(stage1["hidden_layer"], teacher.stack.n_layers),
        hidden_weight=stage1["hidden_weight"],
        distill_weight=stage1["distill_weight"],
        temperature=stage1["temperature"],
    )


def experiment_dict(
    plan: ByteifyPlan,
    model: dict,
    steps: int,
    train_source: str,
    eval_source: str,
    learning_rate: float,
    patches: int = 0,
    seed: int = 0,
    **train: Any,
) -> dict:
    """One training run as an experiment dict (`experiment_from_dict` validates it).

    Args:
      plan: budgets and row shapes.
      model: the model section.
      steps: training steps.
      train_source / eval_source: corpus specs.
      learning_rate: the peak (cosine decay to 10%).
      patches: P per row (0: byte rows).
      seed: data order and initialisation.
      train: more `train` fields (init_from, freeze, lr_multipliers).
    """
    data = plan.options["data"]
    rows = dict(
        source=train_source,
        batch_size=data["batch_size"],
        row_bytes=data["row_bytes"],
        row_patches=patches,
        seed=seed,
        read_threads=2,
    )
    evaluation = dict(rows, source=eval_source, shuffle=False, num_epochs=1)
    eval_batches = int(math.ceil(plan.validation_bytes / plan.bytes_per_step)) + 1
    fields = dict(
        steps=steps,
        learning_rate=learning_rate,
        warmup_steps=max(2, steps // 20),
        min_lr_ratio=0.1,
        weight_decay=0.1,
        clip_norm=1.0,
        seed=seed,
        log_every=max(1, steps // 25),
        eval_every=0,
        eval_batches=eval_batches,
        checkpoint_every=max(10, steps // 6),
        keep_checkpoints=2,
    )
    fields.update(train)
    return dict(model=model, data=rows, eval=evaluation, train=fields, mesh=dict(data=1, fsdp=-1, tensor=1))


def flops_per_byte(model: dict, row_bytes: int, bytes_per_patch: float = 1.0) -> float:
    """Training FLOPs per byte of a model section."""
    return model_kind(model_config_from_dict(model)).training_flops_per_byte(row_bytes, bytes_per_patch)


def make_plan(
    options: dict, teacher: TokenLMConfig, minutes: float, flops_per_second: float, assumed_bytes_per_token: float = 4.0
) -> ByteifyPlan:
    """Step budgets from a wall-clock budget (module docstring); steps the options give are kept."""
    require(minutes > 0, "minutes", f"must be > 0, got {minutes}")
    skeleton = ByteifyPlan(
        options,
        minutes,
        teacher.stack.dim,
        teacher.stack.n_layers,
        teacher.vocab_size,
        1,
        1,
        1,
        1,
        options["data"]["validation_bytes"],
    )
    row = options["data"]["row_bytes"]
    per_step = skeleton.bytes_per_step
    stage1 = flops_per_byte(distill_dict(skeleton, teacher, "teacher"), row, assumed_bytes_per_token)
    stage2 = flops_per_byte(blt_dict(skeleton, teacher, dict(mode="space")), row, assumed_bytes_per_token)
    entropy = flops_per_byte(entropy_model_dict(skeleton), row)
    seconds = minutes * 60
    rate = flops_per_second * EFFICIENCY
    entropy_steps = options["entropy"]["steps"] or max(
        MIN_STEPS, int(seconds * ENTROPY_SHARE * rate / (per_step * entropy))
    )
    # Equal steps for both stages; the baseline trains as many as both at stage 2's cost.
    both = seconds * (1 - ENTROPY_SHARE) * rate / (per_step * (stage1 + 3 * stage2))
    steps1 = options["stage1"]["steps"] or max(MIN_STEPS, int(both))
    steps2 = options["stage2"]["steps"] or max(MIN_STEPS, int(both))
    corpus = int(max(steps1 + steps2, entropy_steps) * per_step * CORPUS_SLACK)
    return dataclasses.replace(
        skeleton, entropy_steps=entropy_steps, stage1_steps=steps1, stage2_steps=steps2, corpus_bytes=corpus
    )
