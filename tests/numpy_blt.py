"""A slow, loop-based NumPy (float64) BLT written from the reference's description (blt_spec.md).

It exists to test our JAX model on the reference semantics the HF port does not implement: EOS
document masks in every stack, the local sliding window, and pooling once when cross-attention runs
after every encoder layer. Everything is done one row at a time, masks with explicit loops over
(query, key) pairs, RoPE with complex numbers, hashes with Python big integers: a different
construction from the JAX code, so that shared mistakes are unlikely.
"""

from __future__ import annotations

import numpy as np

EOS = 2
PRIMES = [
    1000000007,
    5915587277,
    1500450271,
    3267000013,
    5754853343,
    4093082899,
    9576890767,
    3628273133,
    2860486313,
    5463458053,
    3367900313,
]


def f64(tree):
    if isinstance(tree, dict):
        return {k: f64(v) for k, v in tree.items()}
    return np.asarray(tree, np.float64)


# ---- masks (loops) -------------------------------------------------------------------------------


def documents(tokens):
    doc, out = 0, []
    for t in tokens:
        out.append(doc)
        if t == EOS:
            doc += 1  # the document ends after the EOS
    return out


def local_mask(tokens, window):
    n, docs = len(tokens), documents(tokens)
    mask = np.zeros((n, n), bool)
    for i in range(n):
        for j in range(n):
            in_window = window is None or i - j < window
            mask[i, j] = j <= i and in_window and docs[i] == docs[j]
    return mask


def patch_ids(lengths, n):
    cum = np.concatenate([[0], np.cumsum(lengths)])
    return [int((cum <= i).sum()) - 1 for i in range(n)]


def slot_patch_ids(num_patches, k):
    """Patch of each of the P*k cross-attention slots: slot r belongs to patch r // k."""
    return np.arange(num_patches * k) // k


def group_mask(q_group, k_group):
    """The reference's dense cross-attention mask: a query and a key match iff they name the same
    patch. Ids [B, T] / [B, S], or one row [T] / [S]; bool [B, T, S]. (Our model never builds it:
    `nn/patch_attention.py` gathers instead; this is what that must equal.)"""
    q, k = np.atleast_2d(np.asarray(q_group)), np.atleast_2d(np.asarray(k_group))
    return q[:, :, None] == k[:, None, :]


def latent_mask(tokens, lengths, kind="block_causal"):
    """Patch q visible from patch p: q <= p, within the same document unless `kind` is "causal"."""
    num = len(lengths)
    if kind == "causal":
        return np.array([[q <= p for q in range(num)] for p in range(num)])
    ids = patch_ids(lengths, len(tokens))
    has_eos = [any(tokens[i] == EOS and ids[i] == p for i in range(len(tokens))) for p in range(num)]
    docs, doc = [], 0
    for p in range(num):
        docs.append(doc)
        if has_eos[p]:
            doc += 1
    return np.array([[q <= p and docs[p] == docs[q] for q in range(num)] for p in range(num)])


# ---- layers ----------------------------------------------------------------------------------------


def rmsnorm(x, scale, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * scale


def rope(x, theta):
    """x [N, H, K]: rotate pairs (2j, 2j+1) as complex numbers by pos * theta^(-2j/K)."""
    n, _, k = x.shape
    freqs = 1.0 / theta ** (np.arange(0, k, 2) / k)
    rot = np.exp(1j * np.outer(np.arange(n), freqs))[:, None, :]
    z = (x[..., 0::2] + 1j * x[..., 1::2]) * rot
    out = np.empty_like(x)
    out[..., 0::2], out[..., 1::2] = z.real, z.imag
    return out


def attention(q, k, v, allowed):
    """q [T, H, K], k/v [S, H, K], allowed [T, S] -> [T, H, K]; a query with no key gives 0."""
    out = np.zeros_like(q)
    for t in range(q.shape[0]):
        keys = np.flatnonzero(allowed[t])
        if keys.size == 0:
            continue
        s = np.einsum("hk,shk->hs", q[t], k[keys]) / np.sqrt(q.shape[-1])
        w = np.exp(s - s.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        out[t] = np.einsum("hs,shk->hk", w, v[keys])
    return out


def project(x, w):  # x [N, D], w [D, H, K]
    return np.einsum("nd,dhk->nhk", x, w)


def block(x, p, mask, theta, eps):
    h = rmsnorm(x, p["attention_norm"]["scale"], eps)
    a = p["attention"]
    q, k, v = rope(project(h, a["wq"]), theta), rope(project(h, a["wk"]), theta), project(h, a["wv"])
    x = x + np.einsum("nhk,hkd->nd", attention(q, k, v, mask), a["wo"])
    h = rmsnorm(x, p["ffn_norm"]["scale"], eps)
    f = p["feed_forward"]
    gate = h @ f["w1"]
    return x + ((gate / (1 + np.exp(-gate))) * (h @ f["w3"])) @ f["w2"]


def cross(x, kv, p, allowed, eps):
    xq, xkv = rmsnorm(x, p["norm_q"]["scale"], eps), rmsnorm(kv, p["norm_kv"]["scale"], eps)
    out = attention(project(xq, p["wq"]), project(xkv, p["wk"]), project(xkv, p["wv"]), allowed)
    return x + np.einsum("nhk,hkd->nd", out, p["wo"])  # the reference's CrossAttention returns x + out


def hash_bucket(window, prime, vocab):
    exact = sum(int(t) * prime**m for m, t in enumerate(window))
    return (((exact + 2**63) % 2**64) - 2**63) % vocab


# ---- the model ------------------------------------------------------------------------------------


def embed(tokens, enc, cfg):
    h = enc["tok_embeddings"]["embedding"][tokens].copy()
    if cfg.hash is None:
        return h
    tables = enc["hash_embeddings"]["embedding"]
    t = 0
    for f in range(cfg.hash.n_functions):
        for n in cfg.hash.group_sizes:
            padded = [0] * (n - 1) + list(tokens)
            ids = [hash_bucket(padded[i : i + n], PRIMES[f], cfg.hash.vocab) for i in range(len(tokens))]
            h = h + tables[t][ids]
            t += 1
    return h


def entropy_lm_forward(params, cfg, tokens):
    p, st = f64(params), cfg.stack
    mask = local_mask(tokens, st.window)
    h = p["tok_embeddings"]["embedding"][tokens]
    for i in range(st.n_layers):
        h = block(h, p[f"layers_{i}"], mask, st.rope_theta, st.norm_eps)
    return rmsnorm(h, p["norm"]["scale"], st.norm_eps) @ p["output"]["kernel"]


def blt_forward(params, cfg, tokens, lengths):
    """One row: tokens [N] ints, lengths [P] (sum N + 1, first 1) -> logits [N, V] float64."""
    p = f64(params)
    enc, lat, dec = p["local_encoder"], p["global_transformer"], p["local_decoder"]
    tokens, lengths = list(map(int, tokens)), list(map(int, lengths))
    n, num, k, dim = len(tokens), len(lengths), cfg.cross_attn_k, cfg.encoder.dim
    ids = patch_ids(lengths, n)
    dec_ids = patch_ids(lengths[1:], n)

    # Local encoder: pool once at the first cross-attention, refine k slots per patch.
    h = embed(tokens, enc, cfg)
    mask = local_mask(tokens, cfg.encoder.window)
    enc_cross = np.array([[ids[i] == r // k for i in range(n)] for r in range(num * k)])
    slots = None
    for i in range(cfg.encoder.n_layers):
        h = block(h, enc[f"layers_{i}"], mask, cfg.encoder.rope_theta, cfg.encoder.norm_eps)
        if i == cfg.encoder.n_layers - 1 or cfg.cross_attn_all_layers_encoder:
            if slots is None:
                pooled = np.zeros((num, dim))
                for q in range(num):
                    members = [j for j in range(n) if ids[j] == q]
                    if members:
                        pooled[q] = h[members].max(axis=0)
                slots = (pooled @ enc["patch_embedding_projection"]["kernel"]).reshape(num * k, dim)
            j = i if cfg.cross_attn_all_layers_encoder else 0
            slots = slots + cross(slots, h, enc[f"cross_attn_layers_{j}"], enc_cross, cfg.encoder.norm_eps)

    # Latent transformer over patch vectors.
    x = slots.reshape(num, k * dim)
    if cfg.has_latent_projection:
        x = x @ lat["token_embedding_projection"]["kernel"]
    gmask = latent_mask(tokens, lengths, cfg.latent_mask)
    for i in range(cfg.latent.n_layers):
        x = block(x, lat[f"layers_{i}"], gmask, cfg.latent.rope_theta, cfg.latent.norm_eps)

    # Local decoder.
    patch_slots = (x @ dec["patch_embedding_projection"]["kernel"]).reshape(num * k, dim)
    dec_cross = np.array([[dec_ids[i] == r // k for r in range(num * k)] for i in range(n)])
    mask = local_mask(tokens, cfg.decoder.window)
    for i in range(cfg.decoder.n_layers):
        if i == 0 or cfg.cross_attn_all_layers_decoder:
            h = h + cross(h, patch_slots, dec[f"cross_attn_layers_{i}"], dec_cross, cfg.decoder.norm_eps)
        h = block(h, dec[f"layers_{i}"], mask, cfg.decoder.rope_theta, cfg.decoder.norm_eps)
    return rmsnorm(h, dec["norm"]["scale"], cfg.decoder.norm_eps) @ dec["output"]["kernel"]
