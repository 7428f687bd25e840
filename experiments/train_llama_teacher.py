"""Trains a small Llama with torch on a corpus and saves it as a Hugging Face directory
(`save_pretrained` + a byte-level BPE `tokenizer.json`, Llama 3's kind): a teacher for
`blt-jax byteify` on a machine that cannot download one. Needs torch, transformers and tokenizers
(the `test` extra).

    python experiments/train_llama_teacher.py --corpus default --out runs/llama-teacher --steps 3000

The model has what the byteify path must read exactly: grouped-query attention, a head width other
than D / H, Llama 3's RoPE scaling and tied embeddings. Documents are BOS + tokens + EOS, concatenated;
rows are random windows of that stream.
"""

from __future__ import annotations

import argparse
import os
import time

SPECIALS = ("<s>", "</s>")  # ids 0 and 1 of the tokenizers made here


def byte_level_tokenizer(texts, vocab_size: int, path: str):
    """Trains a GPT-2-style byte-level BPE (the kind of Llama 3's tokenizer.json) and writes it to `path`."""
    import tokenizers

    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    # Llama 3's post-processor: ByteLevel, then BOS by template.
    tok.post_processor = tokenizers.processors.Sequence(
        [
            tokenizers.processors.ByteLevel(trim_offsets=True),
            tokenizers.processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)]),
        ]
    )
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIALS),
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    tok.save(path)
    return tok


def llama_config(
    vocab_size=300, hidden=48, layers=2, heads=4, kv_heads=2, head_dim=16, ffn=96, tie=True, rope=None, **extra
):
    """A `transformers.LlamaConfig` with grouped-query attention, a head width other than D / H (by
    default), tied embeddings and Llama 3's RoPE scaling."""
    from transformers import LlamaConfig

    rope = rope or {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    }
    fields = dict(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=ffn,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        tie_word_embeddings=tie,
        bos_token_id=0,
        eos_token_id=1,
        rope_parameters=rope,
    )
    return LlamaConfig(**{**fields, **extra})


def train_llama(
    directory, documents, vocab_size=512, steps=300, seq=128, batch=16, seed=0, lr=3e-3, log_every=0, **shape
) -> float:
    """A Llama (`llama_config(**shape)`) trained with AdamW (one-cycle schedule) on `documents` (bytes)
    with a byte-level BPE tokenizer trained on them, saved with `save_pretrained` beside its
    tokenizer.json. Returns the final training loss (nats per token)."""
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
    model = LlamaForCausalLM(llama_config(vocab_size=tokenizer.get_vocab_size(), **shape))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1, betas=(0.9, 0.95))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    generator = torch.Generator().manual_seed(seed)
    start, loss = time.perf_counter(), None
    for step in range(1, steps + 1):
        starts = torch.randint(0, len(data) - seq - 1, (batch,), generator=generator)
        rows = torch.stack([data[s : s + seq] for s in starts])
        loss = model(input_ids=rows, labels=rows).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if log_every and step % log_every == 0:
            print(
                f"step {step}/{steps}: loss {loss.item():.4f} nats/token ({time.perf_counter() - start:.0f}s)",
                flush=True,
            )
    model.save_pretrained(directory)
    write_tokenizer_config(directory)
    return float(loss.detach())


def write_tokenizer_config(directory) -> None:
    """`tokenizer_config.json` as a Hugging Face model directory has it: the class and the special
    tokens by name (without it `AutoTokenizer` knows no EOS, and lm-eval's `hf` backend cannot stop
    a generation)."""
    import json

    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": SPECIALS[0],
                "eos_token": SPECIALS[1],
                "model_max_length": 4096,
            },
            f,
            indent=1,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--corpus",
        default="default",
        help="any corpus spec blt-jax reads (default: the embedded corpus's training split)",
    )
    parser.add_argument("--out", required=True, help="the model directory to write")
    parser.add_argument("--bytes", type=int, default=20_000_000, help="at most this much of the corpus")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--vocab", type=int, default=1024)
    parser.add_argument("--hidden", type=int, default=192)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=16)
    parser.add_argument("--ffn", type=int, default=512)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()

    import torch

    from blt_jax.data.sources import iter_documents

    if args.threads:
        torch.set_num_threads(args.threads)
    documents, total = [], 0
    for doc in iter_documents(args.corpus):
        if total >= args.bytes:
            break
        documents.append(doc.data)
        total += len(doc.data)
    print(f"{len(documents)} documents, {total:,} bytes of {args.corpus}", flush=True)
    loss = train_llama(
        args.out,
        documents,
        vocab_size=args.vocab,
        steps=args.steps,
        seq=args.seq,
        batch=args.batch,
        lr=args.lr,
        log_every=max(1, args.steps // 20),
        hidden=args.hidden,
        layers=args.layers,
        heads=args.heads,
        kv_heads=args.kv_heads,
        head_dim=args.head_dim,
        ffn=args.ffn,
    )
    print(f"wrote {args.out} (final training loss {loss:.4f} nats/token)")


if __name__ == "__main__":
    main()
