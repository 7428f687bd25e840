"""Where each tensor of the reference's state dict lives in our parameter tree, and how it is laid out.

The table is written once, in the reference's (Meta `consolidated.pth`) names; the HF layout is a
renaming of those names (`convert/hf.py`). Layout kinds, torch -> ours:
  embed  [V, D]      -> [V, D]          (embedding tables, as is)
  norm   [D]         -> [D]
  linear [out, in]   -> [in, out]       (a Dense kernel)
  qkv    [H*K, D]    -> [D, H, K]       (attention query/key/value projections)
  out    [D, H*K]    -> [H, K, D]       (attention output projection)
  hash   [G, D]      -> one [G, D] slice of the [T, G, D] stacked hash tables
  qkv_half  [H*K, D] -> [D, H, K]       (as qkv, from a checkpoint that rotates halves: `half_to_pairs`)
  bias      [H*K]    -> [H, K]          (attention projection biases)
  bias_half [H*K]    -> [H, K]          (as bias, rotating halves)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping

import numpy as np

from blt_jax.config import BLTConfig, EntropyLMConfig, StackConfig
from blt_jax.errors import InputError


@dataclasses.dataclass(frozen=True)
class Entry:
    """One reference tensor: its name, our parameter path, layout kind, and table index (hash)."""

    name: str
    path: tuple[str, ...]
    kind: str
    index: int | None = None


def _attention(prefix: str, path: tuple[str, ...]) -> Iterator[Entry]:
    for w in ("wq", "wk", "wv"):
        yield Entry(f"{prefix}.{w}.weight", path + (w,), "qkv")
    yield Entry(f"{prefix}.wo.weight", path + ("wo",), "out")


def _block(prefix: str, path: tuple[str, ...]) -> Iterator[Entry]:
    yield from _attention(f"{prefix}.attention", path + ("attention",))
    for w in ("w1", "w2", "w3"):
        yield Entry(f"{prefix}.feed_forward.{w}.weight", path + ("feed_forward", w), "linear")
    yield Entry(f"{prefix}.attention_norm.weight", path + ("attention_norm", "scale"), "norm")
    yield Entry(f"{prefix}.ffn_norm.weight", path + ("ffn_norm", "scale"), "norm")


def _layers(prefix: str, path: tuple[str, ...], stack: StackConfig) -> Iterator[Entry]:
    for i in range(stack.n_layers):
        yield from _block(f"{prefix}.layers.{i}", path + (f"layers_{i}",))


def _cross(prefix: str, path: tuple[str, ...], count: int) -> Iterator[Entry]:
    for j in range(count):
        p, q = f"{prefix}.cross_attn_layers.{j}", path + (f"cross_attn_layers_{j}",)
        yield from _attention(p, q)
        yield Entry(f"{p}.cross_attn_norm_q.weight", q + ("norm_q", "scale"), "norm")
        yield Entry(f"{p}.cross_attn_norm_kv.weight", q + ("norm_kv", "scale"), "norm")


def blt_entries(config: BLTConfig) -> list[Entry]:
    """Every tensor of a BLT state dict, in reference names."""
    enc, dec = ("local_encoder",), ("local_decoder",)
    out = [Entry("local_encoder.tok_embeddings.weight", enc + ("tok_embeddings", "embedding"), "embed")]
    if config.hash is not None:
        for t in range(config.hash.n_tables):
            out.append(
                Entry(f"encoder_hash_tok_embedding.{t}.weight", enc + ("hash_embeddings", "embedding"), "hash", t)
            )
    out += _layers("local_encoder", enc, config.encoder)
    out.append(
        Entry(
            "local_encoder.patch_embedding_projection.weight", enc + ("patch_embedding_projection", "kernel"), "linear"
        )
    )
    out += _cross("local_encoder", enc, config.encoder.n_layers if config.cross_attn_all_layers_encoder else 1)
    if config.has_latent_projection:
        out.append(
            Entry(
                "global_transformer.token_embedding_projection.weight",
                ("global_transformer", "token_embedding_projection", "kernel"),
                "linear",
            )
        )
    out += _layers("global_transformer", ("global_transformer",), config.latent)
    if config.latent_norm:  # ours only (a byteified BLT's): Meta's latent has no final norm
        out.append(Entry("global_transformer.norm.weight", ("global_transformer", "norm", "scale"), "norm"))
    out += _layers("local_decoder", dec, config.decoder)
    out += _cross("local_decoder", dec, config.decoder.n_layers if config.cross_attn_all_layers_decoder else 1)
    out.append(
        Entry(
            "local_decoder.patch_embedding_projection.weight", dec + ("patch_embedding_projection", "kernel"), "linear"
        )
    )
    out.append(Entry("local_decoder.norm.weight", dec + ("norm", "scale"), "norm"))
    out.append(Entry("local_decoder.output.weight", dec + ("output", "kernel"), "linear"))
    return out


def entropy_entries(config: EntropyLMConfig) -> list[Entry]:
    """Every tensor of an entropy LM state dict, in reference names."""
    out = [Entry("tok_embeddings.weight", ("tok_embeddings", "embedding"), "embed")]
    for i in range(config.stack.n_layers):
        out += _block(f"layers.{i}", (f"layers_{i}",))
    out.append(Entry("norm.weight", ("norm", "scale"), "norm"))
    out.append(Entry("output.weight", ("output", "kernel"), "linear"))
    return out


def half_to_pairs(weight: np.ndarray, heads: int) -> np.ndarray:
    """Rows of a q or k projection [H*K, ...] that rotates halves (row j pairs with row j + K/2 of its
    head: Hugging Face's Llama layout, `rotate_half`) reordered for interleaved pairs (rows 2j and
    2j + 1: ours and Meta's). A permutation, so the model computes exactly the same function."""
    rest = weight.shape[1:]
    per_head = weight.shape[0] // heads
    return weight.reshape(heads, 2, per_head // 2, *rest).swapaxes(1, 2).reshape(weight.shape)


def pairs_to_half(weight: np.ndarray, heads: int) -> np.ndarray:
    """Inverse of `half_to_pairs`."""
    rest = weight.shape[1:]
    per_head = weight.shape[0] // heads
    return weight.reshape(heads, per_head // 2, 2, *rest).swapaxes(1, 2).reshape(weight.shape)


def torch_shape(kind: str, ours: tuple[int, ...]) -> tuple[int, ...]:
    """Shape of the reference tensor whose converted form has shape `ours`."""
    if kind in ("embed", "norm"):
        return ours
    if kind in ("bias", "bias_half"):
        return (ours[0] * ours[1],)
    if kind == "qkv_half":
        return (ours[1] * ours[2], ours[0])
    if kind == "linear":
        return (ours[1], ours[0])
    if kind == "qkv":
        return (ours[1] * ours[2], ours[0])
    if kind == "out":
        return (ours[2], ours[0] * ours[1])
    if kind == "hash":
        return ours[1:]
    raise ValueError(f"unknown layout kind {kind!r}")


def to_ours(kind: str, tensor: np.ndarray, ours: tuple[int, ...]) -> np.ndarray:
    """Converts a reference tensor (already shape-checked) to our layout `ours`."""
    if kind in ("embed", "norm", "hash"):
        return tensor
    if kind == "linear":
        return tensor.T
    if kind == "qkv":
        return tensor.T.reshape(ours)
    if kind == "qkv_half":
        return half_to_pairs(tensor, ours[1]).T.reshape(ours)
    if kind == "out":
        return tensor.T.reshape(ours)
    if kind == "bias":
        return tensor.reshape(ours)
    if kind == "bias_half":
        return half_to_pairs(tensor, ours[0]).reshape(ours)
    raise ValueError(f"unknown layout kind {kind!r}")


def to_torch(kind: str, array: np.ndarray) -> np.ndarray:
    """Inverse of `to_ours` (for hash entries: pass the single table slice)."""
    if kind in ("embed", "norm", "hash"):
        return array
    if kind == "linear":
        return array.T
    if kind in ("qkv", "qkv_half"):
        d, h, k = array.shape
        rows = array.reshape(d, h * k).T
        return pairs_to_half(rows, h) if kind == "qkv_half" else rows
    if kind in ("bias", "bias_half"):
        h, k = array.shape
        return pairs_to_half(array.reshape(h * k), h) if kind == "bias_half" else array.reshape(h * k)
    if kind == "out":
        h, k, d = array.shape
        return array.reshape(h * k, d).T
    raise ValueError(f"unknown layout kind {kind!r}")


class WeightError(InputError):
    """A checkpoint's tensors do not match the model: lists every missing, extra or mis-shaped one."""


def assemble(
    entries: list[Entry],
    tensors: Mapping[str, np.ndarray],
    abstract: Mapping,
    dtype: np.dtype,
    source: str,
    ignore: frozenset[str] = frozenset(),
) -> dict:
    """Builds our parameter tree from reference-named tensors, checking names and shapes.

    Args:
      entries: the model's expected tensors (`blt_entries` / `entropy_entries`).
      tensors: name -> array (any float dtype; read lazily is fine).
      abstract: our abstract parameter tree (`params.abstract_params`), for the target shapes.
      dtype: parameter dtype of the result.
      source: where the tensors came from, for error messages.
      ignore: names present in `tensors` that belong to something else (e.g. the patcher).

    Returns:
      Nested dict of numpy arrays matching `abstract`.

    Raises:
      WeightError: naming every missing, unexpected and mis-shaped tensor.
    """
    problems: list[str] = []
    expected = {e.name for e in entries}
    extra = sorted(set(tensors) - expected - set(ignore))
    problems += [f"unexpected tensor {name} {tuple(tensors[name].shape)}" for name in extra]
    hash_parts: dict[tuple[str, ...], list] = {}
    flat: dict[tuple[str, ...], np.ndarray] = {}
    for e in entries:
        target = _lookup(abstract, e.path)
        if e.name not in tensors:
            problems.append(f"missing tensor {e.name} (expected shape {torch_shape(e.kind, tuple(target.shape))})")
            continue
        tensor = tensors[e.name]
        want = torch_shape(e.kind, tuple(target.shape))
        if tuple(tensor.shape) != want:
            problems.append(f"tensor {e.name} has shape {tuple(tensor.shape)}, expected {want}")
            continue
        array = np.asarray(tensor).astype(dtype)
        if e.kind == "hash":
            hash_parts.setdefault(e.path, [None] * target.shape[0])[e.index] = array
        else:
            flat[e.path] = to_ours(e.kind, array, tuple(target.shape))
    if problems:
        raise WeightError(f"{source}: {len(problems)} tensor problem(s):\n  " + "\n  ".join(problems))
    for path, parts in hash_parts.items():
        flat[path] = np.stack(parts)
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return tree


def _lookup(tree: Mapping, path: tuple[str, ...]):
    node = tree
    for key in path:
        node = node[key]
    return node
