"""lm-eval side by side: our backend (`blt_jax.evals.harness.BltLM`) vs lm-eval's `hf` backend (HFLM)
running transformers' `BltForCausalLM` on the same weights, exported with `--format hf`.

One local multiple-choice task is written to a temporary directory (task YAML + JSONL, nothing is
downloaded): N items of synthetic Python, each a context of a few hundred bytes and four choices, the
true continuation among three lines taken from other snippets. About half the items cut a line after its
keyword (`return`, `x =`: the context ends in a non-space byte and the choices start with a space),
half at the start of a line (the context ends in a newline and indentation). HFLM moves a context's
trailing whitespace into every continuation and scores it too, so on those items its log-likelihoods
are ours plus one constant per item (the same for all four choices): `acc` cannot differ, `acc_norm`
(divided by each choice's length) can. The per-request comparison therefore takes raw differences on
the first kind of items and centred ones (minus the item's mean) on all.

The model is, by default, a random BLT of the quickstart's "small" shape (`blt_jax.quickstart.plan`)
with its entropy LM, weights scaled x2 (entropy LM x3) so that distributions are peaked, and an
entropy threshold giving ~4.5-byte patches on the task's text, put in the widest gap between the
entropies there so that no fp32 difference between JAX and PyTorch can flip a patch boundary. Or
`--run` loads a trained BLT (`blt_jax.from_pretrained`, its own threshold).

Timing: requests/s of each backend's `loglikelihood` as `lm_eval.simple_evaluate` calls it (model
loading, the export and task building excluded), first run (ours: XLA compilation included, unless a
persistent compilation cache already holds the programs) and the median of `--repeats` further
runs (steady state), alternating ours / hf so that load from other processes hits both alike. On a
shared machine torch's default threads can stall behind other processes (see --torch-threads).

HFLM loads the export as `blt-jax export --format hf` writes it: the tokenizer it needs is there,
and `config.json` turns transformers' cache off (its BLT cache fails, see `convert/hf.py`). Fidelity
check printed first: HFLM's right-padded batches (padding id 0, no attention mask: the patcher sees
the padding, after the text) are compared with one request at a time, falling back to batch size 1
when they differ.

lm-eval's hf backend needs accelerate (in our `test` extra); without it the script says so in one
line and runs ours alone.

  python experiments/bench_lm_eval.py [--items 48] [--repeats 3] [--batch-size 8]
                                      [--run runs/quickstart/blt --entropy runs/quickstart/entropy_lm]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

TASK = "blt_bench_code_mc"
TASK_YAML = """task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
target_delimiter: ""
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""
MEAN_PATCH = 4.5  # bytes per patch the random model's threshold aims at (the quickstart's target)
PAD_TOLERANCE = 1e-4  # nats: padded vs unpadded log-likelihoods closer than this are the same function

# ---- the task --------------------------------------------------------------------------------------

NAMES = [
    "total",
    "count",
    "items",
    "value",
    "result",
    "offset",
    "buffer",
    "index",
    "limit",
    "scale",
    "width",
    "height",
    "name",
    "path",
    "record",
    "size",
    "weight",
    "step",
    "cache",
    "key",
]
FUNCS = [
    "load",
    "parse",
    "merge",
    "update",
    "resolve",
    "compute",
    "render",
    "collect",
    "normalize",
    "split",
    "encode",
    "decode",
    "flush",
    "validate",
    "measure",
]
COMMENTS = [
    "# keep the order stable",
    "# größe in µm, not mm",
    "# 中文注释: cache hit",
    "# see RFC 3986 § 3.3",
    "# naïve but fast enough",
    "# TODO: handle the empty case",
    "# ¿por qué? see above",
]


def _line_pool(rng: np.random.Generator, names: Sequence[str]) -> list[str]:
    """Statement lines (without indentation) over `names`, varied enough that distractors look real."""
    a, b, c = (str(x) for x in rng.choice(names, size=3, replace=False))
    k = int(rng.integers(1, 64))
    return [
        f"{a} = {b} + {k}",
        f"{a} = {b} * {c}",
        f"{a} += {k}",
        f"{a} = [{b} for {b} in {c}]",
        f"{a} = {rng.choice(FUNCS)}({b}, {c})",
        f"{a} = {b}.get({c!r}, {k})",
        f"{a}.append({b})",
        f"{a} = len({b}) - {k}",
        f"{a} = min({b}, {c})",
        f"{a} = {b} // {k}",
    ]


def python_snippet(rng: np.random.Generator, target_bytes: int) -> list[str]:
    """Lines of Python-like code (one or more small functions), about `target_bytes` bytes long."""
    lines: list[str] = []
    while sum(len(x) + 1 for x in lines) < target_bytes:
        names = [str(x) for x in rng.choice(NAMES, size=5, replace=False)]
        func = f"{rng.choice(FUNCS)}_{rng.choice(NAMES)}"
        lines.append(f"def {func}({names[0]}, {names[1]}={int(rng.integers(0, 10))}):")
        lines.append(f'    """{func.replace("_", " ").capitalize()} of {names[0]}, by {names[1]}."""')
        if rng.random() < 0.5:
            lines.append("    " + str(rng.choice(COMMENTS)))
        lines += ["    " + x for x in rng.choice(_line_pool(rng, names), size=3, replace=False)]
        lines.append(f"    for {names[2]} in {names[0]}:")
        lines.append(f"        if {names[2]} > {names[1]}:")
        lines += ["            " + x for x in rng.choice(_line_pool(rng, names), size=2, replace=False)]
        lines.append(f"    return {rng.choice(names)}")
        lines.append("")
    return lines


def _split_after_keyword(line: str) -> tuple[str, str] | None:
    """(head, " rest") of `x = expr` / `return expr` lines, cut before the space after the keyword."""
    stripped = line.lstrip()
    for marker in (" = ", " += "):
        if marker in stripped:
            cut = line.index(marker) + len(marker) - 1
            return line[:cut], line[cut:]
    if stripped.startswith("return "):
        cut = line.index("return") + len("return")
        return line[:cut], line[cut:]
    return None


def make_items(n: int, seed: int = 0, context_bytes: int = 320) -> list[dict[str, Any]]:
    """`n` multiple-choice items (context, four choices, answer index); see the module docstring."""
    rng = np.random.default_rng(seed)
    snippets = [python_snippet(rng, context_bytes + 200) for _ in range(n)]
    items = []
    for i, lines in enumerate(snippets):
        # The cut line: past `context_bytes` of text, on a statement line.
        spans = np.cumsum([len(x) + 1 for x in lines])
        start = int(np.searchsorted(spans, context_bytes))
        candidates = [
            j
            for j in range(max(start, 2), len(lines))
            if lines[j].strip() and not lines[j].lstrip().startswith(('"""', "#", "def "))
        ]
        j = candidates[0] if candidates else len(lines) - 2
        line, before = lines[j], "\n".join(lines[:j]) + "\n"
        keyword_cut = _split_after_keyword(line) if i % 2 == 0 else None
        others = [
            x for k, s in enumerate(snippets) if k != i for x in s if x.strip() and not x.lstrip().startswith("#")
        ]
        if keyword_cut is not None:
            head, answer = keyword_cut
            context = before + head
            pool = [cut[1] for x in others if (cut := _split_after_keyword(x)) is not None]
        else:  # the context ends in the newline and indentation of the cut line
            indent = line[: len(line) - len(line.lstrip())]
            context, answer = before + indent, line.lstrip()
            pool = [x.lstrip() for x in others]
        pool = sorted({x for x in pool if x != answer})
        choices = [answer + "\n"] + [x + "\n" for x in rng.choice(pool, size=3, replace=False)]
        order = rng.permutation(4)
        items.append(
            {
                "context": context,
                "choices": [choices[k] for k in order],
                "answer": int(np.argmax(order == 0)),
                "trailing_space": context != context.rstrip(),
            }
        )
    return items


def write_task(directory: str, items: Sequence[dict[str, Any]]) -> None:
    """The task YAML and its JSONL in `directory` (a TaskManager include path)."""
    data = os.path.join(directory, "items.jsonl")
    with open(data, "w", encoding="utf-8") as f:
        for item in items:
            f.write(json.dumps(item, ensure_ascii=False) + "\n")
    with open(os.path.join(directory, f"{TASK}.yaml"), "w", encoding="utf-8") as f:
        f.write(TASK_YAML.format(task=TASK, data=data))


# ---- the model ---------------------------------------------------------------------------------------


def _scaled(params: Any, factor: float) -> Any:
    import jax

    return jax.tree_util.tree_map(lambda x: x * factor if x.ndim >= 2 else x, params)


def random_model(texts: Sequence[str], seed: int = 0):
    """A random BLT of the quickstart's small shape, with a threshold in the widest entropy gap near the
    (1 - 1/MEAN_PATCH) quantile of the entropies of `texts` (see the module docstring).

    Returns:
      (the `BLTModel`, the distance from the threshold to the nearest entropy of `texts`).
    """
    from blt_jax.api import BLTModel
    from blt_jax.models import model_config_from_dict
    from blt_jax.quickstart import plan as planning
    from blt_jax.tokenizer import encode

    config = model_config_from_dict(planning.blt_model_dict(planning.make_plan(), 1.0), "model")
    base = BLTModel.random(config, seed)
    model = BLTModel(config, _scaled(base.params, 2.0), _scaled(base.entropy_params, 3.0))
    values = []
    for text in texts:  # one row per text, padded to a power of two (few compilations)
        ids = encode(text, add_eos=False)
        row = np.zeros((1, 1 << (len(ids) - 1).bit_length()), np.int32)
        row[0, : len(ids)] = ids
        values.append(np.asarray(model.entropies(row))[0, 1 : len(ids)])  # position 0 (BOS) always starts a patch
    values = np.sort(np.concatenate(values))
    lo, hi = (int(q * len(values)) for q in (1 - 1 / (MEAN_PATCH - 1), 1 - 1 / (MEAN_PATCH + 1)))
    gaps = np.diff(values[lo : hi + 1])
    k = lo + int(np.argmax(gaps))
    threshold = float((values[k] + values[k + 1]) / 2)
    patching = dataclasses.replace(config.patching, threshold=threshold)
    model = BLTModel(dataclasses.replace(config, patching=patching), model.params, model.entropy_params)
    return model, float(np.abs(values - threshold).min())


def threshold_margin(model, texts: Sequence[str]) -> float:
    """The distance from the model's threshold to the nearest entropy over `texts` (a trained model's
    threshold is not placed in a gap: a margin near fp32 noise, ~1e-5, means patch flips are possible)."""
    from blt_jax.tokenizer import encode

    best = np.inf
    for text in texts:
        ids = encode(text, add_eos=False)
        row = np.zeros((1, 1 << (len(ids) - 1).bit_length()), np.int32)
        row[0, : len(ids)] = ids
        ent = np.asarray(model.entropies(row))[0, 1 : len(ids)]
        best = min(best, float(np.abs(ent - model.config.patching.threshold).min()))
    return best


# ---- running and timing ------------------------------------------------------------------------------


class Timed:
    """Wraps an LM's `loglikelihood` to add up the seconds and requests spent in it.

    Args:
      lm: the backend.
      extra: keyword arguments added to each call (HFLM's `disable_tqdm`: lm-eval passes it none, and
        an explicit `disable=False` inside beats tqdm's environment switch).
    """

    def __init__(self, lm: Any, **extra: Any):
        self.lm, self.seconds, self.requests = lm, 0.0, 0
        inner = lm.loglikelihood

        def timed(requests, *args, **kwargs):
            start = time.perf_counter()
            out = inner(requests, *args, **kwargs, **extra)
            self.seconds += time.perf_counter() - start
            self.requests += len(requests)
            return out

        lm.loglikelihood = timed  # lm-eval looks the method up on the instance

    def reset(self) -> None:
        self.seconds, self.requests = 0.0, 0


@dataclasses.dataclass
class RunResult:
    """One `simple_evaluate` of the task: metrics, per-item log-likelihoods, requests/s."""

    acc: float
    acc_norm: float
    loglik: dict[int, list[float]]  # doc_id -> one log-likelihood per choice
    requests: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.requests / max(self.seconds, 1e-9)


def evaluate(timed: Timed, manager: Any) -> RunResult:
    """Runs the task on `timed.lm` once."""
    import lm_eval

    timed.reset()
    out = lm_eval.simple_evaluate(
        model=timed.lm, tasks=[TASK], task_manager=manager, log_samples=True, bootstrap_iters=0
    )
    metrics = out["results"][TASK]
    loglik = {s["doc_id"]: [float(r[0]) for r in s["filtered_resps"]] for s in out["samples"][TASK]}
    return RunResult(metrics["acc,none"], metrics["acc_norm,none"], loglik, timed.requests, timed.seconds)


def padding_check(
    make_hf: Callable[[int], Any], batch_size: int, pairs: Sequence[tuple[str, str]], quiet: bool = True
) -> float:
    """Max |log-likelihood difference| between HFLM at `batch_size` (right-padded batches) and HFLM one
    request at a time, on (context, continuation) `pairs`."""
    from lm_eval.api.instance import Instance

    requests = [Instance(request_type="loglikelihood", doc={}, arguments=pair, idx=0) for pair in pairs]
    batched = make_hf(batch_size).loglikelihood(requests, disable_tqdm=quiet)
    single = make_hf(1).loglikelihood(requests, disable_tqdm=quiet)
    return max(abs(a[0] - b[0]) for a, b in zip(batched, single))


def hf_unavailable() -> str | None:
    """Why lm-eval's hf backend cannot be imported here, in one line (None when it can)."""
    try:
        import lm_eval.models.huggingface  # noqa: F401
    except ImportError as e:
        return (
            f"lm-eval's hf backend cannot be imported: {e} (it needs the 'hf' extra of lm-eval: pip install accelerate)"
        )
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=48, help="multiple-choice items (4 requests each)")
    parser.add_argument("--repeats", type=int, default=3, help="steady-state runs after the first (median)")
    parser.add_argument("--batch-size", type=int, default=8, help="rows per forward, both backends")
    parser.add_argument("--max-length", type=int, default=2048, help="longest row in bytes, both backends")
    parser.add_argument("--run", help="a trained BLT (training run or model directory) instead of a random one")
    parser.add_argument("--entropy", help="the entropy LM of --run (from_pretrained's entropy_path)")
    # On a machine shared with other busy processes torch's OpenMP threads wait on each other: one
    # thread can then be several times faster than two (XLA's thread pool degrades far less).
    parser.add_argument("--torch-threads", type=int, help="torch intra-op threads (default: torch's own)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--progress", action="store_true", help="show lm-eval's progress bars")
    args = parser.parse_args()
    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    for name in ("transformers", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)

    import jax
    import torch
    from lm_eval.tasks import TaskManager

    import blt_jax
    from blt_jax.evals.harness import BltLM

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    why = hf_unavailable()
    items = make_items(args.items, args.seed)
    texts = [item["context"] + choice for item in items for choice in item["choices"]]
    if args.run:
        model = blt_jax.from_pretrained(args.run, entropy_path=args.entropy)
        margin = threshold_margin(model, texts)
        source = f"{args.run} (threshold {model.config.patching.threshold:.4f})"
    else:
        model, margin = random_model(texts, args.seed)
        source = (
            f"random quickstart-small BLT, seed {args.seed} (threshold {model.config.patching.threshold:.4f}, "
            "weights x2, entropy LM x3)"
        )
    n_bytes = sum(len(t.encode()) for t in texts)
    print(f"model: {source}; nearest entropy to the threshold on the task's text: {margin:.2e} nats")
    print(
        f"task: {len(items)} items x 4 choices = {4 * len(items)} requests, {n_bytes / len(texts):.0f} bytes per "
        f"request; {sum(i['trailing_space'] for i in items)} contexts end in whitespace"
    )
    print(
        f"jax {jax.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads); persistent XLA "
        f"cache: {os.environ.get('JAX_COMPILATION_CACHE_DIR') or 'none'}; {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f} before starting"
    )

    with tempfile.TemporaryDirectory() as tmp:
        write_task(tmp, items)
        manager = TaskManager(include_path=tmp)
        ours = Timed(BltLM(model, batch_size=args.batch_size, max_length=args.max_length, progress=False))
        if why is not None:
            print(why)
            first = evaluate(ours, manager)
            print(f"ours only: acc {first.acc:.4f}, acc_norm {first.acc_norm:.4f}, first run {first.rate:.2f} req/s")
            return

        from lm_eval.models.huggingface import HFLM

        export = os.path.join(tmp, "hf")
        model.save(export, format="hf")  # what `blt-jax export SRC DIR --format hf` writes, tokenizer included

        def make_hf(batch_size: int) -> Any:  # the export as written (its config turns the cache off)
            return HFLM(
                pretrained=export, batch_size=batch_size, device="cpu", dtype="float32", max_length=args.max_length
            )

        check_pairs = [(item["context"], choice) for item in items[:4] for choice in item["choices"]]
        pad_diff = padding_check(make_hf, args.batch_size, check_pairs, quiet=not args.progress)
        hf_batch = args.batch_size if pad_diff <= PAD_TOLERANCE else 1
        print(
            f"HFLM right-padded batches of {args.batch_size} vs one request at a time: max |d loglik| "
            f"{pad_diff:.2e} nats -> "
            + (f"HFLM batch size {hf_batch}" if hf_batch > 1 else "they differ: HFLM runs at batch size 1 for fidelity")
        )
        theirs = Timed(make_hf(hf_batch), disable_tqdm=not args.progress)

        runs: dict[str, list[RunResult]] = {"ours": [], "hf": []}
        for _ in range(1 + args.repeats):  # alternating, so that background load hits both alike
            runs["ours"].append(evaluate(ours, manager))
            runs["hf"].append(evaluate(theirs, manager))

    a, b = runs["ours"][0], runs["hf"][0]
    report(items, a, b)
    first = {k: v[0].rate for k, v in runs.items()}
    steady = {k: statistics.median(r.rate for r in v[1:]) if len(v) > 1 else float("nan") for k, v in runs.items()}
    print(
        f"requests/s, first run (ours with XLA compilation): ours {first['ours']:.2f}, hf {first['hf']:.2f}, "
        f"ours/hf {first['ours'] / first['hf']:.2f}"
    )
    print(
        f"requests/s, steady state (median of {args.repeats}): ours {steady['ours']:.2f}, hf {steady['hf']:.2f}, "
        f"ours/hf {steady['ours'] / steady['hf']:.2f}  [ours batch {args.batch_size}, hf batch {hf_batch}]"
    )


def report(items: Sequence[dict[str, Any]], ours: RunResult, hf: RunResult) -> None:
    """Prints accuracies, per-item agreement of the chosen answers and log-likelihood differences."""
    choice = {k: {i: int(np.argmax(v)) for i, v in r.loglik.items()} for k, r in (("ours", ours), ("hf", hf))}
    lengths = {i: np.array([len(c) for c in item["choices"]], float) for i, item in enumerate(items)}
    norm = {
        k: {i: int(np.argmax(np.array(v) / lengths[i])) for i, v in r.loglik.items()}
        for k, r in (("ours", ours), ("hf", hf))
    }
    ids = sorted(ours.loglik)
    agree = sum(choice["ours"][i] == choice["hf"][i] for i in ids)
    agree_norm = sum(norm["ours"][i] == norm["hf"][i] for i in ids)
    raw = [abs(x - y) for i in ids if not items[i]["trailing_space"] for x, y in zip(ours.loglik[i], hf.loglik[i])]
    centred = [
        float(
            np.abs(
                (np.array(ours.loglik[i]) - np.mean(ours.loglik[i])) - (np.array(hf.loglik[i]) - np.mean(hf.loglik[i]))
            ).max()
        )
        for i in ids
    ]
    shift = [
        float(np.mean(np.array(hf.loglik[i]) - np.array(ours.loglik[i]))) for i in ids if items[i]["trailing_space"]
    ]
    print(f"acc: ours {ours.acc:.4f}, hf {hf.acc:.4f}; acc_norm: ours {ours.acc_norm:.4f}, hf {hf.acc_norm:.4f}")
    print(f"chosen answers agree on {agree}/{len(ids)} items (acc), {agree_norm}/{len(ids)} (acc_norm)")
    print(
        f"max |d loglik|: {max(raw, default=float('nan')):.2e} nats raw (contexts without trailing whitespace), "
        f"{max(centred):.2e} centred per item (all)"
    )
    if shift:
        print(
            f"contexts ending in whitespace: HFLM scores that whitespace as part of each continuation "
            f"(mean {np.mean(shift):+.2f} nats per request, the same for all of an item's choices)"
        )
    for i in ids:
        if choice["ours"][i] != choice["hf"][i]:
            print(f"  item {i}: ours {choice['ours'][i]} ({ours.loglik[i]}), hf {choice['hf'][i]} ({hf.loglik[i]})")


if __name__ == "__main__":
    main()
