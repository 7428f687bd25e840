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
