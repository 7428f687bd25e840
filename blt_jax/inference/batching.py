"""Continuous batching over a cached decoder: a fixed set of R decode rows that requests join and
leave while the other rows keep running (what `blt-jax serve` runs). The decoder is a BLT's
(`decode.DecodeEngine`) or a plain causal LM's (`lm_decode.LMDecodeEngine`: a token or byte LM); both
prefill and step the same way.

Each row runs at its own position. A request joins a free row between two chunks of steps: its
prompt's first bytes are prefilled alone (as `Generator` prefills them: the same length rule and the
same padded prefill program), the row's slice of the batch state is overwritten with the result, and
the rest of the prompt is fed by steps. Every row then advances CHUNK steps per compiled call; a row
chooses its byte by its own sampling rule and seed. Nothing in a step mixes rows, so a request's bytes
do not depend on what shares the batch. The host reads each chunk's bytes, ends a request at EOS, a
stop string or its byte budget, and frees the row; a free row keeps stepping on a placeholder state
(one token), reset before it could run past the capacity.

Shapes are static: R rows, `capacity` positions; prefills are compiled per width bucket (powers of
two), so no request compiles anything once `warm_up` has run.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from blt_jax.inference.decode import DecodeEngine
from blt_jax.inference.fused import decoding_layout
from blt_jax.inference.generate import CHUNK, prefill_plan
from blt_jax.inference.lm_decode import LMDecodeEngine
from blt_jax.inference.sampling import sample_rows
from blt_jax.inference.vocabulary import Vocabulary


@dataclasses.dataclass(frozen=True)
class Decoding:
    """What decode rows need of a model (`BLTModel.decoding`, `TokenLM.decoding`, `ByteLM.decoding`).

    Attributes:
      engine: its prefill and step.
      params / entropy_params: the engine's parameters (entropy_params: None unless a BLT patched by
        entropy).
      vocabulary: what its ids stand for.
    """

    engine: DecodeEngine | LMDecodeEngine
    params: Any
    entropy_params: Any
    vocabulary: Vocabulary

    def rows(self, rows: int) -> BatchDecoder:
        """R decode rows of this model."""
        return BatchDecoder(self.engine, self.params, self.entropy_params, rows, self.vocabulary)


@struct.dataclass
class Rows:
    """What the compiled chunk carries besides the decoder state, per row (R rows).

    Attributes:
      logits: float32 [R, V] of the next byte.
      prompt: int32 [R, C] each row's prompt (C = capacity), zero after it.
      prompt_len: int32 [R] its length in tokens (BOS included).
      temperature: float32 [R] (0 = greedy); top_k: int32 [R] (0 = all); top_p: float32 [R] (1 = all).
      seed: int32 [R]: sampled byte t of a row draws with fold_in(key(seed), t).
    """

    logits: jax.Array
    prompt: jax.Array
    prompt_len: jax.Array
    temperature: jax.Array
    top_k: jax.Array
    top_p: jax.Array
    seed: jax.Array


@dataclasses.dataclass(frozen=True)
class RowSpec:
    """One request as a row runs it.

    Attributes:
      ids: int32 [L] prompt token ids, BOS first (`vocabulary.Vocabulary.encode`).
      temperature: 0 = greedy.
      top_k: None = all ids.
      top_p: None = all ids.
      seed: of sampling.
    """

    ids: np.ndarray
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int = 0


class BatchDecoder:
    """R decode rows with their compiled programs: `admit` a request into a row, `advance` every row by
    CHUNK steps.

    Args:
      engine: the decoder, whose capacity is the most positions a row may reach (prompt + generated
        tokens + CHUNK).
      params / entropy_params: its parameters and its entropy LM's (None unless a BLT patched by
        entropy).
      rows: R.
      vocabulary: the model's ids (what may be sampled; the placeholder prompt of idle rows).
    """

    def __init__(
        self, engine: DecodeEngine | LMDecodeEngine, params: Any, entropy_params: Any, rows: int, vocabulary: Vocabulary
    ):
        self.engine, self.rows, self.capacity = engine, rows, engine.capacity
        self.placeholder = vocabulary.placeholder
        self.allowed = jnp.asarray(vocabulary.allowed)
        self.params, self.entropy_params = decoding_layout(params, entropy_params)
        self._prefill = jax.jit(self.engine.prefill)
        self._admit = jax.jit(_write_row, donate_argnums=(0, 1))
        self._advance = jax.jit(self._chunk, donate_argnums=(2, 3))
        self.positions = np.zeros(rows, np.int64)  # host copy of each row's position (resets)
        idle_state, idle_rows = self._one(RowSpec(self.placeholder))
        self._idle = (idle_state, idle_rows)
        batch = lambda x: jnp.repeat(x, rows, axis=0)
        self.state = jax.tree_util.tree_map(batch, idle_state)
        self.carry = jax.tree_util.tree_map(batch, idle_rows)
        self.positions[:] = len(self.placeholder)

    def _one(self, spec: RowSpec) -> tuple[Any, Rows]:
        """A batch-1 state and row carry of `spec`: the prompt prefilled as `Generator` prefills it."""
        ids = np.asarray(spec.ids, np.int32)
        first, width = prefill_plan(len(ids), self.capacity)
        tokens = np.zeros((1, width), np.int32)
        tokens[0, :first] = ids[:first]
        state, logits = self._prefill(
            self.params, self.entropy_params, jnp.asarray(tokens), jnp.asarray([first], jnp.int32)
        )
        prompt = np.zeros((1, self.capacity), np.int32)
        prompt[0, : len(ids)] = ids
        rows = Rows(
            logits=logits,
            prompt=jnp.asarray(prompt),
            prompt_len=jnp.asarray([len(ids)], jnp.int32),
            temperature=jnp.asarray([spec.temperature], jnp.float32),
            top_k=jnp.asarray([spec.top_k or 0], jnp.int32),
            top_p=jnp.asarray([1.0 if spec.top_p is None else spec.top_p], jnp.float32),
            seed=jnp.asarray([spec.seed], jnp.int32),
        )
        return state, rows

    def warm_up(self, longest_prompt: int) -> None:
        """Compiles every program a request can need: the chunk, and the prefill of every width bucket
        up to `longest_prompt` tokens."""
        widths = sorted({prefill_plan(n, self.capacity)[1] for n in range(1, longest_prompt + 1)})
        for width in widths:
            self._prefill(self.params, self.entropy_params, jnp.zeros((1, width), jnp.int32), jnp.ones((1,), jnp.int32))
        self.admit(0, RowSpec(self.placeholder))
        self.advance()
        self.release(0)

    def admit(self, row: int, spec: RowSpec) -> None:
        """Starts `spec` in `row` (whatever ran there is dropped)."""
        if len(spec.ids) + CHUNK > self.capacity:
            raise ValueError(f"a prompt of {len(spec.ids)} tokens does not fit rows of {self.capacity} positions")
        state, rows = self._one(spec)
        self.state, self.carry = self._admit(self.state, self.carry, jnp.int32(row), state, rows)
        self.positions[row] = prefill_plan(len(spec.ids), self.capacity)[0]

    def release(self, row: int) -> None:
        """Puts the placeholder state in `row` (it idles until the next admission)."""
        self.state, self.carry = self._admit(self.state, self.carry, jnp.int32(row), *self._idle)
        self.positions[row] = len(self.placeholder)

    def advance(self) -> tuple[np.ndarray, np.ndarray]:
        """Runs CHUNK steps of every row.

        Returns:
          (tokens int32 [R, CHUNK]: the id each row consumed at each step, generated: bool [R, CHUNK]:
          it was chosen (sampled or argmax), not read from the prompt).
        """
        self.state, self.carry, (tokens, generated) = self._advance(
            self.params, self.entropy_params, self.state, self.carry
        )
        self.positions += CHUNK
        return np.asarray(tokens).T, np.asarray(generated).T

    def refresh(self, idle_rows) -> None:
        """Puts the placeholder state back in idle rows whose next chunk would run past the capacity
        (a request's own row never gets there: its prompt and budget are checked when it is taken)."""
        for row in idle_rows:
            if self.positions[row] + CHUNK >= self.capacity:
                self.release(int(row))

    def _chunk(self, params, entropy_params, state: Any, carry: Rows):
        def body(scan_carry, _):
            state, carry = scan_carry
            t = state.t
            in_prompt = t < carry.prompt_len
            from_prompt = jnp.take_along_axis(carry.prompt, jnp.minimum(t, self.capacity - 1)[:, None], axis=1)[:, 0]
            keys = jax.vmap(lambda seed, pos: jax.random.fold_in(jax.random.key(seed), pos))(carry.seed, t)
            chosen = sample_rows(carry.logits, keys, carry.temperature, carry.top_k, carry.top_p, self.allowed)
            token = jnp.where(in_prompt, from_prompt, chosen)
            state, logits = self.engine.step(params, entropy_params, state, token)
            return (state, carry.replace(logits=logits)), (token, ~in_prompt)

        (state, carry), outputs = jax.lax.scan(body, (state, carry), None, length=CHUNK)
        return state, carry, outputs


def _write_row(state: Any, carry: Rows, row: jax.Array, one_state: Any, one_carry: Rows):
    """state and carry with row `row` replaced by the batch-1 `one_state` / `one_carry`."""
    put = lambda big, one: jax.lax.dynamic_update_index_in_dim(big, one[0].astype(big.dtype), row, 0)
    return jax.tree_util.tree_map(put, state, one_state), jax.tree_util.tree_map(put, carry, one_carry)
