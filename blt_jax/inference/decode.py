"""Incremental BLT decoding with KV caches in every stack; the latent transformer runs once per patch.

After byte t is known (sampled, or read from the prompt), one `decode_step`:
  1. runs one entropy-LM step (windowed ring cache) -> H_t, and applies the patching rule to decide
     whether byte t + 1 starts a patch (the rule needs only H_{t-1}, H_t, bytes t-1 and t, and the
     length of the open patch: patching is prefix-stable);
  2. runs one local-encoder step (hash n-grams read the last bytes), folds byte t's state into the open
     patch's running max and appends its cross-attention keys/values to the open patch's buffer;
  3. if byte t + 1 starts a patch, closes the open patch: cross-attention from the pooled slots to its
     bytes' buffered keys/values,
     one latent step with the latent cache, and the decoder's cross-attention keys/values of the new
     patch's k slots (computed once per patch);
  4. runs one local-decoder step against the slots of the last closed patch -> logits of byte t + 1.
Byte t's decoder reads patch q(t) = p(t + 1) - 1: the patch just closed when t + 1 starts one, else the
last closed patch, so every logit needs only closed patches. `prefill` runs the parallel forward over
a prompt once and leaves all caches as if it had been decoded byte by byte.

Shapes are static: a batch of B rows, positions < `capacity`. `prefill` takes right-padded rows of
different lengths; `step` advances every row by one position (generation prefills a common length and
feeds a longer prompt's remaining bytes by steps). `chunk_logits` runs the parallel forward of a chunk of
bytes after a state, patched as a forward over the whole text would patch it: a context prefilled once
then serves every continuation scored after it (lm-eval's multiple choice). The state is an explicit
pytree, so the step jits once and can be donated.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct

from blt_jax.config import BLTConfig
from blt_jax.nn.blt import BLT
from blt_jax.nn.cache import KVCache
from blt_jax.nn.entropy_lm import EntropyLM, entropies_from_logits
from blt_jax.nn.latent import patch_document_ids
from blt_jax.nn.local import LocalDecoder, LocalEncoder, max_pool_patches
from blt_jax.nn.masks import document_ids
from blt_jax.nn.patch_ids import decoder_patch_ids, lengths_from_starts, patch_ids_from_lengths
from blt_jax.patching.rules import patch_starts
from blt_jax.tokenizer import EOS_ID


@struct.dataclass
class DecodeState:
    """Everything decoding carries from one byte to the next (B rows).

    Attributes:
      t: int32 [B] position of the next byte to be consumed in each row.
      recent: int32 [B, C] the last C consumed bytes (hash n-gram context), zero-padded on the left.
      doc: int32 [B] document id of the next byte (EOS count so far).
      ent_cache: the entropy LM's ring cache (None unless entropy patching).
      ent_prev: float32 [B] entropy H_{t-1} of the last consumed byte.
      enc_cache: the local encoder's ring cache.
      pool: [B, D] running max of the open patch's first-cross-layer encoder states (the dtype's
        lowest value while the patch is empty).
      buf_kv: per encoder cross-attention layer, (keys, values) [B, S, H, K] of the open patch's bytes
        (S = longest possible patch). Projected as bytes arrive, so closing a patch costs no more
        than its attention, whatever S is.
      buf_len: int32 [B] bytes in the open patch.
      open_eos: bool [B] the open patch holds an EOS (the next patch starts a new patch document).
      patch_doc: int32 [B] patch-document id of the open patch.
      n_closed: int32 [B] closed patches so far (the open patch's latent position).
      latent_cache: the latent transformer's ring cache (one entry per closed patch).
      slot_kv: per decoder cross-attention layer, (keys, values) [B, k, H, K] of the last closed patch.
      dec_cache: the local decoder's ring cache.
      starts: bool [B, capacity + 1] patch start flags of every position decided so far.
    """

    t: jax.Array
    recent: jax.Array
    doc: jax.Array
    ent_cache: KVCache | None
    ent_prev: jax.Array
    enc_cache: KVCache
    pool: jax.Array
    buf_kv: tuple[tuple[jax.Array, jax.Array], ...]
    buf_len: jax.Array
    open_eos: jax.Array
    patch_doc: jax.Array
    n_closed: jax.Array
    latent_cache: KVCache
    slot_kv: tuple[tuple[jax.Array, jax.Array], ...]
    dec_cache: KVCache
    starts: jax.Array


def _at(x: jax.Array, i: jax.Array) -> jax.Array:
    """x[b, i[b]] of x [B, N, ...] and i int [B]."""
    return jnp.take_along_axis(x, i.reshape((x.shape[0], 1) + (1,) * (x.ndim - 2)), axis=1)[:, 0]


class _Prefix:
    """What prefill computes about a batch of prompt prefixes, step by step (trace-time only).

    Args:
      tokens: int32 [B, W] prefixes, right-padded.
      length: int32 [B] bytes of each row.
      num_patches: the static patch budget P.
    """

    def __init__(self, tokens: jax.Array, length: jax.Array, num_patches: int):
        self.tokens, self.length, self.num_patches = tokens, length, num_patches
        self.batch, self.width = tokens.shape
        self.index = jnp.arange(self.width, dtype=jnp.int32)
        self.valid = self.index[None] < length[:, None]  # [B, W]
        self.last = length - 1
        self.positions = jnp.broadcast_to(self.index, (self.batch, self.width))
        self.docs = document_ids(tokens)
        # Filled by the prefill steps: patching (entropy cache, starts [B, W + 1], patch lengths and
        # ids), then the stacks (states, caches, keys and values, logits [B, W, V]).
        self.ent_cache = self.ent_prev = self.starts = self.patch_lengths = self.patch_ids = None
        self.states = self.enc_cache = self.byte_kv = self.patch_docs = self.n_closed = None
        self.latent_cache = self.slot_kv = self.dec_ids = self.logits = self.dec_cache = None


@dataclasses.dataclass(frozen=True)
class DecodeEngine:
    """The incremental decoding engine of one BLT configuration: prefill and step functions for
    positions < `capacity` (the byte decoder itself is `nn.local.LocalDecoder`).

    Attributes:
      config: the BLT configuration (its patching rule is applied online).
      capacity: the most positions a row may reach (prompt + generated bytes).
      max_patches: the most patches a row may reach (the latent cache's slots); default `capacity`.
        Scoring, which knows its texts, gives a tighter bound (`inference.continuations`).
    """

    config: BLTConfig
    capacity: int
    max_patches: int | None = None

    def __post_init__(self):
        if self.capacity < 2:
            raise ValueError(f"capacity must be >= 2 positions, got {self.capacity}")
        if self.config.patching.mode == "entropy" and self.config.entropy_model is None:
            raise ValueError("entropy patching needs the config's entropy_model to decode")

    # ---- sizes --------------------------------------------------------------------------------

    @property
    def uses_entropy(self) -> bool:
        return self.config.patching.mode == "entropy"

    @property
    def context(self) -> int:
        """Bytes of left context one step needs (hash n-grams; the rule reads 2)."""
        hashes = self.config.hash
        return max(2, max(hashes.group_sizes) if hashes is not None else 1)

    @property
    def patch_buffer(self) -> int:
        """Longest possible patch: max_patch_length, else the whole capacity."""
        longest = self.config.patching.max_patch_length
        return self.capacity if longest is None else min(longest, self.capacity)

    def _ring(self, batch: int, stack, n_layers=None, reach: int | None = None) -> KVCache:
        """An empty ring cache for `stack`, over `reach` positions (default capacity)."""
        reach = reach or self.capacity
        size = reach if stack.window is None else min(stack.window, reach)
        return KVCache.empty(
            batch,
            size,
            n_layers or stack.n_layers,
            stack.n_heads,
            stack.head_dim,
            jnp.dtype(self.config.dtype),
            ring=True,
        )

    # ---- modules ------------------------------------------------------------------------------

    def _encoder(self, params, method, *args):
        """`method` of the BLT's local encoder (`LocalEncoder.embed`, `.byte_states`, ...) on `args`."""
        return BLT(self.config).apply({"params": params}, *args, method=lambda blt, *a: method(blt.local_encoder, *a))

    def _decoder(self, params, method, *args):
        """`method` of the BLT's local decoder (`LocalDecoder.slot_keys_values`, `.decode`) on `args`."""
        return BLT(self.config).apply({"params": params}, *args, method=lambda blt, *a: method(blt.local_decoder, *a))

    def _latent(self, params, *args):
        return BLT(self.config).apply({"params": params}, *args, method=BLT.latent)

    def _entropy(self, entropy_params, *args):
        return EntropyLM(self.config.entropy_model).apply({"params": entropy_params}, *args)

    # ---- prefill ------------------------------------------------------------------------------

    def prefill(
        self,
        params,
        entropy_params,
        tokens: jax.Array,
        lengths: jax.Array | None = None,
        num_patches: int | None = None,
    ) -> tuple[DecodeState, jax.Array]:
        """Runs the parallel forward over the first bytes of every row and fills all caches.

        Args:
          params: BLT parameters.
          entropy_params: entropy LM parameters (None unless entropy patching).
          tokens: int32 [B, W], a BOS first (as the model was trained), right-padded when rows differ.
          lengths: int32 [B] bytes of each row, 1..W (default W): the state continues each row after
            its own last byte, as if the row had been given alone. The padding changes nothing
            (every stack and patching rule is causal) and is kept in no cache.
          num_patches: static patch budget P (default W + 1, always enough): the latent runs over P
            patches. A row with more than P patches (n_closed + 1 > P) gets a wrong state: a caller
            giving a tighter budget checks `state.n_closed` afterwards.

        Returns:
          (state at t = lengths, float32 logits [B, V] of the byte after each row's last).
        """
        batch, width = tokens.shape
        if width >= self.capacity:
            raise ValueError(f"prompt prefix of {width} bytes does not fit capacity {self.capacity}")
        length = jnp.full((batch,), width, jnp.int32) if lengths is None else jnp.asarray(lengths, jnp.int32)
        num_patches = width + 1 if num_patches is None else min(num_patches, width + 1)
        prefix = _Prefix(tokens, length, num_patches)
        self._prefill_patching(prefix, entropy_params)
        self._prefill_stacks(prefix, params)
        return self._prefill_state(prefix), _at(prefix.logits, prefix.last)

    def _prefill_patching(self, prefix: _Prefix, entropy_params) -> None:
        """The entropy LM over the prefix (its cache, the last byte's entropy) and the patch starts
        and ids of every row."""
        cfg, batch, width = self.config, prefix.batch, prefix.width
        if self.uses_entropy:
            ring = self._ring(batch, cfg.entropy_model.stack)
            ent_logits, prefix.ent_cache = self._entropy(
                entropy_params, prefix.tokens, prefix.positions, prefix.docs, ring, prefix.valid
            )
            entropies = entropies_from_logits(ent_logits)
            prefix.ent_prev = _at(entropies, prefix.last)
        else:
            entropies, prefix.ent_cache, prefix.ent_prev = None, None, jnp.zeros((batch,), jnp.float32)
        # Flags of positions 0..W; each row's own are those <= its length (the last, its next byte's).
        starts = patch_starts(cfg.patching, prefix.tokens, entropies, include_next=True)  # [B, W + 1]
        prefix.starts = starts & (jnp.arange(width + 1)[None] <= prefix.length[:, None])
        prefix.patch_lengths = lengths_from_starts(prefix.starts, prefix.num_patches)
        prefix.patch_ids = patch_ids_from_lengths(prefix.patch_lengths, width)

    def _prefill_stacks(self, prefix: _Prefix, params) -> None:
        """The local encoder, the latent transformer over the closed patches and the local decoder,
        each filling its cache."""
        cfg, batch, num_patches, valid = self.config, prefix.batch, prefix.num_patches, prefix.valid
        tokens, positions, docs, patch_ids = prefix.tokens, prefix.positions, prefix.docs, prefix.patch_ids
        embeds = self._encoder(params, LocalEncoder.embed, tokens)
        ring = self._ring(batch, cfg.encoder)
        prefix.states, prefix.enc_cache = self._encoder(
            params, LocalEncoder.byte_states, embeds, positions, docs, ring, valid
        )
        prefix.byte_kv = self._encoder(params, LocalEncoder.byte_keys_values, prefix.states)
        pooled = max_pool_patches(prefix.states[0], patch_ids, num_patches)
        patches = self._encoder(params, LocalEncoder.slot_vectors, pooled, prefix.byte_kv, patch_ids)
        prefix.patch_docs = patch_document_ids(tokens, patch_ids, num_patches)
        # A patch is closed once the next one has started; only closed patches enter the latent cache.
        prefix.n_closed = jnp.sum(prefix.starts[:, 1:], axis=1, dtype=jnp.int32)
        patch_pos = jnp.broadcast_to(jnp.arange(num_patches, dtype=jnp.int32), (batch, num_patches))
        latent_ring = self._ring(batch, cfg.latent, reach=self.max_patches)
        closed = patch_pos < prefix.n_closed[:, None]
        latent_out, prefix.latent_cache = self._latent(
            params, patches, prefix.patch_docs, patch_pos, latent_ring, closed
        )
        prefix.slot_kv = self._decoder(params, LocalDecoder.slot_keys_values, latent_out)
        prefix.dec_ids = decoder_patch_ids(prefix.patch_lengths, prefix.width)
        ring = self._ring(batch, cfg.decoder)
        prefix.logits, prefix.dec_cache = self._decoder(
            params, LocalDecoder.decode, prefix.states[-1], prefix.slot_kv, prefix.dec_ids, positions, docs, ring, valid
        )

    def _prefill_state(self, prefix: _Prefix) -> DecodeState:
        """The decoding state after each row's last byte: the open patch's bytes, pool and encoder
        keys buffered, the current patch's decoder slots, the recent bytes."""
        batch, width, num_patches, k = prefix.batch, prefix.width, prefix.num_patches, self.config.cross_attn_k
        tokens, length, valid, starts, index = prefix.tokens, prefix.length, prefix.valid, prefix.starts, prefix.index
        current = _at(prefix.dec_ids, prefix.last)  # the patch each row's last byte's decoder read

        def patch_slots(x):  # [B, P*k, H, K] -> [B, k, H, K] of patch `current`
            return _at(x.reshape(batch, num_patches, k, *x.shape[2:]), current)

        closed_now = _at(starts, length)
        open_start = jnp.max(jnp.where(starts[:, :width] & valid, index, 0), axis=1)
        span = self.patch_buffer

        def open_patch(x):  # [B, W, ...] -> [B, S, ...]: the open patch's bytes first
            padded = jnp.pad(x, [(0, 0), (0, span)] + [(0, 0)] * (x.ndim - 2))
            return jax.vmap(lambda row, s: jax.lax.dynamic_slice_in_dim(row, s, span, axis=0))(padded, open_start)

        in_open = (index[None] >= open_start[:, None]) & valid & ~closed_now[:, None]
        states = prefix.states
        lowest = jnp.finfo(states[0].dtype).min
        context = self.context
        # The last C bytes of each row (zeros before its start).
        recent = jax.vmap(lambda row, n: jax.lax.dynamic_slice_in_dim(row, n, context))(
            jnp.pad(tokens, ((0, 0), (context, 0))), length
        )
        return DecodeState(
            t=length,
            recent=recent.astype(jnp.int32),
            doc=jnp.sum((tokens == EOS_ID) & valid, axis=1, dtype=jnp.int32),
            ent_cache=prefix.ent_cache,
            ent_prev=prefix.ent_prev,
            enc_cache=prefix.enc_cache,
            pool=jnp.max(jnp.where(in_open[:, :, None], states[0], lowest), axis=1),
            buf_kv=tuple((open_patch(kk), open_patch(vv)) for kk, vv in prefix.byte_kv),
            buf_len=jnp.where(closed_now, 0, length - open_start).astype(jnp.int32),
            open_eos=jnp.any(in_open & (tokens == EOS_ID), axis=1),
            patch_doc=_at(prefix.patch_docs, prefix.n_closed),
            n_closed=prefix.n_closed,
            latent_cache=prefix.latent_cache,
            slot_kv=tuple((patch_slots(kk), patch_slots(vv)) for kk, vv in prefix.slot_kv),
            dec_cache=prefix.dec_cache,
            starts=jnp.zeros((batch, self.capacity + 1), bool).at[:, : width + 1].set(starts),
        )

    # ---- one byte -----------------------------------------------------------------------------

    def _starts_next(self, state: DecodeState, recent: jax.Array, entropy: jax.Array | None, buf_len) -> jax.Array:
        """Whether byte t + 1 starts a patch: the configured rule on a two-byte window, plus the
        length cap. bool [B]."""
        rule = dataclasses.replace(self.config.patching, max_patch_length=None)
        window_pos = jnp.stack([state.t - 1, state.t], axis=1).astype(jnp.int32)
        window_ent = None if entropy is None else jnp.stack([state.ent_prev, entropy], axis=1)
        starts = patch_starts(rule, recent[:, -2:], window_ent, include_next=True, positions=window_pos)[:, -1]
        longest = self.config.patching.max_patch_length
        return starts if longest is None else starts | (buf_len >= longest)

    def _close(self, params, state: DecodeState, pool, buf_kv, buf_len, close):
        """Latent cache and decoder slots after closing the open patch of the rows in `close`."""
        span = self.patch_buffer
        ids = jnp.where(jnp.arange(span)[None, :] < buf_len[:, None], 0, 1)  # id 1 = not in the patch
        vector = self._encoder(params, LocalEncoder.slot_vectors, pool[:, None], list(buf_kv), ids)  # [B, 1, k * D]
        latent_out, latent_cache = self._latent(
            params, vector, state.patch_doc[:, None], state.n_closed[:, None], state.latent_cache, close[:, None]
        )
        new_kv = self._decoder(params, LocalDecoder.slot_keys_values, latent_out)
        pick = lambda new, old: jnp.where(close[:, None, None, None], new, old)
        return latent_cache, tuple((pick(nk, ok), pick(nv, ov)) for (nk, nv), (ok, ov) in zip(new_kv, state.slot_kv))

    def step(self, params, entropy_params, state: DecodeState, token: jax.Array) -> tuple[DecodeState, jax.Array]:
        """Consumes byte t of every row and returns the logits of byte t + 1.

        Args:
          params / entropy_params: as in `prefill`.
          state: the state at position t.
          token: int32 [B] byte t of every row.

        Returns:
          (state at t + 1, float32 logits [B, V]).
        """
        batch = token.shape[0]
        token = token.astype(jnp.int32)
        positions = state.t[:, None].astype(jnp.int32)
        docs = state.doc[:, None]
        recent = jnp.concatenate([state.recent[:, 1:], token[:, None]], axis=1)

        entropy, ent_cache = None, state.ent_cache
        if self.uses_entropy:
            ent_logits, ent_cache = self._entropy(entropy_params, token[:, None], positions, docs, state.ent_cache)
            entropy = entropies_from_logits(ent_logits)[:, 0]
        buf_len = state.buf_len + 1
        close = self._starts_next(state, recent, entropy, buf_len)

        embeds = self._encoder(params, LocalEncoder.embed, recent)[:, -1:]
        states, enc_cache = self._encoder(params, LocalEncoder.byte_states, embeds, positions, docs, state.enc_cache)
        pool = jnp.maximum(state.pool, states[0][:, 0].astype(state.pool.dtype))
        write = jax.vmap(lambda b, x, i: jax.lax.dynamic_update_slice_in_dim(b, x, i, axis=0))
        buf_kv = tuple(
            (write(bk, kk.astype(bk.dtype), state.buf_len), write(bv, vv.astype(bv.dtype), state.buf_len))
            for (bk, bv), (kk, vv) in zip(state.buf_kv, self._encoder(params, LocalEncoder.byte_keys_values, states))
        )

        latent_cache, slot_kv = jax.lax.cond(
            jnp.any(close),
            lambda: self._close(params, state, pool, buf_kv, buf_len, close),
            lambda: (state.latent_cache, state.slot_kv),
        )
        open_eos = state.open_eos | (token == EOS_ID)
        dec_ids = jnp.zeros((batch, 1), jnp.int32)  # slot_kv holds exactly the patch byte t reads
        logits, dec_cache = self._decoder(
            params, LocalDecoder.decode, states[-1], list(slot_kv), dec_ids, positions, docs, state.dec_cache
        )
        new_state = DecodeState(
            t=state.t + 1,
            recent=recent,
            doc=state.doc + (token == EOS_ID).astype(jnp.int32),
            ent_cache=ent_cache,
            ent_prev=state.ent_prev if entropy is None else entropy,
            enc_cache=enc_cache,
            pool=jnp.where(close[:, None], jnp.finfo(pool.dtype).min, pool),
            buf_kv=buf_kv,
            buf_len=jnp.where(close, 0, buf_len),
            open_eos=open_eos & ~close,
            patch_doc=state.patch_doc + (close & open_eos).astype(jnp.int32),
            n_closed=state.n_closed + close.astype(jnp.int32),
            latent_cache=latent_cache,
            slot_kv=slot_kv,
            dec_cache=dec_cache,
            starts=state.starts.at[jnp.arange(batch), state.t + 1].set(close),
        )
        return new_state, logits[:, 0]

    # ---- a chunk of bytes ---------------------------------------------------------------------

    def _chunk_starts(self, state: DecodeState, tokens: jax.Array, entropies: jax.Array | None) -> jax.Array:
        """Start flags of positions t..t + T of every row: the state's flag of t, then the rule on the
        chunk after byte t - 1 (and H_{t-1}), then the length cap counted from the open patch's start.
        bool [B, T + 1]."""
        length = tokens.shape[1]
        rule = dataclasses.replace(self.config.patching, max_patch_length=None)
        offsets = jnp.arange(-1, length, dtype=jnp.int32)
        window_pos = state.t[:, None] + offsets[None]  # positions t - 1 .. t + T - 1
        window = jnp.concatenate([state.recent[:, -1:], tokens], axis=1)
        window_ent = None if entropies is None else jnp.concatenate([state.ent_prev[:, None], entropies], axis=1)
        ruled = patch_starts(rule, window, window_ent, include_next=True, positions=window_pos)[:, 2:]
        first = jnp.take_along_axis(state.starts, state.t[:, None], axis=1)
        starts = jnp.concatenate([first, ruled], axis=1)  # positions t .. t + T
        longest = self.config.patching.max_patch_length
        if longest is None:
            return starts
        # Patches longer than the cap are cut every `longest` bytes from their rule start; the open
        # patch began at t - buf_len (a multiple of `longest` after its rule start, if it was cut).
        pos = state.t[:, None] + jnp.arange(length + 1)[None]
        last = jax.lax.cummax(jnp.where(starts, pos, (state.t - state.buf_len)[:, None]), axis=1)
        offset = pos - last
        return starts | ((offset > 0) & (offset % longest == 0))

    def chunk_logits(
        self, params, entropy_params, state: DecodeState, tokens: jax.Array, num_patches: int | None = None
    ) -> tuple[jax.Array, jax.Array]:
        """Logits of a chunk of bytes after `state`, as one forward over each row's whole text gives
        them: the chunk is patched by the model's rule online (the open patch continues into it) and
        every stack attends to its cache. The state is not advanced (what scoring needs: one context,
        prefilled once, serves every continuation after it).

        Args:
          params / entropy_params: as in `prefill`.
          state: the state at positions t [B] (rows may differ).
          tokens: int32 [B, T] bytes t .. t + T - 1 of every row (right padding is harmless).
          num_patches: static budget P of patches the chunk touches, the open one included (default
            T, always enough); the latent runs over P patches. Entry i is exact while
            closed[i] < P (see Returns).

        Returns:
          (float32 logits [B, T, V], entry i predicting byte t + i + 1; int32 closed [B, T], how
          many patches of the chunk (the open one first) are closed by position t + i + 1).
        """
        batch, length = tokens.shape
        budget = length if num_patches is None else num_patches
        tokens = tokens.astype(jnp.int32)
        positions = state.t[:, None] + jnp.arange(length, dtype=jnp.int32)[None]
        eos = tokens == EOS_ID
        docs = state.doc[:, None] + jnp.cumsum(eos, axis=1, dtype=jnp.int32) - eos.astype(jnp.int32)

        entropies = None
        if self.uses_entropy:
            ent_logits, _ = self._entropy(entropy_params, tokens, positions, docs, state.ent_cache)
            entropies = entropies_from_logits(ent_logits)
        starts = self._chunk_starts(state, tokens, entropies)  # [B, T + 1]
        # Patch of every chunk byte, counted from the open patch (0): starts after t before it.
        after = jnp.cumsum(starts[:, 1:], axis=1, dtype=jnp.int32)  # [B, T]: starts in t + 1 .. t + i + 1
        # Past the budget, patches merge into the last one (P - 1), which no exact entry reads.
        patch_ids = jnp.minimum(after - starts[:, 1:].astype(jnp.int32), budget - 1)

        embeds = self._encoder(params, LocalEncoder.embed, jnp.concatenate([state.recent, tokens], axis=1))[
            :, self.context :
        ]
        states, _ = self._encoder(params, LocalEncoder.byte_states, embeds, positions, docs, state.enc_cache)
        byte_kv = self._encoder(params, LocalEncoder.byte_keys_values, states)
        pooled = max_pool_patches(states[0], patch_ids, budget)  # [B, P, D]
        pooled = pooled.at[:, 0].set(jnp.maximum(pooled[:, 0], state.pool.astype(pooled.dtype)))
        # The open patch's earlier bytes are the state's buffer: patch 0 attends to them as well.
        buffered = jnp.where(jnp.arange(self.patch_buffer)[None] < state.buf_len[:, None], 0, -1)
        kv = [
            (jnp.concatenate([bk.astype(kk.dtype), kk], axis=1), jnp.concatenate([bv.astype(vv.dtype), vv], axis=1))
            for (bk, bv), (kk, vv) in zip(state.buf_kv, byte_kv)
        ]
        vectors = self._encoder(
            params, LocalEncoder.slot_vectors, pooled, kv, jnp.concatenate([buffered, patch_ids], axis=1)
        )

        # Patch documents: a new one starts after each patch holding an EOS (the open patch's earlier
        # bytes included).
        has_eos = jax.vmap(lambda e, ids: jax.ops.segment_max(e, ids, num_segments=budget))(
            eos.astype(jnp.int32), patch_ids
        )
        has_eos = jnp.maximum(has_eos, 0).at[:, 0].max(state.open_eos.astype(jnp.int32))
        patch_docs = state.patch_doc[:, None] + jnp.cumsum(has_eos, axis=1) - has_eos
        patch_pos = state.n_closed[:, None] + jnp.arange(budget, dtype=jnp.int32)[None]
        latent_out, _ = self._latent(
            params, vectors, patch_docs, patch_pos, state.latent_cache, jnp.arange(budget)[None] < after[:, -1:]
        )
        # Byte i reads the last patch closed by position t + i + 1: the state's (index 0) or chunk
        # patch after[i] - 1 (index after[i]).
        slot_kv = [
            (jnp.concatenate([ok, nk.astype(ok.dtype)], axis=1), jnp.concatenate([ov, nv.astype(ov.dtype)], axis=1))
            for (ok, ov), (nk, nv) in zip(
                state.slot_kv, self._decoder(params, LocalDecoder.slot_keys_values, latent_out)
            )
        ]
        logits, _ = self._decoder(
            params, LocalDecoder.decode, states[-1], slot_kv, after, positions, docs, state.dec_cache
        )
        return logits, after
