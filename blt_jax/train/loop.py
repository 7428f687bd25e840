"""The training loop: resume or initialise, step, log one step late, evaluate, checkpoint, stop cleanly.

`train_and_evaluate(experiment, workdir)` is what `blt-jax train` runs and what a notebook calls. The
workdir receives `config.json` (the resolved configuration), `shardings.json` (every parameter's
PartitionSpec on the mesh), `metrics.jsonl`, TensorBoard events and `checkpoints/`. A run started again
on the same workdir resumes from its newest readable checkpoint, data iterator included. SIGTERM (TPU
preemption) makes the loop save a checkpoint after the current step and return normally.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import jax
from jax.experimental import multihost_utils
from tqdm import tqdm

from blt_jax import paths
from blt_jax.checkpoint import Checkpointer
from blt_jax.data.packing import mean_patch_length
from blt_jax.data.pipeline import DataConfig, build_dataset, load_tokenizer
from blt_jax.data.sources import SourceStats, resolve_spec
from blt_jax.errors import InputError, TrainingStopped
from blt_jax.experiment.config import ExperimentConfig, experiment_to_dict
from blt_jax.loading import CheckpointError, runs
from blt_jax.loading.init_from import resolve_init_from
from blt_jax.metrics.perf import total_peak_flops
from blt_jax.metrics.writers import MetricsWriter
from blt_jax.models import config_to_dict, model_kind
from blt_jax.parallel import describe_shardings, process_rows
from blt_jax.params import init_params
from blt_jax.train.programs import TrainPrograms
from blt_jax.train.skips import SkipWatch, Verdict

logger = logging.getLogger("blt_jax.train")
# What every train step reports (`train.step.train_step`); a kind's objective may add more.
STEP_METRICS = ("loss", "bpb", "grad_norm", "skipped", "lr", "bytes", "patches")


class _Preemption:
    """Turns SIGTERM (preemption) and a first Ctrl-C (SIGINT) into a flag the loop checks after every
    step, so it checkpoints and stops cleanly; a second Ctrl-C interrupts at once. Handlers are
    restored on exit.

    With several processes, every one must stop after the same step, whichever was signalled (a
    preempted host): SIGTERM is left to JAX's preemption service, which spreads the notice to all
    processes and agrees on the step (`multihost_utils.reached_preemption_sync_point`, asked after
    every step). Ctrl-C is not caught there: the launcher turns it into SIGTERM for every process.

    Attributes:
      requested: a stop was asked for.
      signal_name: which signal asked ("SIGTERM" / "SIGINT").
    """

    def __init__(self):
        self.requested = False
        self.signal_name = None
        self._previous = {}
        self._shared = jax.process_count() > 1

    def stop_after(self, step: int) -> bool:
        """Whether to checkpoint and stop after `step` (the number of steps done); with several
        processes, true on all of them at the same step."""
        if self._shared and multihost_utils.reached_preemption_sync_point(step):
            self.requested, self.signal_name = True, self.signal_name or "SIGTERM"
        return self.requested

    def __enter__(self):
        for sig in () if self._shared else (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. some notebook runners): no handler
                pass
        return self

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now, without the checkpoint
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        hint = " (Ctrl-C again to stop at once)" if signum == signal.SIGINT else ""
        logger.warning("%s received: checkpointing after this step, then stopping%s", self.signal_name, hint)

    def __exit__(self, *exc):
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}


def _resolve_data(config: DataConfig) -> DataConfig:
    """A pipeline with its corpus and tokenizer paths resolved."""
    tokenizer = paths.resolve(config.tokenizer) if config.tokenizer else config.tokenizer
    return dataclasses.replace(config, source=resolve_spec(config.source), tokenizer=tokenizer)


def resolve_experiment_paths(experiment: ExperimentConfig) -> ExperimentConfig:
    """The experiment with its corpus, tokenizer, `init_from` and `lm_eval` paths resolved (`~`, relative),
    so the saved configuration names the same files from any working directory."""
    data = _resolve_data(experiment.data)
    evaluation = experiment.eval
    if evaluation is not None:
        evaluation = _resolve_data(evaluation)
    train = experiment.train
    if train.init_from:
        train = dataclasses.replace(train, init_from=resolve_init_from(train.init_from))
    lm_eval = experiment.lm_eval
    if lm_eval is not None:
        lm_eval = dataclasses.replace(
            lm_eval,
            **{
                name: paths.resolve(getattr(lm_eval, name))
                for name in ("include_path", "entropy_model")
                if getattr(lm_eval, name)
            },
        )
    return dataclasses.replace(experiment, data=data, eval=evaluation, train=train, lm_eval=lm_eval)


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out = {}
    for key, value in tree.items():
        out.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def check_workdir(workdir: str, experiment: ExperimentConfig) -> None:
    """Refuses a workdir whose checkpoints hold another model (resuming would fail deep in Orbax).

    Raises:
      InputError: naming the first differing model fields.
    """
    if not runs.is_training_run(workdir):
        return
    try:
        saved = runs.read_run_config(workdir)
    except CheckpointError:  # no complete checkpoint yet: nothing to resume, nothing to clash with
        return
    # The model alone (`config_to_dict`): run options (attention) may change between sessions.
    stored = _flat({"model": config_to_dict(saved.model)})
    wanted = _flat({"model": config_to_dict(experiment.model)})
    differ = sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))
    if differ:
        shown = "; ".join(f"{k} {stored.get(k)!r} there, {wanted.get(k)!r} here" for k in differ[:3])
        more = f" (and {len(differ) - 3} more)" if len(differ) > 3 else ""
        raise InputError(
            f"{workdir} holds checkpoints of another model ({shown}{more}); choose another "
            "--workdir, or the configuration that run was started with"
        )


class Evaluator(Protocol):
    """An evaluation run during training besides bits per byte (see `train_and_evaluate`)."""

    every: int  # in steps; 0 = with bits per byte (train.eval_every)

    def __call__(self, step: int, params: Any) -> Mapping[str, float]:
        """Scores the training parameters (global arrays, the training layout) after `step`."""


def _due(every: int, done: int) -> bool:
    return bool(every) and done % every == 0


def _eval_batches(experiment: ExperimentConfig, programs: TrainPrograms):
    config = experiment.eval
    if config is None:
        return []
    # One stream in corpus order (every process reads it and keeps its rows): the evaluation sees the
    # same bytes on any number of processes, and all of them up to its batch budget.
    one_stream = dataclasses.replace(config, shards=1)
    iterator = iter(build_dataset(one_stream, process_rows(programs.batch_sharding, config.batch_size)))
    out = []
    for _ in range(experiment.train.eval_batches):
        try:
            out.append(next(iterator))
        except StopIteration:
            break
    return out


def train_and_evaluate(
    experiment: ExperimentConfig, workdir: str, progress: bool = True, evaluators: Sequence[Evaluator] = ()
) -> dict:
    """Trains (or resumes) a run in `workdir`.

    Args:
      experiment: the run's configuration.
      workdir: the run directory (relative, `~` or `gs://`; created; resumed if it holds checkpoints
        of the same model).
      progress: show a progress bar.
      evaluators: more evaluations (e.g. lm-eval tasks, `blt_jax.evals.during_training`), each run
        every `evaluator.every` steps (0: with bits per byte) and after the last step, on every
        process; what they return is logged beside bits per byte.

    Returns:
      Summary: final step, last logged metrics, last evaluation, whether SIGTERM or Ctrl-C stopped it
      ("preempted", "stop_signal").
    """
    train = experiment.train
    lead = jax.process_index() == 0
    workdir = paths.resolve(workdir)
    experiment = resolve_experiment_paths(experiment)
    config_dict = experiment_to_dict(experiment)
    check_workdir(workdir, experiment)
    kind = model_kind(experiment.model)
    for data in (experiment.data, experiment.eval):
        if data is not None:
            load_tokenizer(data, experiment.model.vocab_size)  # a missing or too large tokenizer fails here
    programs = TrainPrograms(experiment)
    if lead:
        paths.makedirs(workdir)
        paths.write_json(paths.join(workdir, "config.json"), config_dict)
        if experiment.data.tokenizer:  # the run stays loadable when it moves off its study / corpus
            paths.copy_file(experiment.data.tokenizer, paths.join(workdir, runs.TOKENIZER_FILE))
        paths.write_json(
            paths.join(workdir, "shardings.json"),
            {
                "mesh": {k: int(v) for k, v in programs.mesh.shape.items()},
                "params": describe_shardings(programs.param_shardings, programs.abstract_state.params),
            },
        )

    stats = SourceStats()
    rows = process_rows(programs.batch_sharding, experiment.data.batch_size)  # this process's rows of a batch
    iterator = iter(build_dataset(experiment.data, rows, stats=stats))
    checkpointer = Checkpointer(runs.checkpoints_dir(workdir), train.keep_checkpoints)
    restored = checkpointer.restore_latest(programs.abstract_state, programs.state_shardings, iterator)
    if restored is not None:
        start, state = restored
        logger.info("resumed from step %d of %s", start, workdir)
    else:
        start = 0
        if train.init_from:
            fresh = lambda: init_params(experiment.model, jax.random.key(train.seed))
            state = programs.init_from_params(runs.load_initial_params(experiment.model, train.init_from, fresh))
        else:
            state = programs.init()

    writer = MetricsWriter(workdir, resumed_at=start)
    peak = total_peak_flops(programs.mesh.devices.flat, train.peak_flops)
    row_bytes = experiment.data.row_bytes
    summary: dict[str, Any] = {"start_step": start, "preempted": False, "metrics": {}, "eval": {}}
    bar = tqdm(total=train.steps, initial=start, disable=not (progress and lead), unit="step", dynamic_ncols=True)
    window = {"bytes": 0, "patches": 0, "rows": 0, "time": time.perf_counter()}
    pending = None
    step = start
    watch = SkipWatch(train.max_skipped_steps, train.rewind_on_spike)
    verdict = [Verdict.GO_ON]  # of the step flushed last

    def flush(entry, final: bool = False) -> None:
        """Logs a finished step's metrics (fetched one step late, so the device never waits).

        A window of steps is timed from the start of its first step to the start of the step after
        its last (`window["step_start"]`, taken before each step reads its batch); the final row, with
        no step after it, to now.
        """
        p_step, p_metrics = entry
        now = time.perf_counter() if final else window["step_start"]
        # The step's own global counts (over every process's rows), not this host's share.
        values = {k: float(v) for k, v in jax.device_get(p_metrics).items()}
        verdict[0] = watch.observe(p_step, values)
        step_counts = {"bytes": values["bytes"], "patches": values["patches"], "rows": experiment.data.batch_size}
        if p_step == start:  # the first step includes compilation: not throughput
            window.update(bytes=0, patches=0, rows=0, time=now)
        else:
            for key in ("bytes", "patches", "rows"):
                window[key] += step_counts[key]
        if not ((p_step + 1) % train.log_every == 0 or final):
            return
        timed = window["bytes"] > 0  # else only the compilation step is in the window
        counts = window if timed else step_counts
        elapsed = max(now - window["time"], 1e-9)
        mean_len = mean_patch_length(counts["bytes"], counts["rows"], counts["patches"], kind.token_rows)
        flops_per_byte = kind.training_flops_per_byte(row_bytes, mean_len)
        bytes_per_s = window["bytes"] / elapsed if timed else None
        row = {
            "loss": values["loss"],
            "bpb": values["bpb"],
            "grad_norm": values["grad_norm"],
            "lr": values["lr"],
            "bytes_per_s": bytes_per_s,
            "patches_per_s": window["patches"] / elapsed if timed else None,
            "mean_patch_len": mean_len,
            "flops_per_byte": flops_per_byte,
            "mfu": flops_per_byte * bytes_per_s / peak if timed else None,
            "skipped_steps": watch.total,
            "rewinds": watch.rewinds,
            # The objective's other losses (a model kind's own: byteification's hidden and distill).
            **{k: v for k, v in values.items() if k not in STEP_METRICS},
        }
        writer.write(p_step + 1, row)
        summary["metrics"] = {"step": p_step + 1, **row}
        bar.set_postfix(loss=f"{row['loss']:.3f}", bpb=f"{row['bpb']:.3f}", Bps=f"{bytes_per_s:,.0f}" if timed else "-")
        window.update(bytes=0, patches=0, rows=0, time=now)

    def stop_if_told(p_step: int) -> None:
        """Ends the run in one line when the step flushed last was one skip too many; nothing is
        saved after it (the checkpoints hold the parameters from before the skips)."""
        if verdict[0] is not Verdict.STOP:
            return
        writer.flush()
        checkpointer.wait()
        newest = checkpointer.steps()[-1] if checkpointer.steps() else None
        checkpointer.close()
        bar.close()
        writer.close()
        raise TrainingStopped(watch.stop_message(p_step, newest))

    def rewind_if_told(state):
        """The newest checkpoint's parameters and optimizer state when the step flushed last was skipped
        and `train.rewind_on_spike` is on; the data stream and the step count go on from here."""
        if verdict[0] is not Verdict.REWIND:
            return state
        checkpointer.wait()
        steps = checkpointer.steps()
        if not steps:
            logger.warning("no checkpoint to rewind to yet: the skipped step is only skipped")
            return state
        restored = checkpointer.restore(steps[-1], programs.abstract_state, programs.state_shardings)
        watch.rewinds += 1
        now = int(jax.device_get(state.step))
        logger.warning(
            "rewound to checkpoint %d; the batches of steps %d to %d are skipped", steps[-1], steps[-1] + 1, now
        )
        return restored.replace(step=state.step)

    with _Preemption() as preemption:
        for step in range(start, train.steps):
            window["step_start"] = time.perf_counter()
            host = next(iterator)
            state, metrics = programs.step(state, programs.global_batch(host))
            if pending is not None:
                flush(pending)
                stop_if_told(pending[0])
                state = rewind_if_told(state)
            pending = (step, metrics)
            bar.update(1)
            done = step + 1
            bpb_due = bool(train.eval_every) and done % train.eval_every == 0 and done < train.steps
            due = [e for e in evaluators if done < train.steps and _due(e.every or train.eval_every, done)]
            if bpb_due or due:
                eval_start = time.perf_counter()
                if bpb_due:
                    result = programs.evaluate(state.params, _eval_batches(experiment, programs))
                    writer.write(done, result)
                    summary["eval"] = {"step": done, **result}
                for evaluator in due:
                    writer.write(done, evaluator(done, state.params))
                # Evaluation time is not training time: the window's clock skips it, and keeps the
                # training steps it already holds (restarting it would count their bytes in no time).
                window["time"] += time.perf_counter() - eval_start
            if preemption.stop_after(done):
                checkpointer.save(done, state, iterator, config_dict)
                writer.flush()
                summary["preempted"] = True
                summary["stop_signal"] = preemption.signal_name
                break
            if train.checkpoint_every and done % train.checkpoint_every == 0:
                checkpointer.save(done, state, iterator, config_dict)
                writer.flush()
        else:
            if pending is not None:
                flush(pending, final=True)
                stop_if_told(pending[0])
                pending = None
            done = train.steps
            if done > start and (not checkpointer.steps() or checkpointer.steps()[-1] != done):
                checkpointer.save(done, state, iterator, config_dict)
                writer.flush()
            if experiment.eval is not None:
                result = programs.evaluate(state.params, _eval_batches(experiment, programs))
                writer.write(done, result)
                summary["eval"] = {"step": done, **result}
            if done > start:
                for evaluator in evaluators:
                    scores = evaluator(done, state.params)
                    writer.write(done, scores)
                    summary.setdefault("extra_eval", {}).update(scores)
        if pending is not None:
            flush(pending, final=True)
    checkpointer.wait()
    checkpointer.close()
    bar.close()
    writer.close()
    summary["step"] = int(jax.device_get(state.step))
    summary["skipped_steps"], summary["rewinds"] = watch.total, watch.rewinds
    summary["data"] = stats.as_dict()
    if summary["eval"]:
        logger.info("step %d: eval bpb %.4f", summary["eval"]["step"], summary["eval"]["eval_bpb"])
    return summary
