"""An lm-evaluation-harness backend (`lm_eval` 0.4.x; the `eval` extra): `BltLM`, registered as
"blt_jax" once this module is imported.

    from blt_jax.evals.harness import BltLM
    lm_eval.simple_evaluate(model=BltLM("runs/quickstart/blt", entropy="runs/quickstart/entropy_lm"),
                            tasks=["arc_easy"])

lm-eval 0.4 finds models in its own registry only (no plugin entry points), so `lm_eval --model
blt_jax` works in a process that imported this module; `blt-jax lm-eval` is the command line.

Requests are strings: a BLT reads their UTF-8 bytes (BOS first, no EOS), so there is no tokenizer
and no token/byte mismatch. `loglikelihood` patches context + continuation with the model's own
rule as one forward pass over the text would; `loglikelihood_rolling` scores a document's bytes in
overlapping windows (`scoring.score_documents`); `generate_until` runs the cached decoder and cuts
the text at the first stop string.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from blt_jax.errors import InputError
from blt_jax.evals import scoring

logger = logging.getLogger("blt_jax.evals")


def _as_bytes(text: str) -> bytes:
    return text.encode("utf-8", errors="ignore")  # what the tokenizer does to a str


def cut_at_stops(text: str, stops: Sequence[str]) -> str:
    """`text` up to (not including) the earliest of the stop strings."""
    cut = min((text.find(s) for s in stops if s and s in text), default=len(text))
    return text[:cut]


@register_model("blt_jax")
class BltLM(LM):
    """A BLT behind lm-evaluation-harness's `LM` interface.

    Args:
      pretrained: a training run or model directory (any layout `blt_jax.from_pretrained` reads), or
        a loaded `BLTModel`.
      entropy: the entropy LM of a run patched by entropy (`from_pretrained`'s `entropy_path`).
      batch_size: rows per forward pass (a static shape).
      max_length: the most bytes of text a row holds (older context is cut first).
      max_gen_bytes: default byte budget of `generate_until` (a task's `max_gen_toks` wins).
      progress: progress bars and a throughput line per request type.
    """

    def __init__(self, pretrained: Any, entropy: str | None = None, batch_size: int | str = 8,
                 max_length: int = 2048, max_gen_bytes: int = 256, progress: bool = True):
        super().__init__()
        if isinstance(pretrained, str):
            from blt_jax.api import from_pretrained

            pretrained = from_pretrained(pretrained, entropy_path=entropy)
        self.model = pretrained
        self.batch_size = int(batch_size)
        self.max_length = int(max_length)
        self.max_gen_bytes = int(max_gen_bytes)
        self.progress = bool(progress) if not isinstance(progress, str) else progress.lower() == "true"
        if self.batch_size < 1 or self.max_length < 2:
            raise InputError(f"batch_size must be >= 1 and max_length >= 2, got {batch_size} and {max_length}")

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        pairs = [(_as_bytes(r.args[0]), _as_bytes(r.args[1])) for r in requests]
        meter = scoring.Throughput()
        out = scoring.score_continuations(self.model, pairs, self.batch_size, self.max_length, self.progress)
        meter.add(len(pairs), sum(len(a) + len(b) for a, b in pairs))
        logger.info(meter.line("loglikelihood"))
        return [(s.logprob, s.greedy) for s in out]

    def loglikelihood_rolling(self, requests) -> list[float]:
        documents = [_as_bytes(r.args[0]) for r in requests]
        meter = scoring.Throughput()
        out = scoring.score_documents(self.model, documents, self.batch_size, self.max_length, progress=self.progress)
        meter.add(len(documents), sum(map(len, documents)))
        logger.info(meter.line("loglikelihood_rolling"))
        return out

    def generate_until(self, requests) -> list[str]:
        meter = scoring.Throughput()
        groups: dict[tuple, list[int]] = {}
        settings = []
        for i, request in enumerate(requests):
            context, kwargs = request.args
            kwargs = dict(kwargs or {})
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            temperature = float(kwargs.get("temperature", 0.0)) if kwargs.get("do_sample", False) else 0.0
            budget = int(kwargs.get("max_gen_toks", self.max_gen_bytes))
            settings.append(until)
            groups.setdefault((temperature, budget), []).append(i)
        texts: list[str] = [""] * len(requests)
        for (temperature, budget), members in groups.items():
            for start in range(0, len(members), self.batch_size):
                chunk = members[start: start + self.batch_size]
                # The newest max_length bytes of each context (BOS is added by the generator).
                prompts = [_as_bytes(requests[i].args[0])[-self.max_length:] for i in chunk]
                filler = [prompts[0]] * (self.batch_size - len(prompts))  # one batch shape: one compilation
                outs = self.model.generate(prompts + filler, max_new_bytes=budget, temperature=temperature)
                for i, text in zip(chunk, outs):
                    texts[i] = cut_at_stops(text, settings[i])
                meter.add(len(chunk), sum(map(len, prompts)))
        logger.info(meter.line("generate_until"))
        return texts


def task_manager(tasks: Sequence[str], include_path: str | None = None):
    """lm-eval's TaskManager (its own tasks, and the task YAMLs under `include_path`), once every
    task in `tasks` is known to it.

    Raises:
      InputError: naming an unknown task and its close matches.
    """
    import difflib

    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=include_path)
    for task in tasks:
        if task not in manager.all_tasks:
            close = difflib.get_close_matches(task, manager.all_tasks, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else " (--include-path adds a directory of task YAMLs)"
            raise InputError(f"unknown task {task!r}{hint}")
    return manager


def run_tasks(model: BltLM, tasks: Sequence[str], num_fewshot: int | None = None, limit: float | None = None,
              manager=None) -> dict:
    """Runs lm-eval tasks by name on `model` (`manager`: a `task_manager`, default lm-eval's own tasks).

    Returns:
      lm-eval's results dict (`results`, `n-samples`, `configs`, ...), JSON-ready.
    """
    import json

    import lm_eval
    from lm_eval.utils import handle_non_serializable

    manager = manager or task_manager(tasks)
    results = lm_eval.simple_evaluate(model=model, tasks=list(tasks), num_fewshot=num_fewshot, limit=limit,
                                      task_manager=manager)
    return json.loads(json.dumps(results, default=handle_non_serializable))
