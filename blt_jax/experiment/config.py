"""Typed configuration of a training run, built from an experiment's ConfigDict.

An experiment file's `get_config()` returns a ConfigDict with sections `model`, `data`, `eval`,
`train` and `mesh`; `experiment_from_dict` validates every field (errors name the full path, e.g.
`train.warmup_steps`) and returns frozen dataclasses.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from blt_jax import paths
from blt_jax.config import (
    ConfigError,
    ModelConfig,
    PatchingConfig,
    as_dict,
    config_from_fields,
    require,
)
from blt_jax.data.pipeline import DataConfig
from blt_jax.models import config_to_dict, model_config_from_dict, model_kind
from blt_jax.nn.block import REMAT_POLICIES
from blt_jax.nn.options import MODEL_KEYS as RUN_KEYS
from blt_jax.nn.options import REMAT_STACKS, SCAN_STACKS, RunOptions, from_model_keys
from blt_jax.parallel import MeshConfig


def parse_remat(spec: str) -> dict[str, str]:
    """ "full" -> {"all": "full"}; "latent=full,decoder=save_dots" -> per-stack policies."""
    if "=" not in spec:
        return {"all": spec}
    out = {}
    for part in spec.split(","):
        stack, _, policy = part.partition("=")
        out[stack.strip()] = policy.strip()
    return out


def parse_scan(spec: str) -> tuple[str, ...]:
    """ "latent,entropy" -> ("latent", "entropy"); "" -> ()."""
    return tuple(part.strip() for part in spec.split(",") if part.strip())


def resolve_scan(spec: str, model: ModelConfig) -> tuple[str, ...]:
    """The scanned stacks of `spec` for this model ("all" = every scannable one)."""
    scannable = tuple(model_kind(model).scan_stacks())
    stacks = parse_scan(spec)
    if "all" in stacks:
        return scannable
    for stack in stacks:
        require(
            stack in scannable,
            "train.scan",
            f"stack {stack!r} cannot be scanned for a {type(model).__name__} (scannable: {', '.join(scannable)})",
        )
    return stacks


def subtree(prefix: str) -> tuple[str, ...]:
    """ "blt/global_transformer" -> ("blt", "global_transformer"); "" -> () (the whole tree)."""
    return tuple(part for part in prefix.strip().split("/") if part)


def parse_multipliers(spec: str) -> list[tuple[tuple[str, ...], float]]:
    """ "global_transformer=0.5,local_encoder=2" -> [(("global_transformer",), 0.5), ...]."""
    out = []
    for part in spec.split(","):
        if not part.strip():
            continue
        path, sep, value = part.partition("=")
        require(bool(sep) and bool(subtree(path)), "lr_multipliers", f"expected SUBTREE=FACTOR, got {part.strip()!r}")
        try:
            factor = float(value)
        except ValueError:
            factor = -1.0
        require(factor > 0, "lr_multipliers", f"{part.strip()!r}: the factor must be a number > 0")
        out.append((subtree(path), factor))
    return out


def parse_frozen(spec: str) -> list[tuple[str, ...]]:
    """ "blt/global_transformer,teacher" -> [("blt", "global_transformer"), ("teacher",)]."""
    return [subtree(part) for part in spec.split(",") if subtree(part)]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation and bookkeeping of a run.

    Attributes:
      steps: optimizer steps.
      learning_rate: peak learning rate.
      warmup_steps: linear warmup from 0.
      min_lr_ratio: the cosine decays to min_lr_ratio * peak at the last step.
      weight_decay / b1 / b2 / eps: AdamW (applied to every parameter, as the reference does).
      clip_norm: global gradient-norm clipping.
      grad_accum: micro-batches per step (the batch is split; gradients are exact sums).
      seed: parameter init and the per-step RNG (`fold_in(seed, step)`).
      remat: activation rematerialisation of the blocks: a policy for all stacks ("none", "full",
        "save_dots") or per stack ("latent=full,decoder=save_dots"; stacks encoder, latent,
        decoder, entropy, token).
      scan: stacks run as one `nn.scan` over stacked layers ("" none, "latent" for a BLT, "entropy"
        for an entropy LM, "token" for a token transformer, "all" = every scannable stack). Compiles
        one block instead of L; the checkpoints then hold stacked layers ([L, ...]); `runs.read_run`
        returns per-layer ones.
      log_every / eval_every / checkpoint_every: in steps (0 disables eval / periodic checkpoints).
      eval_batches: batches per evaluation.
      keep_checkpoints: how many recent checkpoints to keep.
      init_from: initial weights, or None: a source (a run of ours, or any model directory
        `from_pretrained` reads) for the whole tree, or parts of the tree from several sources,
        "SUBTREE=SOURCE[#FROM],..." (`loading.init_from.parse_init_from`): e.g.
        "blt/global_transformer=~/llama,teacher=~/llama" puts a Llama's blocks in a BLT's latent.
      peak_flops: FLOP/s per device for MFU; 0 = from the device table / a CPU probe.
      freeze: comma-separated parameter subtrees ("blt/global_transformer") left as they are: no
        gradient, no update, no optimizer state.
      lr_multipliers: "SUBTREE=FACTOR,..." subtrees trained at FACTOR times the learning rate.
      max_skipped_steps: a step whose loss or gradient norm is not finite changes nothing and is
        counted (`skipped_steps` in the metrics); after this many in a row the run stops, naming the
        step, with its checkpoints as they were.
      rewind_on_spike: on a skipped step, also restore the parameters and optimizer state of the
        newest checkpoint and go on with the batches after the bad one (those since the checkpoint
        are skipped), as PaLM did after loss spikes.
    """

    steps: int = 1000
    learning_rate: float = 4e-4
    warmup_steps: int = 100
    min_lr_ratio: float = 0.01
    weight_decay: float = 0.1
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    clip_norm: float = 1.0
    grad_accum: int = 1
    seed: int = 0
    remat: str = "none"
    scan: str = ""
    log_every: int = 10
    eval_every: int = 0
    eval_batches: int = 4
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    init_from: str | None = None
    peak_flops: float = 0.0
    freeze: str = ""
    lr_multipliers: str = ""
    max_skipped_steps: int = 10
    rewind_on_spike: bool = False

    def __post_init__(self):
        require(self.steps >= 1, "steps", f"must be >= 1, got {self.steps}")
        require(self.learning_rate > 0, "learning_rate", f"must be > 0, got {self.learning_rate}")
        require(
            0 <= self.warmup_steps < self.steps,
            "warmup_steps",
            f"must be in [0, steps={self.steps}), got {self.warmup_steps}",
        )
        require(0 <= self.min_lr_ratio <= 1, "min_lr_ratio", f"must be in [0, 1], got {self.min_lr_ratio}")
        require(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        require(0 <= self.b1 < 1 and 0 <= self.b2 < 1, "b2", "b1 and b2 must be in [0, 1)")
        require(self.eps > 0, "eps", f"must be > 0, got {self.eps}")
        require(self.clip_norm > 0, "clip_norm", f"must be > 0, got {self.clip_norm}")
        require(self.grad_accum >= 1, "grad_accum", f"must be >= 1, got {self.grad_accum}")
        for stack, policy in parse_remat(self.remat).items():
            require(stack in REMAT_STACKS, "remat", f"unknown stack {stack!r}; expected {', '.join(REMAT_STACKS)}")
            require(
                policy in REMAT_POLICIES, "remat", f"unknown policy {policy!r}; expected {', '.join(REMAT_POLICIES)}"
            )
        for stack in parse_scan(self.scan):
            require(stack in SCAN_STACKS, "scan", f"unknown stack {stack!r}; expected {', '.join(SCAN_STACKS)}")
        for name in ("log_every", "eval_every", "checkpoint_every", "eval_batches", "keep_checkpoints"):
            value = getattr(self, name)
            require(value >= 0, name, f"must be >= 0, got {value}")
        require(self.log_every >= 1, "log_every", "must be >= 1")
        parse_multipliers(self.lr_multipliers)  # checks the syntax, naming the field
        require(self.keep_checkpoints >= 1, "keep_checkpoints", "must be >= 1")
        require(
            isinstance(self.max_skipped_steps, int) and self.max_skipped_steps >= 1,
            "max_skipped_steps",
            f"must be an integer >= 1, got {self.max_skipped_steps!r}",
        )
        require(
            isinstance(self.rewind_on_spike, bool),
            "rewind_on_spike",
            f"must be true or false, got {self.rewind_on_spike!r}",
        )


@dataclasses.dataclass(frozen=True)
class LmEvalConfig:
    """lm-evaluation-harness tasks scored during training (the `eval` extra; section `lm_eval`).

    Scores go to `metrics.jsonl` and TensorBoard beside
    bits per byte.

    Attributes:
      tasks: comma-separated task (or group) names; "" disables. Scores are named
        `lm_eval/<task>/<metric>`, and `lm_eval/<task>/<noise>/<metric>` under a noising.
      every: in steps; 0 = with bits per byte (`train.eval_every`). The last step always runs them.
      noise: the paper's input noisings to run the tasks under too, as `blt-jax lm-eval --noise`
        ("none,drop", "all"; "" = clean only).
      noise_seed: seed of the noisings.
      limit: at most this many items per task (< 1: a fraction; 0 = all).
      num_fewshot: in-context examples (-1 = each task's default).
      include_path: a directory of task YAMLs beside lm-eval's own ("" = none).
      batch_size / max_length: rows per forward pass and bytes of text per row (as `blt-jax lm-eval`).
      entropy_model: the entropy LM that patches the text of a run trained on entropy patches
        ("" = the one named by the run's entropy pass).
    """

    tasks: str = ""
    every: int = 0
    noise: str = ""
    noise_seed: int = 0
    limit: float = 0.0
    num_fewshot: int = -1
    include_path: str = ""
    batch_size: int = 8
    max_length: int = 2048
    entropy_model: str = ""

    def __post_init__(self):
        require(self.every >= 0, "every", f"must be >= 0, got {self.every}")
        require(self.limit >= 0, "limit", f"must be >= 0, got {self.limit}")
        require(self.num_fewshot >= -1, "num_fewshot", f"must be >= -1, got {self.num_fewshot}")
        require(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        require(self.max_length >= 2, "max_length", f"must be >= 2, got {self.max_length}")

    @property
    def task_names(self) -> list[str]:
        return [t.strip() for t in self.tasks.split(",") if t.strip()]


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """Everything a run needs: model, training data, evaluation data, optimisation, mesh, and
    optionally lm-eval tasks to score during training."""

    model: ModelConfig
    data: DataConfig
    eval: DataConfig | None
    train: TrainConfig
    mesh: MeshConfig
    lm_eval: LmEvalConfig | None = None
    run: RunOptions = RunOptions()  # the model section's run keys (attention); remat and scan: `options`

    @property
    def options(self) -> RunOptions:
        """How the model runs in this experiment: `run` with the train section's remat and scan."""
        return self.run.replace(
            remat=tuple(parse_remat(self.train.remat).items()), scan=resolve_scan(self.train.scan, self.model)
        )

    def __post_init__(self):
        if self.data.batch_size % self.train.grad_accum:
            raise ConfigError(
                "data.batch_size",
                f"{self.data.batch_size} is not divisible by train.grad_accum={self.train.grad_accum}",
            )
        resolve_scan(self.train.scan, self.model)  # a stack this model cannot scan fails here
        kind = model_kind(self.model)
        for section, data in (("data", self.data), ("eval", self.eval)):
            if data is None:
                continue
            if kind.token_rows:
                require(
                    data.tokenizer is not None,
                    f"{section}.tokenizer",
                    f"{kind.description} reads BPE token rows: name its tokenizer file (train_bpe writes one)",
                )
            else:
                require(
                    data.tokenizer is None,
                    f"{section}.tokenizer",
                    f"{kind.description} reads byte rows; a tokenizer is for model kind 'token_lm'",
                )
        if self.eval is not None and self.eval.tokenizer is not None:
            # The model's ids mean the tokens of one tokenizer.
            require(
                paths.resolve(self.eval.tokenizer) == paths.resolve(self.data.tokenizer),
                "eval.tokenizer",
                f"must be data.tokenizer ({self.data.tokenizer}), got {self.eval.tokenizer}",
            )


def _data_from_dict(raw: Any, path: str, model: ModelConfig) -> DataConfig:
    data = as_dict(raw, path)
    if "patching" in data and data["patching"] is not None:
        data["patching"] = config_from_fields(PatchingConfig, data["patching"], f"{path}.patching")
    elif model_kind(model).patching is not None:
        data["patching"] = model_kind(model).patching
    if model_kind(model).patching is None:
        data["row_patches"] = 0  # a model of plain byte rows (the entropy LM)
    return config_from_fields(DataConfig, data, path)


def experiment_from_dict(raw: Any) -> ExperimentConfig:
    """Validates an experiment ConfigDict (sections model, data, eval, train, mesh)."""
    data = as_dict(raw, "")
    unknown = set(data) - {"model", "data", "eval", "train", "mesh", "lm_eval", "bench"}
    if unknown:
        raise ConfigError(sorted(unknown)[0], "unknown section; expected model, data, eval, train, mesh, lm_eval")
    if "model" not in data:
        raise ConfigError("model", "missing: the experiment defines no model")
    model_raw = as_dict(data["model"], "model")
    model = model_config_from_dict(model_raw, "model")  # checks the run keys too, naming them
    run = from_model_keys(model_raw)
    train = config_from_fields(TrainConfig, data.get("train") or {}, "train")
    mesh = config_from_fields(MeshConfig, data.get("mesh") or {}, "mesh")
    training_data = _data_from_dict(data.get("data") or {}, "data", model)
    eval_raw = data.get("eval")
    evaluation = _data_from_dict(eval_raw, "eval", model) if eval_raw else None
    lm_eval = config_from_fields(LmEvalConfig, data["lm_eval"], "lm_eval") if data.get("lm_eval") else None
    try:
        return ExperimentConfig(model, training_data, evaluation, train, mesh, lm_eval, run)
    except ConfigError as e:
        raise e from None


def experiment_to_dict(experiment: ExperimentConfig) -> dict:
    """JSON-friendly dict that `experiment_from_dict` turns back into the same experiment."""
    run = experiment.run
    out = {
        "model": {**config_to_dict(experiment.model), **{key: getattr(run, field) for key, field in RUN_KEYS.items()}},
        "data": dataclasses.asdict(experiment.data),
        "train": dataclasses.asdict(experiment.train),
        "mesh": dataclasses.asdict(experiment.mesh),
    }
    if experiment.eval is not None:
        out["eval"] = dataclasses.asdict(experiment.eval)
    if experiment.lm_eval is not None:
        out["lm_eval"] = dataclasses.asdict(experiment.lm_eval)
    return json.loads(json.dumps(out))  # tuples -> lists
