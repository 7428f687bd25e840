"""Pretrained token LMs for the tests, made here (nothing is downloaded): `transformers` Llama-family
models built from a config and saved with `save_pretrained` (real weights in the real layout), and a
byte-level BPE `tokenizer.json` trained with the `tokenizers` library, as Llama 3's is built."""

import json
import os

import numpy as np

SPECIALS = ("<s>", "</s>")  # ids 0 and 1 of the tokenizers made here


def byte_level_tokenizer(texts, vocab_size: int, path: str):
    """Trains a GPT-2-style byte-level BPE (the kind of Llama 3's tokenizer.json) and writes it to `path`."""
    import tokenizers

    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    # Llama 3's post-processor: ByteLevel (offsets untrimmed) then BOS by template.
    tok.post_processor = tokenizers.processors.Sequence([
        tokenizers.processors.ByteLevel(trim_offsets=True),
        tokenizers.processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)]),
    ])
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS),
                                             initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
                                             show_progress=False)
    tok.train_from_iterator(texts, trainer)
    tok.save(path)
    return tok


def llama_config(vocab_size=300, hidden=48, layers=2, heads=4, kv_heads=2, head_dim=16, ffn=96, tie=True,
                 rope=None, **extra):
    """A `transformers.LlamaConfig` with grouped-query attention, a head width other than D / H,
    tied embeddings and Llama 3's RoPE scaling (by default)."""
    from transformers import LlamaConfig

    rope = rope or {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    fields = dict(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
                  num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim,
                  max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=tie,
                  bos_token_id=0, eos_token_id=1, rope_parameters=rope)
    return LlamaConfig(**{**fields, **extra})


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
            piece, data = data[: cut or 8192], data[cut or 8192:]
            if piece.strip():
                docs.append(piece)
                total += len(piece)
        if total >= budget:
            break
    for i, doc in enumerate(docs):
        with open(os.path.join(directory, f"{i:04d}.py"), "wb") as f:
            f.write(doc)
    return docs


def train_llama(directory, documents, vocab_size=512, steps=300, seq=128, batch=16, seed=0, lr=3e-3, **shape):
    """A small Llama (GQA, head_dim != D / H, llama3 scaling, tied) trained with torch on `documents`
    with a byte-level BPE tokenizer trained on them, saved with `save_pretrained` beside its
    tokenizer.json: a teacher with real knowledge, made in seconds. Returns the final training loss."""
    import torch
    from transformers import LlamaForCausalLM

    os.makedirs(directory, exist_ok=True)
    texts = [d.decode("utf-8", errors="replace") for d in documents]
    tokenizer = byte_level_tokenizer(texts, vocab_size, os.path.join(directory, "tokenizer.json"))
    stream = []
    for text in texts:
        stream += tokenizer.encode(text).ids + [1]  # <s> ... </s>
    data = torch.tensor(stream, dtype=torch.long)
    torch.manual_seed(seed)
    config = llama_config(vocab_size=tokenizer.get_vocab_size(), **shape)
    model = LlamaForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1, betas=(0.9, 0.95))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    generator = torch.Generator().manual_seed(seed)
    loss = None
    for _ in range(steps):
        starts = torch.randint(0, len(data) - seq - 1, (batch,), generator=generator)
        rows = torch.stack([data[s: s + seq] for s in starts])
        loss = model(input_ids=rows, labels=rows).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
    model.save_pretrained(directory)
    return float(loss)
