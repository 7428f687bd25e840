"""Pretrained token LMs for the tests, made here (nothing is downloaded): `transformers` Llama-family
models built from a config and saved with `save_pretrained` (real weights in the real layout), or
trained for a few hundred steps, with a byte-level BPE `tokenizer.json` trained with the `tokenizers`
library, as Llama 3's is built (`experiments/train_llama_teacher.py` owns the building and training)."""

import importlib.util
import json
import os

import numpy as np

_SCRIPT = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments", "train_llama_teacher.py"
)
_spec = importlib.util.spec_from_file_location("train_llama_teacher", _SCRIPT)
_teacher = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_teacher)
byte_level_tokenizer = _teacher.byte_level_tokenizer
llama_config = _teacher.llama_config
train_llama = _teacher.train_llama


def save_random(model_class, config, directory, seed=0, scale=3.0, max_shard_size=None):
    """A randomly initialised model, its weights scaled (random init is near-uniform: a broken port
    could still match), saved with `save_pretrained`. Returns the torch model."""
    import torch

    torch.manual_seed(seed)
    model = model_class(config)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale)
    kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    model.save_pretrained(directory, **kwargs)
    return model.eval()


def torch_logits(model, ids: np.ndarray) -> np.ndarray:
    """transformers' logits of int ids [B, T] at float32: float32 [B, T, V]."""
    import torch

    with torch.no_grad():
        return model(input_ids=torch.as_tensor(ids, dtype=torch.long)).logits.float().numpy()


def torch_logits_f64(model, ids: np.ndarray) -> np.ndarray:
    """The same model's logits in float64 (the judge when two float32 implementations disagree)."""
    import copy

    import torch

    twin = copy.deepcopy(model).double()
    with torch.no_grad():
        return twin(input_ids=torch.as_tensor(ids, dtype=torch.long)).logits.numpy()


def edit_config(directory, **changes):
    """Rewrites fields of a saved `config.json`."""
    path = os.path.join(directory, "config.json")
    with open(path) as f:
        cfg = json.load(f)
    for key, value in changes.items():
        if value is None:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    with open(path, "w") as f:
        json.dump(cfg, f)


def stdlib_corpus(directory, budget: int = 400_000, seed: int = 0, part: int = 0) -> list[bytes]:
    """A corpus of Python standard library sources (on every machine with Python), cut into
    documents of at most 8 KB at line ends, written as files of `directory`. Returns the documents.
    `part` 0 and 1 read disjoint halves of the library's files (a teacher's text and another)."""
    import glob
    import random
    import sysconfig

    files = sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py")))
    random.Random(seed).shuffle(files)
    files = files[part::2]
    os.makedirs(directory, exist_ok=True)
    docs, total = [], 0
    for path in files:
        with open(path, "rb") as f:
            data = f.read()
        while data and total < budget:
            cut = data.rfind(b"\n", 0, 8192) + 1 if len(data) > 8192 else len(data)
            piece, data = data[: cut or 8192], data[cut or 8192 :]
            if piece.strip():
                docs.append(piece)
                total += len(piece)
        if total >= budget:
            break
    for i, doc in enumerate(docs):
        with open(os.path.join(directory, f"{i:04d}.py"), "wb") as f:
            f.write(doc)
    return docs
