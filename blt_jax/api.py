"""The public facade: load a model, get logits, entropies and patches (`blt_jax.from_pretrained`).

Everything numerical runs in jitted functions compiled once per input shape; this layer only
validates inputs (on the host, with clear messages) and routes between them.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from blt_jax import loading
from blt_jax.config import BLTConfig, EntropyLMConfig
from blt_jax.errors import InputError
from blt_jax.models import model_kind
from blt_jax.nn.blt import BLT
from blt_jax.nn.entropy_lm import EntropyLM, entropies_from_logits
from blt_jax.nn.options import DEFAULT, RunOptions
from blt_jax.nn.patch_ids import lengths_from_starts
from blt_jax.params import abstract_params, count, init_params
from blt_jax.patching.rules import patch_starts


def _as_tokens(tokens: Any, vocab_size: int) -> jax.Array:
    """Validates int [B, N] token ids in [0, vocab) and returns them as int32."""
    arr = np.asarray(jax.device_get(tokens))
    if arr.ndim != 2:
        raise InputError(f"tokens must be an int array [B, N], got shape {arr.shape} (add a batch axis: tokens[None])")
    if arr.shape[1] == 0:
        raise InputError("tokens must hold at least one position (N >= 1)")
    if not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"tokens must be integers, got dtype {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() >= vocab_size):
        raise InputError(f"token ids must be in [0, {vocab_size}), got min {arr.min()} max {arr.max()}")
    return jnp.asarray(arr, jnp.int32)


def _check_lengths(lengths: Any, tokens: jax.Array) -> jax.Array:
    arr = np.asarray(jax.device_get(lengths))
    batch, n = tokens.shape
    if arr.ndim != 2 or arr.shape[0] != batch:
        raise InputError(f"patch_lengths must be int [B={batch}, P], got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer) or (arr.size and arr.min() < 0):
        raise InputError("patch_lengths must be non-negative integers")
    sums = arr.sum(axis=1)
    bad = np.nonzero(sums != n + 1)[0]
    if bad.size:
        raise InputError(
            f"patch_lengths of row {bad[0]} sum to {sums[bad[0]]}, expected N + 1 = {n + 1} "
            "(the extra slot is the next byte; see blt_jax.nn.patch_ids)"
        )
    if np.any(arr[:, 0] != 1):
        raise InputError("the first patch of every row must have length 1 (the BOS / first byte)")
    return jnp.asarray(arr, jnp.int32)


def _scores_of(logits_fn):
    """A jitted (params, tokens [B, N], extra) -> (log p(token i + 1) [B, N - 1], argmax hit
    [B, N - 1]) from a (params, tokens, extra) -> logits [B, N, V] function."""

    def scores(params, tokens, extra):
        logp = jax.nn.log_softmax(logits_fn(params, tokens, extra)[:, :-1].astype(jnp.float32), axis=-1)
        targets = tokens[:, 1:]
        picked = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
        return picked, jnp.argmax(logp, axis=-1) == targets

    return jax.jit(scores)


def _fetch(pair):
    return tuple(np.asarray(x) for x in jax.device_get(pair))


class BLTModel:
    """A BLT with its parameters (and, for entropy patching, its entropy LM).

    Attributes:
      config: the model configuration.
      params: BLT parameters (nested dict of arrays).
      entropy_params: entropy LM parameters, or None.
      options: how it runs (`nn.options.RunOptions`: the attention implementation); not part of the
        model: `save` never writes it.
    """

    def __init__(
        self, config: BLTConfig, params: Mapping, entropy_params: Mapping | None = None, options: RunOptions = DEFAULT
    ):
        loading.check_tree(params, abstract_params(config), "BLT parameters")
        if entropy_params is not None:
            if config.entropy_model is None:
                raise InputError("entropy_params given but config.entropy_model is None")
            loading.check_tree(entropy_params, abstract_params(config.entropy_model), "entropy LM parameters")
        self.config = config
        self.options = options
        self.params = jax.device_put(params)
        self.entropy_params = None if entropy_params is None else jax.device_put(entropy_params)

    # ---- construction ------------------------------------------------------------------------

    @classmethod
    def random(cls, config: BLTConfig, seed: int = 0) -> BLTModel:
        """A randomly initialised model (reference init), with an entropy LM if the config has one."""
        key_blt, key_ent = jax.random.split(jax.random.key(seed))
        entropy = init_params(config.entropy_model, key_ent) if config.entropy_model is not None else None
        return cls(config, init_params(config, key_blt), entropy)

    def save(self, directory: str, format: str = "native") -> None:  # noqa: A002 - the CLI's word
        """Writes the model to a directory (local, `~` or `gs://`) that `from_pretrained` reads back.

        Args:
          directory: where to write.
          format: "native" (ours: any config) or "hf" (what `transformers.BltForCausalLM.from_pretrained`
            loads, entropy LM included; a ConfigError names the first field HF cannot express).
        """
        from blt_jax import paths
        from blt_jax.convert.hf import hf_export_config, save_hf
        from blt_jax.convert.native import save_native

        writers = {"native": save_native, "hf": save_hf}
        if format not in writers:
            raise InputError(f"unknown format {format!r}; expected {' or '.join(writers)}")
        if format == "hf":
            hf_export_config(self.config, self.entropy_params is not None)  # refused before anything is written
        entropy = None if self.entropy_params is None else jax.device_get(self.entropy_params)
        with paths.staged_dir(paths.resolve(directory)) as local:
            writers[format](local, self.config, jax.device_get(self.params), entropy)

    def describe(self) -> str:
        """One line saying what the model is: its configuration, patching rule and entropy LM."""
        patching = self.config.patching
        rule = f"{patching.mode} patching" + (
            f", threshold {patching.threshold:.4f}" if patching.mode == "entropy" else ""
        )
        entropy = "included" if self.entropy_params is not None else "none"
        return f"{type(self.config).__name__} ({rule}; entropy LM: {entropy})"

    # ---- numerics ------------------------------------------------------------------------------

    def _require_patcher(self) -> None:
        """Online patching (decoding, shared-context scoring) needs the entropy LM of an entropy-patched model."""
        if self.config.patching.mode == "entropy" and self.entropy_params is None:
            raise InputError(
                "this model patches by entropy but has no entropy LM: load a checkpoint that includes the patcher"
            )

    @functools.cached_property
    def _logits_fn(self):
        module = BLT(self.config, self.options)
        return jax.jit(lambda p, t, lengths: module.apply({"params": p}, t, lengths))

    @functools.cached_property
    def _entropy_fn(self):
        module = EntropyLM(self.config.entropy_model, self.options)
        return jax.jit(lambda p, t: entropies_from_logits(module.apply({"params": p}, t)))

    @functools.cached_property
    def _lengths_fn(self):
        patching = self.config.patching

        def fn(tokens, entropies, num_patches):
            return lengths_from_starts(patch_starts(patching, tokens, entropies), num_patches)

        return jax.jit(fn, static_argnums=2)

    def logits(self, tokens: Any, patch_lengths: Any = None) -> jax.Array:
        """Next-byte logits.

        Args:
          tokens: int [B, N] (numpy or jax).
          patch_lengths: int [B, P] summing to N + 1 with a first patch of length 1, or None to
            patch with the model's own patcher.

        Returns:
          float32 [B, N, V]; position i predicts token i + 1.
        """
        toks = _as_tokens(tokens, self.config.vocab_size)
        if patch_lengths is None:
            lengths = self._patch_lengths_for(toks)
        else:
            lengths = _check_lengths(patch_lengths, toks)
        return self._logits_fn(self.params, toks, lengths)

    def _patch_lengths_for(self, toks: jax.Array) -> jax.Array:
        """The model's own patch lengths of `toks`, without the trailing all-empty patches (they
        change no real logit, and dropping them shortens the latent pass), rounded up to a multiple
        of 16 patches so that similar inputs share one compilation."""
        lengths = np.asarray(self.patch_lengths(toks))
        used = int(np.max(np.nonzero(lengths.any(axis=0))[0])) + 1
        keep = min(lengths.shape[1], -(-used // 16) * 16)
        return jnp.asarray(lengths[:, :keep])

    @functools.cached_property
    def _scores_fn(self):
        return _scores_of(self._logits_fn)

    def token_logprobs(self, tokens: Any) -> tuple[np.ndarray, np.ndarray]:
        """How likely each token is after the ones before it, with the model's own patching.

        Computed on the device (the [B, N, V] logits never reach the host).

        Args:
          tokens: int [B, N] (BOS first; right padding is harmless: everything is causal).

        Returns:
          (log p(token i + 1 | tokens <= i) float32 [B, N - 1], whether token i + 1 was the argmax
          bool [B, N - 1]).
        """
        toks = _as_tokens(tokens, self.config.vocab_size)
        return _fetch(self._scores_fn(self.params, toks, self._patch_lengths_for(toks)))

    def continuation_logprobs(
        self, contexts: Any, lengths: Any, continuations: Any, continuation_lengths: Any, parents: Any
    ) -> tuple[np.ndarray, np.ndarray]:
        """`token_logprobs` of continuations after shared contexts, each context run once
        (`inference.continuations`): what a forward over BOS + context + continuation gives.

        Args: int arrays, as `inference.continuations.continuation_logprobs` takes them: contexts
        [Bc, Wc] (BOS first) with their lengths [Bc], continuations [Bx, Wx] with theirs [Bx], and
        each continuation's context row, parents [Bx].

        Returns:
          (log p(continuation byte j | everything before it) float32 [Bx, Wx], whether byte j was the
          argmax bool [Bx, Wx]); entries past a continuation's end are meaningless.
        """
        from blt_jax.inference.continuations import ContinuationScorer

        self._require_patcher()
        scorer = self.__dict__.get("_continuation_scorer")
        if scorer is None:
            scorer = self.__dict__["_continuation_scorer"] = ContinuationScorer(self.config)
        return scorer(
            self.params,
            self.entropy_params,
            np.asarray(contexts),
            np.asarray(lengths),
            np.asarray(continuations),
            np.asarray(continuation_lengths),
            np.asarray(parents),
        )

    def entropies(self, tokens: Any) -> jax.Array:
        """Entropy (nats) of the entropy LM's next-byte distribution at every position. float32 [B, N]."""
        if self.entropy_params is None:
            raise InputError(
                "this model has no entropy LM: load a checkpoint that includes the patcher, or give "
                "patch lengths explicitly"
            )
        return self._entropy_fn(self.entropy_params, _as_tokens(tokens, self.config.vocab_size))

    def patch_lengths(self, tokens: Any, max_patches: int | None = None) -> jax.Array:
        """Patch lengths from the model's patching rule and `max_patch_length` (next-token convention).

        Args:
          tokens: int [B, N].
          max_patches: static P (default N + 1, which always suffices). With a smaller P, patches
            past P - 1 are merged into the last one.

        Returns:
          int32 [B, P], trailing zeros, each row summing to N + 1.
        """
        toks = _as_tokens(tokens, self.config.vocab_size)
        n = toks.shape[1]
        num_patches = n + 1 if max_patches is None else int(max_patches)
        if num_patches < 2:
            raise InputError(f"max_patches must be >= 2, got {num_patches}")
        entropies = self.entropies(toks) if self.config.patching.mode == "entropy" else None
        return self._lengths_fn(toks, entropies, num_patches)

    def generate(
        self,
        prompt: Any,
        max_new_bytes: int = 256,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int = 0,
        on_bytes: Any = None,
    ) -> Any:
        """Generates text after a prompt with cached incremental decoding.

        The latent transformer runs once per patch and every stack keeps a KV cache; patching runs
        online with the model's rule (entropy patching needs the entropy LM).

        Args:
          prompt: text (encoded with BOS, no EOS), bytes, a 1-D array of token ids, or a list of
            these (generated as one batch; rows may differ in length).
          max_new_bytes: the most bytes generated per prompt.
          temperature: 0 = greedy; else sampling temperature.
          top_k / top_p: restrict sampling to the k most likely ids / the nucleus of mass p.
          seed: PRNG seed of sampling.
          on_bytes: optional `fn(row, bytes)` called as bytes are produced (streaming).

        Returns:
          The generated text (EOS dropped, invalid UTF-8 replaced by U+FFFD); a list of texts for a
          list of prompts.
        """
        result = self.generate_tokens(prompt, max_new_bytes, temperature, top_k, top_p, seed, on_bytes)
        texts = result.texts
        return texts if isinstance(prompt, list) else texts[0]

    def generate_tokens(
        self,
        prompt: Any,
        max_new_bytes: int = 256,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int = 0,
        on_bytes: Any = None,
        record_logits: bool = False,
        stop_at_eos: bool = True,
    ):
        """`generate`, returning the `inference.generate.Generation` (token ids, patch starts and,
        with `record_logits`, the logits every byte was chosen from). `stop_at_eos=False` always
        generates `max_new_bytes` (benchmarks)."""
        from blt_jax.inference.generate import capacity_for, encode_prompts
        from blt_jax.inference.sampling import SamplingConfig

        self._require_patcher()
        if not isinstance(max_new_bytes, (int, np.integer)) or max_new_bytes < 1:
            raise InputError(f"max_new_bytes must be a positive integer, got {max_new_bytes!r}")
        prompts = encode_prompts(prompt if isinstance(prompt, list) else [prompt])
        sampling = SamplingConfig(float(temperature), top_k, top_p)
        generator = self._generator(
            len(prompts), capacity_for(max(len(p) for p in prompts), int(max_new_bytes)), sampling
        )
        return generator.run(
            self.params, self.entropy_params, prompts, int(max_new_bytes), seed, on_bytes, record_logits, stop_at_eos
        )

    def decoding(self, capacity: int):
        """The cached decoder of this BLT for rows of `capacity` positions, with its byte vocabulary
        (`inference.batching.Decoding`: what `blt-jax serve` runs)."""
        from blt_jax.inference.batching import Decoding
        from blt_jax.inference.decode import DecodeEngine
        from blt_jax.inference.vocabulary import byte_vocabulary

        self._require_patcher()
        return Decoding(DecodeEngine(self.config, capacity), self.params, self.entropy_params, byte_vocabulary())

    def _generator(self, batch: int, capacity: int, sampling):
        from blt_jax.inference.generate import Generator

        cache = self.__dict__.setdefault("_generators", {})
        key = (batch, capacity, sampling)
        if key not in cache:
            cache[key] = Generator(self.config, batch, capacity, sampling)
        return cache[key]


class ByteLM:
    """A model of any kind that reads plain rows of ids (an entropy LM, the quickstart's byte baseline,
    a kind registered by a user) behind the part of `BLTModel`'s interface that scoring uses:
    next-id logits of BOS + bytes, no patching. Its module and inputs come from its kind.

    Attributes:
      config: the model's configuration.
      params: its parameters.
      options: how it runs (as `BLTModel`'s).
    """

    def __init__(self, config: Any, params: Mapping, options: RunOptions = DEFAULT):
        loading.check_tree(params, abstract_params(config), f"{model_kind(config).description} parameters")
        self.config = config
        self.params = jax.device_put(params)
        self.options = options

    def _apply(self):
        """(params, tokens [B, N]) -> logits [B, N, V] through the kind's module and inputs."""
        kind = model_kind(self.config)
        module = kind.module(self.options)
        return lambda p, t: module.apply({"params": p}, *kind.inputs({"tokens": t}))

    @functools.cached_property
    def _logits_fn(self):
        return jax.jit(self._apply())

    def logits(self, tokens: Any) -> jax.Array:
        """Next-byte logits: float32 [B, N, V] of int tokens [B, N]."""
        return self._logits_fn(self.params, _as_tokens(tokens, self.config.vocab_size))

    @functools.cached_property
    def _scores_fn(self):
        apply = self._apply()
        return _scores_of(jax.jit(lambda p, t, _: apply(p, t)))

    def token_logprobs(self, tokens: Any) -> tuple[np.ndarray, np.ndarray]:
        """As `BLTModel.token_logprobs`: float32 [B, N - 1] log-probabilities, bool [B, N - 1] argmax."""
        return _fetch(self._scores_fn(self.params, _as_tokens(tokens, self.config.vocab_size), None))

    def generate(self, *args, **kwargs):
        raise InputError(
            "generation needs a BLT: this byte LM scores text only (loglikelihood tasks); `blt-jax serve` serves it"
        )

    def decoding(self, capacity: int):
        """The cached decoder of this LM for rows of `capacity` positions, with its vocabulary
        (`inference.batching.Decoding`: what `blt-jax serve` runs)."""
        from blt_jax.inference.batching import Decoding
        from blt_jax.inference.lm_decode import LMDecodeEngine

        kind = model_kind(self.config)
        if not kind.causal_stack:
            raise InputError(f"{kind.description} has no cached decoder: it scores text, it cannot be served")
        return Decoding(LMDecodeEngine(self.config, capacity), self.params, None, self._vocabulary())

    def describe(self) -> str:
        """One line saying what the model is."""
        kind = model_kind(self.config)
        return f"{kind.description} ({type(self.config).__name__}), {count(self.params):,} parameters"

    def save(self, directory: str, format: str = "native") -> None:  # noqa: A002 - the CLI's word
        """Writes the model in our format to a directory (local, `~` or `gs://`) that `from_pretrained`
        reads back (the Hugging Face layout is written for BLTs only)."""
        from blt_jax import paths
        from blt_jax.convert.native import save_native

        if format != "native":
            raise InputError(f"format {format!r}: {model_kind(self.config).description} is saved in our format only")
        with paths.staged_dir(paths.resolve(directory)) as local:
            save_native(local, self.config, jax.device_get(self.params), None, self._extra_files())
            self._copy_beside(local)

    def _extra_files(self) -> dict:
        """Records saved with the configuration (a token LM's tokenizer)."""
        return {}

    def _copy_beside(self, local: str) -> None:
        """Files saved beside the parameters (a token LM's tokenizer.json)."""

    def _vocabulary(self):
        from blt_jax.inference.vocabulary import byte_vocabulary

        return byte_vocabulary()


class TokenLM(ByteLM):
    """A token LM behind the same scoring interface as `BLTModel`, reading text through its tokenizer:
    the BPE baseline of `blt-jax study`, or a pretrained Llama-family model (`from_pretrained` on a
    Hugging Face `LlamaForCausalLM` directory).

    Attributes:
      config: its `TokenLMConfig`.
      params: its parameters.
      tokenizer: its tokenizer (`blt_jax.data.bpe.BpeTokenizer`, or the model directory's
        `tokenizer.json` as a `blt_jax.data.pretrained_tokenizer.PretrainedTokenizer`), or None when
        the directory has none (`logits` of ids still work).
    """

    def __init__(self, config: Any, params: Mapping, tokenizer: Any = None, options: RunOptions = DEFAULT):
        super().__init__(config, params, options)
        if tokenizer is not None and tokenizer.vocab_size > config.vocab_size:
            raise InputError(f"the tokenizer has {tokenizer.vocab_size} ids, the model only {config.vocab_size}")
        self.tokenizer = tokenizer

    def logits(self, tokens: Any) -> jax.Array:
        """Next-token logits: float32 [B, T, V] of int token ids [B, T] (position t predicts t + 1)."""
        return super().logits(tokens)

    def describe(self) -> str:
        """One line saying what the model is."""
        return (
            f"a token LM, {self.config.vocab_size} ids; tokenizer: "
            f"{'included' if self.tokenizer is not None else 'none'}"
        )

    def encode(self, data: bytes) -> np.ndarray:
        """int32 [L] ids of BOS + the tokens of `data` (no EOS): what scoring feeds the model."""
        if self.tokenizer is None:
            raise InputError("this token LM was loaded without a tokenizer (its directory has no tokenizer.json)")
        return self.tokenizer.encode(data, add_bos=True, add_eos=False)

    def _vocabulary(self):
        from blt_jax.inference.vocabulary import token_vocabulary

        if self.tokenizer is None:
            raise InputError(
                "this token LM was loaded without a tokenizer (its directory has no tokenizer.json): "
                "it cannot read or write text"
            )
        return token_vocabulary(self.tokenizer, self.config.vocab_size)

    def _extra_files(self) -> dict:
        """The tokenizer's record (`blt_jax.json`), so the saved model reads text as it was trained to."""
        from blt_jax.data import token_patches

        if self.tokenizer is None:
            return {}
        return {loading.TOKENIZER_KEY: token_patches.tokenizer_record(self.tokenizer)}

    def _copy_beside(self, local: str) -> None:
        """The tokenizer as `tokenizer.json` beside the parameters."""
        from blt_jax import paths

        if self.tokenizer is not None:
            paths.copy_file(self.tokenizer.path, paths.join(local, loading.TOKENIZER_FILE))


def facade(loaded: loading.LoadedModel, options: RunOptions = DEFAULT) -> BLTModel | TokenLM | ByteLM:
    """The object a loaded model is used through, chosen by what its kind reads: patches (a
    `BLTModel`), a tokenizer's ids (a `TokenLM`), or plain rows of byte ids (a `ByteLM`, which runs
    any kind's module, a user's registered kinds included)."""
    kind = model_kind(loaded.config)
    if kind.patching is not None:
        return BLTModel(loaded.config, loaded.params, loaded.entropy_params, options)
    if kind.token_rows:
        return TokenLM(loaded.config, loaded.params, loaded.tokenizer, options)
    return ByteLM(loaded.config, loaded.params, options)


def load_token_model(path: str) -> TokenLM:
    """A token LM with its tokenizer: a training run of a token transformer (with the tokenizer it was
    trained with), a token LM saved in our format, or a Llama-family Hugging Face directory."""
    from blt_jax.loading import runs
    from blt_jax.models import require_kind

    loaded = runs.load_model(path)
    require_kind(loaded.config, "token_lm", "loading a token LM", path)
    return TokenLM(loaded.config, loaded.params, loaded.tokenizer)


def from_pretrained(
    path: str, entropy_path: str | None = None, dtype: Any = np.float32, attention_impl: str = "auto"
) -> BLTModel | TokenLM | ByteLM:
    """Loads a BLT from our format, the Hugging Face layout, Meta's layout (detected), or a training
    run of ours (its newest checkpoint; the run's corpus is not needed); or a token LM: a Llama-family
    Hugging Face directory (`LlamaForCausalLM`, Mistral, Qwen2), or a token LM of ours (a run or a
    directory), with its tokenizer.

    Args:
      path: the model directory or training workdir (relative, `~` or `gs://`).
      entropy_path: Meta layout: the entropy model directory (default: `entropy_model/` inside or
        beside `path`). Training run patched by entropy: its entropy LM (any form
        `load_entropy_model` reads).
      dtype: dtype of the loaded parameters (float32; `jnp.bfloat16` halves host memory for the
        released models, whose hash tables alone hold 3-4B parameters). Computation follows the
        config's dtype.
      attention_impl: "auto" (splash kernels on TPU, dense elsewhere), "dense" or "splash" (off TPU
        in interpret mode); how the model runs, not what it is.

    Returns:
      A `BLTModel`; a `TokenLM` (`logits(ids)`: int [B, T] -> float32 [B, T, V]); or, for an entropy LM
      or a byte LM, a `ByteLM` (scoring only).
    """
    from blt_jax.loading import runs  # the training stack (grain, Orbax) loads only when used

    options = RunOptions(attention=attention_impl)  # refused in one line before anything is read
    return facade(runs.load_model(path, entropy_path, dtype), options)


def load_entropy_model(path: str) -> tuple[EntropyLMConfig, dict]:
    """Loads just an entropy LM: from a training workdir of ours (`blt-jax train` of an entropy LM),
    our format (a BLT or an entropy LM alone), an HF BLT directory (its patcher), or Meta's layout (an
    `entropy_model/` directory, or a BLT directory beside one).

    Returns:
      (config, params).
    """
    from blt_jax.loading import runs  # the training stack (grain, Orbax) loads only when used

    return runs.load_entropy_lm(path)


def from_training_run(workdir: str, entropy_path: str | None = None) -> BLTModel:
    """A BLT from a training workdir's newest checkpoint, patching with the rule the run trained with.

    Args:
      workdir: a `blt-jax train` run directory of a BLT (its corpus is not needed).
      entropy_path: the entropy LM (any form `load_entropy_model` reads, e.g. its training workdir);
        required when the run patched by entropy.

    Returns:
      A `BLTModel` whose config carries the run's patching rule (and threshold).
    """
    from blt_jax.loading import runs  # the training stack (grain, Orbax) loads only when used

    runs.require_training_run(workdir)
    return from_pretrained(workdir, entropy_path)
