"""The compiled pieces of a run on a mesh: state init, train step, eval step, with their shardings.

Parameters are sharded by the logical-axis rules (`parallel.LOGICAL_RULES`); the optimizer state
inherits the sharding of the parameters it mirrors; batches are split over (data, fsdp). The train
step is compiled once with `jax.jit(in_shardings, out_shardings, donate_argnums=0)`.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from blt_jax.data.packing import mean_patch_length
from blt_jax.data.pipeline import to_global
from blt_jax.experiment.config import ExperimentConfig
from blt_jax.models import model_kind
from blt_jax.nn import axes
from blt_jax.nn.options import RunOptions
from blt_jax.nn.scan import stack_layers, stacked_axes
from blt_jax.parallel import (
    LOGICAL_RULES,
    batch_sharding,
    logical_to_shardings,
    make_mesh,
    replicated,
    wait_for_all_processes,
)
from blt_jax.params import abstract_params, init_params, logical_axes
from blt_jax.train.optimizer import check_groups, hyperparameters, make_optimizer, schedule_of, stop_frozen
from blt_jax.train.state import TrainState, init_state
from blt_jax.train.step import eval_step, train_step


def _param_path(path: tuple) -> tuple[str, ...]:
    """The trailing run of dict keys of a key path: a parameter's path inside an optimizer state."""
    keys = []
    for entry in reversed(path):
        if not isinstance(entry, jax.tree_util.DictKey):
            break
        keys.append(entry.key)
    return tuple(reversed(keys))


def _shard_like_params(opt_state: Any, params: Any, param_shardings: Any, fallback: Any) -> Any:
    """Shardings of an optimizer state: a leaf that mirrors a parameter (its path ends in the
    parameter's path, with the parameter's shape) gets that parameter's sharding; counts and scalars
    get `fallback`.

    Leaves are matched by path, not by whole subtrees shaped like the params: optax wrappers change
    the structure (`multi_transform` keeps each group's moments in a tree where the other groups'
    parameters are `MaskedNode`s), and a subtree test then left every moment of a run with parameter
    groups replicated (byteify stage 2 on v5litepod-16: 12 GB of Adam moments per chip).
    """
    leaves, _ = jax.tree_util.tree_flatten_with_path(params)
    by_path = {
        _param_path(path): (leaf.shape, sharding)
        for (path, leaf), sharding in zip(leaves, jax.tree_util.tree_leaves(param_shardings))
    }

    def sharding_of(path, leaf):
        shape, sharding = by_path.get(_param_path(path), (None, None))
        return sharding if sharding is not None and shape == getattr(leaf, "shape", None) else fallback

    return jax.tree_util.tree_map_with_path(sharding_of, opt_state)


class TrainPrograms:
    """The jitted, sharded programs of one experiment on one mesh (state init, train step, eval step),
    with the shardings they take and give.

    Args:
      experiment: the run's configuration.
      mesh: the device mesh (default: built from `experiment.mesh` over all devices).
      options: how the model runs (default: the experiment's; ahead-of-time compiles for a TPU from
        another host give its platform).
    """

    def __init__(self, experiment: ExperimentConfig, mesh: Mesh | None = None, options: RunOptions | None = None):
        self.experiment = experiment
        self.mesh = mesh if mesh is not None else make_mesh(experiment.mesh)
        model, train = experiment.model, experiment.train
        self.tx = make_optimizer(train)  # its state's structure; the step builds it from `hyper`
        self.options = experiment.options if options is None else options
        self.scan = self.options.scan
        kind = model_kind(model)
        self.apply = kind.apply_fn(self.options)
        objective = kind.objective_fn(self.options)
        frozen = stop_frozen(train)  # frozen subtrees: no weight gradient is ever computed
        self.objective = lambda params, batch, embeds=None: objective(frozen(params), batch, embeds)
        layout = kind.scan_layout(self.scan)

        stack = lambda params: stack_layers(params, layout)
        abstract = jax.eval_shape(stack, abstract_params(model))
        check_groups(train, abstract)
        axes_tree = stacked_axes(logical_axes(model), layout, axes.LAYERS)
        self.param_shardings = logical_to_shardings(axes_tree, abstract, self.mesh)
        abstract_opt = jax.eval_shape(self.tx.init, abstract)
        opt_shardings = _shard_like_params(abstract_opt, abstract, self.param_shardings, replicated(self.mesh))
        self.state_shardings = TrainState(
            step=replicated(self.mesh), params=self.param_shardings, opt_state=opt_shardings
        )
        self.batch_sharding = batch_sharding(self.mesh)
        # Per-layer init (its scales depend on depth), then the training layout.
        fresh = lambda key: init_state(model, self.tx, None, stack(init_params(model, key)))
        self.abstract_state = jax.eval_shape(fresh, jax.random.key(0))

        # The optimizer's numbers are an argument of the step (replicated float32 scalars), not constants
        # of its program: runs that differ only in them reuse its compilation (persistent cache, AOT).
        # Parameters of another dtype keep them as constants: a float32 array would promote their Adam
        # moments to float32, where a constant takes the parameters' dtype.
        self._hyper_values = hyperparameters(train)
        self._hyper: dict[str, jax.Array] | None = None  # placed on the mesh at the first step
        traced = all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(abstract))

        def optimizer(hyper):
            numbers = hyper if traced else self._hyper_values
            return make_optimizer(train, numbers), schedule_of(numbers)

        step = functools.partial(
            train_step,
            objective=self.objective,
            optimizer=optimizer,
            grad_accum=train.grad_accum,
            embed=kind.encoder_input(),
        )
        self._step = jax.jit(
            step,
            in_shardings=(self.state_shardings, self.batch_sharding, replicated(self.mesh)),
            out_shardings=(self.state_shardings, replicated(self.mesh)),
            donate_argnums=0,
        )
        self._compiled: dict[str, Any] = {}  # several processes: programs compiled ahead (`_run`)
        self._eval = jax.jit(
            functools.partial(eval_step, apply=self.apply),
            in_shardings=(self.param_shardings, self.batch_sharding),
            out_shardings=replicated(self.mesh),
        )
        self._init = jax.jit(fresh, out_shardings=self.state_shardings)
        self._from_params = jax.jit(
            lambda params: init_state(model, self.tx, None, stack(params)), out_shardings=self.state_shardings
        )
        self._to_train_layout = jax.jit(stack, out_shardings=self.param_shardings)

    @contextlib.contextmanager
    def context(self):
        """The mesh and the logical rules, under which the step is traced (so that activation
        sharding constraints named by logical axes apply)."""
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(LOGICAL_RULES):
            yield

    def init(self, seed: int | None = None) -> TrainState:
        """A freshly initialised, sharded state."""
        seed = self.experiment.train.seed if seed is None else seed
        return self._init(jax.random.key(seed))

    def init_from_params(self, params: Any) -> TrainState:
        """A state whose parameters are `params` (per-layer layout, e.g. pretrained), with a fresh
        optimizer state."""
        # Via the host: the params may live on other devices (another run's mesh).
        return self._from_params(jax.device_get(params))

    def train_layout(self, params: Any) -> Any:
        """Per-layer parameters in these programs' layout (stacked for scanned stacks), sharded."""
        return self._to_train_layout(jax.device_get(params))

    def global_batch(self, batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
        """A per-process batch as global arrays split over (data, fsdp)."""
        return to_global(batch, self.batch_sharding)

    def _run(self, name: str, jitted, *args):
        """`jitted(*args)`. With several processes, compiled ahead on its first call, and first run
        only once every process has compiled it: CPU collectives (gloo) connect at a program's first
        run and wait 30 s at most for the peers, less than compile times differ between processes on
        a busy host."""
        with self.context():
            if jax.process_count() == 1:
                return jitted(*args)
            if name not in self._compiled:
                self._compiled[name] = jitted.lower(*args).compile()
                wait_for_all_processes(f"{name} compiled")
            return self._compiled[name](*args)

    def step(self, state: TrainState, batch: Mapping[str, Any]) -> tuple[TrainState, dict[str, jax.Array]]:
        """One optimizer step (the input state is donated)."""
        if self._hyper is None:
            self._hyper = {
                name: jax.make_array_from_callback((), replicated(self.mesh), lambda _, v=value: np.float32(v))
                for name, value in self._hyper_values.items()
            }
        return self._run("train step", self._step, state, batch, self._hyper)

    def lower_step(self, state: Any, batch: Any) -> jax.stages.Lowered:
        """The train step lowered for (abstract) `state` and `batch`, e.g. to compile ahead of time for
        devices this host does not have."""
        hyper = {
            name: jax.ShapeDtypeStruct((), np.float32, sharding=replicated(self.mesh)) for name in self._hyper_values
        }
        with self.context():
            return self._step.lower(state, batch, hyper)

    def evaluate(self, params: Any, batches: Iterable[Mapping[str, np.ndarray]]) -> dict[str, float]:
        """Bits per byte (CE summed over real targets / (ln 2 x the bytes they stand for: their number
        for byte rows)), loss (nats per target), bytes, and mean patch length (of token rows: mean
        bytes per token)."""
        params = jax.device_put(params, self.param_shardings)  # a no-op when already laid out so
        total = {"ce_sum": 0.0, "targets": 0.0, "bytes": 0.0, "patches": 0.0}
        rows = 0
        token_rows = False
        for batch in batches:
            token_rows = token_rows or "target_bytes" in batch
            inputs = self.global_batch(batch)
            with self.context():
                sums = jax.device_get(self._run("eval step", self._eval, params, inputs))
            for key in total:
                total[key] += float(sums[key])
            rows += int(inputs["tokens"].shape[0])
        count = max(total["bytes"], 1.0)
        return {
            "eval_loss": total["ce_sum"] / max(total["targets"], 1.0),
            "eval_bpb": total["ce_sum"] / (count * float(jnp.log(2.0))),
            "eval_bytes": total["bytes"],
            "eval_mean_patch_len": mean_patch_length(total["bytes"], rows, total["patches"], token_rows),
        }
