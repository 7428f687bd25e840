"""Training checkpoints (the only module that imports Orbax).

One Orbax `CheckpointManager` per run directory, asynchronous, keeping the latest N. A checkpoint holds
the train state (step, params, optimizer state), the state of every data shard (JSON, gathered from
all processes and written once, so a run resumes on another process count) and the resolved
configuration (JSON). Restores land directly in the target shardings. A latest checkpoint
that cannot be read (corrupt or partial) is reported and the previous one is used.
`CheckpointReader` reads a run's configuration and parameters alone, changing nothing in it
(`blt_jax.loading.runs` builds on it to use a run without its corpus).
"""

from __future__ import annotations

import logging
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from blt_jax import paths, storage
from blt_jax.errors import DiskFull, InputError, UserError, no_space

logger = logging.getLogger("blt_jax.checkpoint")


def _bound_tensorstore_retries() -> None:
    """Gives tensorstore, which reads and writes the arrays, the retry budget of `blt_jax.storage`.

    Orbax builds every tensorstore context from two module-level dicts and offers no argument for it;
    where they exist (orbax-checkpoint 0.11), the budget is added to them, and otherwise tensorstore
    keeps its own (32 tries of up to 32 s)."""
    from orbax.checkpoint._src.serialization import tensorstore_utils

    for name in ("_BASE_TS_CONTEXT", "_DEFAULT_OCDBT_TS_CONTEXT"):
        context = getattr(tensorstore_utils, name, None)
        if isinstance(context, dict):
            context["gcs_request_retries"] = storage.tensorstore_retries()


def _abstract(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs carrying the target shardings, so restored arrays land sharded."""
    return jax.tree_util.tree_map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


class Checkpointer:
    """Saves and restores training checkpoints of one run.

    Args:
      directory: where checkpoints go (e.g. `<workdir>/checkpoints`; local path or gs://).
      keep: how many of the latest checkpoints to keep.
      asynchronous: write in the background (the step loop does not wait).
    """

    def __init__(self, directory: str, keep: int = 3, asynchronous: bool = True):
        options = ocp.CheckpointManagerOptions(
            create=True,
            enable_async_checkpointing=asynchronous,
            preservation_policy=ocp.checkpoint_managers.LatestN(keep),
        )
        self.directory = paths.resolve(directory)  # Orbax refuses relative paths
        if paths.is_uri(self.directory):
            _bound_tensorstore_retries()
        self._manager = storage.retrying(self.directory, lambda: ocp.CheckpointManager(self.directory, options=options))

    def steps(self) -> list[int]:
        """Steps of the complete checkpoints present, oldest first."""
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, data_iterator: Any, config: dict) -> None:
        """Starts writing a checkpoint of `step` (returns before the write ends when asynchronous).
        Every process calls it at the same step (`data_iterator.global_state` gathers the shards)."""
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data_shards=ocp.args.JsonSave(data_iterator.global_state()),
            config=ocp.args.JsonSave(config),
        )
        self._state_bytes = sum(int(getattr(x, "nbytes", 0)) for x in jax.tree_util.tree_leaves(state))
        # An asynchronous write that failed earlier surfaces here (or in `wait`).
        self._failing(lambda: self._manager.save(step, args=args, force=True))

    def restore(self, step: int, abstract_state: Any, shardings: Any, data_iterator: Any = None) -> Any:
        """The state of checkpoint `step` (sharded as `shardings`); sets `data_iterator`'s state
        (None: the state alone, the data stream going on where it is).

        Raises:
          InputError: if the checkpoint's data state cannot continue this run's stream (written by
            an older version, or with another shard count).
        """
        if (epath.Path(self.directory) / str(step) / "data").exists():
            raise InputError(
                f"checkpoint {step} in {self.directory} was written by an older blt_jax (one data "
                "stream per process) and cannot resume here; start a new --workdir, with "
                "--config.train.init_from=<that run> to keep its parameters"
            )
        items = {"state": ocp.args.StandardRestore(_abstract(abstract_state, shardings))}
        if data_iterator is not None:
            items["data_shards"] = ocp.args.JsonRestore()
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        if data_iterator is not None:
            data_iterator.set_state(restored["data_shards"])
        return restored["state"]

    def restore_latest(self, abstract_state: Any, shardings: Any, data_iterator: Any) -> tuple[int, Any] | None:
        """(step, state) of the newest readable checkpoint, or None if there is none.

        A checkpoint that fails to restore (corrupt files, a write cut short) is reported, renamed to
        `<step>.unreadable` (kept for inspection, out of the way of new saves) and skipped.
        """
        for step in reversed(self.steps()):
            try:
                return step, self.restore(step, abstract_state, shardings, data_iterator)
            except UserError:  # readable, but not resumable as configured: the user decides
                raise
            except Exception as e:  # noqa: BLE001 - any read failure means "unusable", try the previous one
                logger.warning(
                    "checkpoint %d in %s is unreadable (%s: %s); trying the previous one",
                    step,
                    self.directory,
                    type(e).__name__,
                    str(e).splitlines()[0][:200],
                )
                self._set_aside(step)
        return None

    def _set_aside(self, step: int) -> None:
        if jax.process_index() == 0:
            path = epath.Path(self.directory) / str(step)
            target = epath.Path(self.directory) / f"{step}.unreadable"
            suffix = 1
            while target.exists():
                target = epath.Path(self.directory) / f"{step}.unreadable.{suffix}"
                suffix += 1
            path.rename(target)
        self._manager.reload()

    def wait(self) -> None:
        """Blocks until pending asynchronous writes are complete."""
        self._failing(self._manager.wait_until_finished)

    def _failing(self, call) -> None:
        """`call()`; a failure of the storage (on a bucket, after tensorstore's retries; on a disk, no
        space left) as one line naming the checkpoints. The newest complete checkpoint stays as it
        was: a step becomes complete only when its commit marker is written, after all of its arrays."""
        try:
            call()
        except UserError:
            raise
        except Exception as error:
            if no_space(error):
                raise DiskFull(self._no_space_message()) from error
            if not paths.is_uri(self.directory):
                raise
            raise storage.StorageError(
                f"{self.directory}: writing a checkpoint failed: {storage.describe(error)}"
            ) from error

    def _no_space_message(self) -> str:
        need = getattr(self, "_state_bytes", 0)
        free = ""
        if not paths.is_uri(self.directory):
            import shutil

            free = f", {shutil.disk_usage(self.directory).free:,} bytes free there"
        return (
            f"{self.directory}: no space left on the device for a checkpoint (the train state is {need:,} bytes"
            f"{free}); the previous checkpoints are complete, and a run started again with more space "
            "resumes from the newest"
        )

    def close(self) -> None:
        self._manager.close()


class CheckpointReader:
    """Reads the checkpoints of a run without changing anything in it (no create, delete or rename):
    the saved configuration, and the parameters alone (the optimizer state, twice their size, and
    the data iterator stay on disk). A context manager.

    Args:
      directory: the run's `checkpoints/` directory (local path or gs://).
    """

    def __init__(self, directory: str):
        options = ocp.CheckpointManagerOptions(create=False, save_interval_steps=0)
        self._manager = ocp.CheckpointManager(paths.resolve(directory), options=options)

    def __enter__(self) -> CheckpointReader:
        return self

    def __exit__(self, *exc) -> None:
        self._manager.close()

    def steps(self) -> list[int]:
        """Steps of the complete checkpoints, oldest first."""
        return sorted(self._manager.all_steps())

    def config(self, step: int) -> dict:
        """The resolved configuration saved with checkpoint `step`."""
        return self._manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]

    def params(self, step: int, target: Any) -> Any:
        """The `params` of checkpoint `step`'s train state, laid out as `target` (ShapeDtypeStructs
        carrying shardings)."""
        item = {"params": target}
        args = ocp.args.Composite(
            state=ocp.args.PyTreeRestore(
                item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item), partial_restore=True
            )
        )
        return self._manager.restore(step, args=args)["state"]["params"]
