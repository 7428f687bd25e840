"""Reads `.safetensors` files into memory-mapped numpy arrays, without torch.

Implemented on the file format directly (8-byte little-endian header size, JSON header of
{name: {dtype, shape, data_offsets}}, then raw little-endian data) so that bf16 checkpoints load
(numpy has no bf16; `ml_dtypes` provides it) and multi-GB files are mapped, not copied.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import ml_dtypes
import numpy as np

from blt_jax.errors import InputError, NotFound

_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


class SafetensorsError(InputError):
    """The file is not a readable safetensors file."""


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """Maps every tensor of one `.safetensors` file.

    Args:
      path: the file.

    Returns:
      name -> read-only numpy array (memory-mapped).

    Raises:
      SafetensorsError: on a truncated file, a bad header or an unsupported dtype.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise SafetensorsError(f"{path}: too short to be a safetensors file ({size} bytes)")
        header_len = int.from_bytes(raw, "little")
        if header_len <= 0 or 8 + header_len > size:
            raise SafetensorsError(f"{path}: header length {header_len} does not fit a {size}-byte file")
        try:
            header = json.loads(f.read(header_len))
        except json.JSONDecodeError as e:
            raise SafetensorsError(f"{path}: header is not valid JSON ({e})") from None
    header.pop("__metadata__", None)
    data_start = 8 + header_len
    whole = np.memmap(path, dtype=np.uint8, mode="r") if size > data_start else np.zeros(0, np.uint8)
    out = {}
    for name, info in header.items():
        dtype = _DTYPES.get(info.get("dtype"))
        if dtype is None:
            raise SafetensorsError(f"{path}: tensor {name} has unsupported dtype {info.get('dtype')!r}")
        begin, end = info["data_offsets"]
        shape = tuple(info["shape"])
        count = int(np.prod(shape)) if shape else 1
        if end - begin != count * np.dtype(dtype).itemsize or data_start + end > size:
            raise SafetensorsError(f"{path}: tensor {name} data range {begin}..{end} is inconsistent")
        out[name] = whole[data_start + begin : data_start + end].view(dtype).reshape(shape)
    return out


def read_checkpoint_dir(directory: str) -> dict[str, np.ndarray]:
    """Reads `model.safetensors`, or every shard named by `model.safetensors.index.json`."""
    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            weight_map: Mapping[str, str] = json.load(f)["weight_map"]
        tensors: dict[str, np.ndarray] = {}
        for shard in sorted(set(weight_map.values())):
            tensors.update(read_safetensors(os.path.join(directory, shard)))
        return tensors
    single = os.path.join(directory, "model.safetensors")
    if not os.path.exists(single):
        raise NotFound(f"{directory}: no model.safetensors or model.safetensors.index.json")
    return read_safetensors(single)


def write_safetensors(path: str, tensors: Mapping[str, np.ndarray]) -> None:
    """Writes tensors (float32/float16/bf16/int) to a `.safetensors` file."""
    names = {np.dtype(v): k for k, v in _DTYPES.items()}
    header, offset, blobs = {}, 0, []
    for name, array in tensors.items():
        array = np.ascontiguousarray(array)
        code = names.get(array.dtype)
        if code is None:
            raise SafetensorsError(f"tensor {name}: dtype {array.dtype} cannot be written")
        blob = array.tobytes()
        header[name] = {"dtype": code, "shape": list(array.shape), "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the format pads the header to 8 bytes
    with open(path, "wb") as f:
        f.write(len(encoded).to_bytes(8, "little"))
        f.write(encoded)
        for blob in blobs:
            f.write(blob)
