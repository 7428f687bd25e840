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
from blt_jax.evals import noise as noising
from blt_jax.evals import scoring
from blt_jax.metrics.throughput import Window

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
        a loaded `BLTModel`; also a byte-level LM (a run of an entropy LM, such as the quickstart's
        baseline, or an `api.ByteLM`), which answers loglikelihood requests only.
      entropy: the entropy LM of a run patched by entropy (`from_pretrained`'s `entropy_path`).
      batch_size: rows per forward pass (a static shape).
      max_length: the most bytes of text a row holds (older context is cut first).
      max_gen_bytes: default byte budget of `generate_until` (a task's `max_gen_toks` wins).
      progress: progress bars and a throughput line per request type.
      noise: one of `noise.NOISES` (or None): the paper's input noising, applied to the context of
        every `loglikelihood` and `generate_until` request (never to the continuations scored, nor
        to rolling documents); change it between runs by setting `self.noise`.
      noise_seed: the seed the noising draws from (with each context's text).
    """

    def __init__(
        self,
        pretrained: Any,
        entropy: str | None = None,
        batch_size: int | str = 8,
        max_length: int = 2048,
        max_gen_bytes: int = 256,
        progress: bool = True,
        noise: str | None = None,
        noise_seed: int = 0,
    ):
        super().__init__()
        self.model = scoring.load_model(pretrained, entropy) if isinstance(pretrained, str) else pretrained
        from blt_jax.api import TokenLM

        if isinstance(self.model, TokenLM):
            # Requests split text at byte offsets, which need not be token boundaries.
            raise InputError(
                "lm-eval scores BLTs and byte LMs; a token transformer's requests would need its own "
                "tokenization of each context and continuation, which this backend does not do"
            )
        if isinstance(batch_size, str) and batch_size.startswith("auto"):
            batch_size = 8  # lm_eval's --batch_size auto: rows are a static shape, so take the default
        self.batch_size = int(batch_size)
        self.noise = noising.check_noise(noise)
        self.noise_seed = int(noise_seed)
        self.max_length = int(max_length)
        self.max_gen_bytes = int(max_gen_bytes)
        self.progress = bool(progress) if not isinstance(progress, str) else progress.lower() == "true"
        if self.batch_size < 1 or self.max_length < 2:
            raise InputError(f"batch_size must be >= 1 and max_length >= 2, got {batch_size} and {max_length}")

    def _context(self, text: str) -> bytes:
        return _as_bytes(noising.noise_context(self.noise, text, self.noise_seed))

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        pairs = [(self._context(r.args[0]), _as_bytes(r.args[1])) for r in requests]
        meter = Window()
        out = scoring.score_continuations(self.model, pairs, self.batch_size, self.max_length, self.progress)
        meter.add(requests=len(pairs), bytes=sum(len(a) + len(b) for a, b in pairs))
        logger.info(meter.line("loglikelihood"))
        return [(s.logprob, s.greedy) for s in out]

    def loglikelihood_rolling(self, requests) -> list[float]:
        documents = [_as_bytes(r.args[0]) for r in requests]
        meter = Window()
        out = scoring.score_documents(self.model, documents, self.batch_size, self.max_length, progress=self.progress)
        meter.add(requests=len(documents), bytes=sum(map(len, documents)))
        logger.info(meter.line("loglikelihood_rolling"))
        return out

    def generate_until(self, requests) -> list[str]:
        meter = Window()
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
                chunk = members[start : start + self.batch_size]
                # The newest max_length bytes of each context (BOS is added by the generator).
                prompts = [self._context(requests[i].args[0])[-self.max_length :] for i in chunk]
                filler = [prompts[0]] * (self.batch_size - len(prompts))  # one batch shape: one compilation
                outs = self.model.generate(prompts + filler, max_new_bytes=budget, temperature=temperature)
                for i, text in zip(chunk, outs):
                    texts[i] = cut_at_stops(text, settings[i])
                meter.add(requests=len(chunk), bytes=sum(map(len, prompts)))
        logger.info(meter.line("generate_until"))
        return texts


def task_manager(tasks: Sequence[str], include_path: str | None = None, include_flag: str = "--include-path"):
    """lm-eval's TaskManager (the task YAMLs under `include_path`, and lm-eval's own tasks), once
    every task in `tasks` is known to it (`include_flag`: how the error names the include path's
    setting).

    When `include_path` holds every task, lm-eval's own thousands of task files are not indexed
    (about 7 s on a 2-core host).

    Raises:
      InputError: naming an unknown task and its close matches.
    """
    import difflib

    from lm_eval.tasks import TaskManager

    known: list[str] = []
    if include_path:
        manager = TaskManager(include_path=include_path, include_defaults=False)
        if all(task in manager.all_tasks for task in tasks):
            return manager
        known = list(manager.all_tasks)
    included = set(known)
    known += [name for name in lm_eval_task_names() if name not in included]
    for task in tasks:
        if task not in known:
            close = difflib.get_close_matches(task, known, n=3)
            hint = (
                f"; did you mean {', '.join(close)}?" if close else f" ({include_flag} adds a directory of task YAMLs)"
            )
            raise InputError(f"unknown task {task!r}{hint}")
    return TaskManager(include_path=include_path)


def lm_eval_task_names() -> list[str]:
    """The names of lm-eval's own tasks and groups, indexed once per lm-eval version and kept in
    `$XDG_CACHE_HOME/blt_jax/` (default `~/.cache/blt_jax/`): indexing its thousands of task files
    takes about 15 s on a 2-core host, which a misspelt task name would otherwise cost every time."""
    import json
    import os
    import tempfile

    import lm_eval
    from lm_eval.tasks import TaskManager

    version = getattr(lm_eval, "__version__", "unknown")
    folder = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "blt_jax")
    path = os.path.join(folder, f"lm_eval_tasks-{version}.json")
    try:
        with open(path) as f:
            names = json.load(f)
        if isinstance(names, list) and names:
            return names
    except (OSError, ValueError):
        pass  # not indexed yet, or unreadable: index again
    names = list(TaskManager().all_tasks)
    try:  # written whole or not at all: processes may index at once
        os.makedirs(folder, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=folder, suffix=".tmp", delete=False) as f:
            json.dump(names, f)
        os.replace(f.name, path)
    except OSError:
        pass  # a read-only home: index again next time
    return names


def run_tasks(
    model: BltLM, tasks: Sequence[str], num_fewshot: int | None = None, limit: float | None = None, manager=None
) -> dict:
    """Runs lm-eval tasks by name on `model` (`manager`: a `task_manager`, default lm-eval's own tasks).

    Returns:
      lm-eval's results dict (`results`, `n-samples`, `configs`, ...), JSON-ready.
    """
    import json

    import lm_eval
    from lm_eval.utils import handle_non_serializable

    manager = manager or task_manager(tasks)
    results = lm_eval.simple_evaluate(
        model=model, tasks=list(tasks), num_fewshot=num_fewshot, limit=limit, task_manager=manager
    )
    return json.loads(json.dumps(results, default=handle_non_serializable))


def noised_name(task: str, noise: str | None) -> str:
    """How a task run under a noising is named in merged results: `task@noise` (clean: `task`)."""
    return task if noise is None else f"{task}@{noise}"


# The entries of lm-eval's results dict that are keyed by task (or group) name.
TASK_KEYED = ("results", "groups", "group_subtasks", "configs", "versions", "n-shot", "higher_is_better", "n-samples")


def run_noised(
    model: BltLM,
    tasks: Sequence[str],
    noises: Sequence[str | None],
    num_fewshot: int | None = None,
    limit: float | None = None,
    manager=None,
) -> dict:
    """`run_tasks` once per noising, merged into one lm-eval results dict whose per-task tables
    (`results`, `versions`, `n-shot`, `higher_is_better`, `n-samples`, `configs`, ...) name each
    task as `noised_name(task, noise)`, so lm-eval's `make_table` prints them side by side.
    """
    merged: dict = {}
    for noise in noises:
        model.noise = noise
        results = run_tasks(model, tasks, num_fewshot, limit, manager)
        for key, value in results.items():
            if key in TASK_KEYED and isinstance(value, dict):
                table = merged.setdefault(key, {})
                for name, entry in value.items():
                    if key == "group_subtasks":
                        entry = [noised_name(sub, noise) for sub in entry]
                    elif isinstance(entry, dict) and "alias" in entry:
                        entry = dict(entry, alias=noised_name(entry["alias"], noise))
                    table[noised_name(name, noise)] = entry
            else:
                merged.setdefault(key, value)
    merged["blt_jax"] = {"noises": [n or "none" for n in noises], "noise_seed": model.noise_seed}
    return merged
