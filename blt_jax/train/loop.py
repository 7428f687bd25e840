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
from blt_jax.data.pipeline import DataConfig, build_dataset, load_tokenizer
from blt_jax.data.sources import SourceStats, resolve_spec
from blt_jax.errors import InputError, TrainingStopped
from blt_jax.experiment.config import ExperimentConfig, experiment_to_dict
from blt_jax.loading import CheckpointError, runs
from blt_jax.loading.init_from import resolve_init_from
from blt_jax.metrics.perf import total_peak_flops
from blt_jax.metrics.writers import MetricsWriter
from blt_jax.models import config_to_dict
from blt_jax.parallel import describe_shardings, process_rows
from blt_jax.params import init_params
from blt_jax.train.programs import TrainPrograms
from blt_jax.train.skips import SkipWatch, Verdict
from blt_jax.train.step_log import StepLog

logger = logging.getLogger("blt_jax.train")


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
    workdir = paths.resolve(workdir)
    experiment = resolve_experiment_paths(experiment)
    check_workdir(workdir, experiment)
    for data in (experiment.data, experiment.eval):
        if data is not None:
            load_tokenizer(data, experiment.model.vocab_size)  # a missing or too large tokenizer fails here
    programs = TrainPrograms(experiment)
    if jax.process_index() == 0:
        write_run_files(workdir, experiment, programs)
    return _Session(experiment, workdir, programs, progress, evaluators).run()


def write_run_files(workdir: str, experiment: ExperimentConfig, programs: TrainPrograms) -> None:
    """`config.json`, `shardings.json` and the tokenizer (the run stays loadable when it moves off its
    study or corpus) of a run directory."""
    paths.makedirs(workdir)
    paths.write_json(paths.join(workdir, "config.json"), experiment_to_dict(experiment))
    if experiment.data.tokenizer:
        paths.copy_file(experiment.data.tokenizer, paths.join(workdir, runs.TOKENIZER_FILE))
    shardings = {
        "mesh": {k: int(v) for k, v in programs.mesh.shape.items()},
        "params": describe_shardings(programs.param_shardings, programs.abstract_state.params),
    }
    paths.write_json(paths.join(workdir, "shardings.json"), shardings)


class _Session:
    """One session of a run: from the newest checkpoint (or initialisation) to the last step, a
    signal, or a stop."""

    def __init__(
        self,
        experiment: ExperimentConfig,
        workdir: str,
        programs: TrainPrograms,
        progress: bool,
        evaluators: Sequence[Evaluator],
    ):
        train = experiment.train
        self.experiment, self.train, self.programs, self.evaluators = experiment, train, programs, evaluators
        self.config_dict = experiment_to_dict(experiment)
        self.stats = SourceStats()
        rows = process_rows(programs.batch_sharding, experiment.data.batch_size)  # this process's rows
        self.iterator = iter(build_dataset(experiment.data, rows, stats=self.stats))
        self.checkpointer = Checkpointer(runs.checkpoints_dir(workdir), train.keep_checkpoints)
        self.start, self.state = self._initial_state(workdir)
        self.writer = MetricsWriter(workdir, resumed_at=self.start)
        lead = jax.process_index() == 0
        self.bar = tqdm(
            total=train.steps, initial=self.start, disable=not (progress and lead), unit="step", dynamic_ncols=True
        )
        self.watch = SkipWatch(train.max_skipped_steps, train.rewind_on_spike)
        peak = total_peak_flops(programs.mesh.devices.flat, train.peak_flops)
        self.log = StepLog(experiment, self.writer, self.watch, peak, self.start, self.bar)
        self.pending: tuple[int, Any] | None = None  # the step whose metrics are logged after the next
        self.summary: dict[str, Any] = {"start_step": self.start, "preempted": False, "metrics": {}, "eval": {}}

    def _initial_state(self, workdir: str):
        """(first step, train state): the newest readable checkpoint's, or a new state (from
        `train.init_from` where given)."""
        programs, train = self.programs, self.train
        restored = self.checkpointer.restore_latest(programs.abstract_state, programs.state_shardings, self.iterator)
        if restored is not None:
            logger.info("resumed from step %d of %s", restored[0], workdir)
            return restored
        if not train.init_from:
            return 0, programs.init()
        model = self.experiment.model
        fresh = lambda: init_params(model, jax.random.key(train.seed))
        return 0, programs.init_from_params(runs.load_initial_params(model, train.init_from, fresh))

    def run(self) -> dict:
        train = self.train
        with _Preemption() as preemption:
            for step in range(self.start, train.steps):
                self._step(step)
                done = step + 1
                if done < train.steps:
                    self._evaluate_due(done)
                if preemption.stop_after(done):
                    self._save(done)
                    self.summary.update(preempted=True, stop_signal=preemption.signal_name)
                    break
                if train.checkpoint_every and done % train.checkpoint_every == 0:
                    self._save(done)
            else:
                self._finish()
            self._log_pending(final=True, stop=False, rewind=False)  # a signal's: the checkpoint is saved
        self._close()
        return self._summary()

    def _step(self, step: int) -> None:
        """Runs step `step`, then logs the one before it (its metrics are ready by now) and acts on
        its verdict."""
        self.log.step_started()
        host = next(self.iterator)
        self.state, metrics = self.programs.step(self.state, self.programs.global_batch(host))
        self._log_pending()
        self.pending = (step, metrics)
        self.bar.update(1)

    def _log_pending(self, final: bool = False, stop: bool = True, rewind: bool = True) -> None:
        """Logs the pending step and, as asked, acts on its verdict: stop the run, rewind."""
        if self.pending is None:
            return
        step, metrics = self.pending
        self.pending = None
        verdict = self.log.log(step, metrics, final)
        if stop and verdict is Verdict.STOP:
            self._stop(step)
        elif rewind and verdict is Verdict.REWIND:
            self._rewind()

    def _stop(self, step: int) -> None:
        """Ends the run in one line after one skip too many; nothing is saved after it (the
        checkpoints hold the parameters from before the skips)."""
        self.writer.flush()
        self.checkpointer.wait()
        steps = self.checkpointer.steps()
        self._close()
        raise TrainingStopped(self.watch.stop_message(step, steps[-1] if steps else None))

    def _rewind(self) -> None:
        """The newest checkpoint's parameters and optimizer state (`train.rewind_on_spike`, after a
        skipped step); the data stream and the step count go on from here."""
        self.checkpointer.wait()
        steps = self.checkpointer.steps()
        if not steps:
            logger.warning("no checkpoint to rewind to yet: the skipped step is only skipped")
            return
        programs = self.programs
        restored = self.checkpointer.restore(steps[-1], programs.abstract_state, programs.state_shardings)
        self.watch.rewinds += 1
        now = int(jax.device_get(self.state.step))
        logger.warning(
            "rewound to checkpoint %d; the batches of steps %d to %d are skipped", steps[-1], steps[-1] + 1, now
        )
        self.state = restored.replace(step=self.state.step)

    def _evaluate_due(self, done: int) -> None:
        """Bits per byte and the evaluators due after step `done` (not the last: `_finish` does it)."""
        train = self.train
        bpb_due = _due(train.eval_every, done)
        due = [e for e in self.evaluators if _due(e.every or train.eval_every, done)]
        if not (bpb_due or due):
            return
        began = time.perf_counter()
        if bpb_due:
            self._evaluate_bpb(done)
        for evaluator in due:
            self.writer.write(done, evaluator(done, self.state.params))
        # Evaluation time is not training time: the window's clock skips it, and keeps the training
        # steps it already holds (restarting it would count their bytes in no time).
        self.log.pause(time.perf_counter() - began)

    def _evaluate_bpb(self, done: int) -> None:
        result = self.programs.evaluate(self.state.params, _eval_batches(self.experiment, self.programs))
        self.writer.write(done, result)
        self.summary["eval"] = {"step": done, **result}

    def _save(self, done: int) -> None:
        self.checkpointer.save(done, self.state, self.iterator, self.config_dict)
        self.writer.flush()

    def _finish(self) -> None:
        """After the last step: its row (a stop still stops; a rewind would undo the final state),
        its checkpoint, and every evaluation."""
        self._log_pending(final=True, rewind=False)
        done = self.train.steps
        steps = self.checkpointer.steps()
        if done > self.start and (not steps or steps[-1] != done):
            self._save(done)
        if self.experiment.eval is not None:
            self._evaluate_bpb(done)
        if done > self.start:
            for evaluator in self.evaluators:
                scores = evaluator(done, self.state.params)
                self.writer.write(done, scores)
                self.summary.setdefault("extra_eval", {}).update(scores)

    def _close(self) -> None:
        self.checkpointer.wait()
        self.checkpointer.close()
        self.bar.close()
        self.writer.close()

    def _summary(self) -> dict:
        summary = self.summary
        summary["metrics"] = self.log.last
        summary["step"] = int(jax.device_get(self.state.step))
        summary["skipped_steps"], summary["rewinds"] = self.watch.total, self.watch.rewinds
        summary["data"] = self.stats.as_dict()
        if summary["eval"]:
            logger.info("step %d: eval bpb %.4f", summary["eval"]["step"], summary["eval"]["eval_bpb"])
        return summary
