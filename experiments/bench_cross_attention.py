"""Cross-attention between bytes and patch slots on a TPU: the gather path blt_jax runs, against the
splash kernel with segment ids and against dense masked attention, compiled ahead of time for a TPU
chip from any host (the `tpu` extra; no TPU needed).

  python experiments/bench_cross_attention.py [--config experiments/blt_1b.py:v5p-32] [--topology v5litepod-1]

Both cross-attentions of a BLT are groupings, not bands: slot (p, j) reads the bytes of patch p
(encoder), byte i reads the k slots of the patch before its next one (decoder). Patch boundaries
depend on the data, so a kernel can only see them as segment ids, and splash skips a block only when
its static mask is empty: with segment ids under a full mask it computes every (query, key) block,
O(Tq Tkv). The gather path (`nn.patch_attention`) scores each byte against its own patch's k slots,
O(N k), and segment-reduces the encoder's softmax.

For one row of the config's profile (N bytes, P patch slots per row, k slots per patch, the encoder's
width and cross-attention heads) this compiles the forward and backward pass of each direction with
each implementation for one chip and prints a table: peak memory (arguments + temporaries), XLA's
FLOPs (a Pallas kernel counts 0, so the kernel's FLOPs are given analytically beside them) and
compile time. Before compiling, the splash variant is checked against the gather path on this host
(interpret mode, a small row with empty patches), so the figures compare equal computations.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

# The equality check runs on this host's CPU (interpret mode); the TPU programs are only compiled, for
# the topology named. Without this, jax would start libtpu on a host without TPUs.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.pallas.ops.tpu import splash_attention as splash

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from blt_jax.aot import DoesNotFit, compile_lowered, topology_devices
from blt_jax.experiment import load_experiment
from blt_jax.experiment.config import experiment_from_dict
from blt_jax.nn import splash as blt_splash
from blt_jax.nn.attention import masked_attention
from blt_jax.nn.options import RunOptions
from blt_jax.nn.patch_attention import bytes_attend_slots, slots_attend_bytes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def splash_grouped(
    q: jax.Array, k: jax.Array, v: jax.Array, q_groups: jax.Array, kv_groups: jax.Array, options: RunOptions
) -> jax.Array:
    """Query t sees key s iff q_groups[t] == kv_groups[s], through splash with a full mask and segment
    ids; queries whose group has no key give 0 (splash returns a mean or NaN there).

    q [B, Tq, H, K], k/v [B, Tkv, H, K], groups int [B, Tq] / [B, Tkv] -> [B, Tq, H, K].
    """
    (_, tq, heads, _), tkv = q.shape, k.shape[1]
    pq, sizes_q = blt_splash.block_sizes(tq, options)
    pkv, sizes_kv = blt_splash.block_sizes(tkv, options)
    sizes = splash.BlockSizes(
        block_q=sizes_q.block_q,
        block_kv=sizes_kv.block_kv,
        block_kv_compute=sizes_kv.block_kv,
        block_q_dkv=sizes_q.block_q,
        block_kv_dkv=sizes_kv.block_kv,
        block_kv_dkv_compute=sizes_kv.block_kv,
        block_q_dq=sizes_q.block_q,
        block_kv_dq=sizes_kv.block_kv,
    )
    mask = splash.MultiHeadMask([splash.FullMask((pq, pkv))] * heads)
    kernel = splash.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=options.interpret)
    # Padding gets segments no real row uses: padded queries see only padded keys, and no real query
    # sees a padded key.
    gq = jnp.pad(q_groups.astype(jnp.int32), ((0, 0), (0, pq - tq)), constant_values=-1)
    gkv = jnp.pad(kv_groups.astype(jnp.int32), ((0, 0), (0, pkv - tkv)), constant_values=-2)
    heads_first = lambda x, n: jnp.transpose(
        jnp.pad(x, [(0, 0), (0, n - x.shape[1]), (0, 0), (0, 0)]),
        (0, 2, 1, 3),
    )
    scaled = (q.astype(jnp.float32) * q.shape[-1] ** -0.5).astype(q.dtype)
    out = jax.vmap(lambda a, b, c, s, t: kernel(a, b, c, segment_ids=splash.SegmentIds(s, t)))(
        heads_first(scaled, pq), heads_first(k, pkv), heads_first(v, pkv), gq, gkv
    )
    out = jnp.transpose(out, (0, 2, 1, 3))[:, :tq]
    seen = _has_key(q_groups, kv_groups)
    return jnp.where(seen[:, :, None, None], out, 0.0).astype(q.dtype)


def _has_key(q_groups: jax.Array, kv_groups: jax.Array) -> jax.Array:
    """bool [B, Tq]: group q_groups[t] holds a key; groups are nondecreasing patch ids along a row."""
    lo = jax.vmap(lambda keys, qs: jnp.searchsorted(keys, qs, side="left"))(kv_groups, q_groups)
    hi = jax.vmap(lambda keys, qs: jnp.searchsorted(keys, qs, side="right"))(kv_groups, q_groups)
    return hi > lo


def encoder_variants(slots_per_patch: int, options: RunOptions) -> dict:
    """{name: fn(q [B, P*k, H, K], k, v [B, N, H, K], patch_ids [B, N]) -> [B, P*k, H, K]}."""

    def slot_groups(q):
        return jnp.broadcast_to(jnp.arange(q.shape[1]) // slots_per_patch, q.shape[:2])

    def dense(q, k, v, ids):
        return masked_attention(q, k, v, slot_groups(q)[:, :, None] == ids[:, None, :])

    return {
        "gather": lambda q, k, v, ids: slots_attend_bytes(q, k, v, ids, slots_per_patch),
        "splash": lambda q, k, v, ids: splash_grouped(q, k, v, slot_groups(q), ids, options),
        "dense": dense,
    }


def decoder_variants(slots_per_patch: int, options: RunOptions) -> dict:
    """{name: fn(q [B, N, H, K], k, v [B, P*k, H, K], dec_ids [B, N]) -> [B, N, H, K]}."""

    def slot_groups(k):
        return jnp.broadcast_to(jnp.arange(k.shape[1]) // slots_per_patch, k.shape[:2])

    def dense(q, k, v, ids):
        return masked_attention(q, k, v, ids[:, :, None] == slot_groups(k)[:, None, :])

    return {
        "gather": lambda q, k, v, ids: bytes_attend_slots(q, k, v, ids, slots_per_patch),
        "splash": lambda q, k, v, ids: splash_grouped(q, k, v, ids, slot_groups(k), options),
        "dense": dense,
    }


def loss_and_grads(fn):
    """fn(q, k, v, ids) -> (sum of out * cotangent, gradients of q, k, v): one forward and backward."""

    def run(q, k, v, ids, cotangent):
        loss = lambda a, b, c: jnp.sum(fn(a, b, c, ids).astype(jnp.float32) * cotangent)
        return jax.value_and_grad(loss, argnums=(0, 1, 2))(q, k, v)

    return run


def check_equal(slots_per_patch: int = 2) -> float:
    """The splash variants equal the gather path on this host (interpret mode): a row of 300 bytes
    in patches of 1-9 bytes with two empty patch slots at the end. Returns the largest difference."""
    rng = np.random.default_rng(0)
    lengths = np.concatenate([[1], rng.integers(1, 10, size=60)])
    ids = np.repeat(np.arange(len(lengths)), lengths)[:300]
    patches = int(ids.max()) + 3  # empty patches at the end
    heads, dim = 2, 64
    options = RunOptions(attention="splash", platform="cpu", splash_block_q=128, splash_block_kv=128)
    worst = 0.0
    for direction, variants, tq, tkv, groups in (
        ("encoder", encoder_variants(slots_per_patch, options), patches * slots_per_patch, 300, ids),
        ("decoder", decoder_variants(slots_per_patch, options), 300, patches * slots_per_patch, ids - 1),
    ):  # the first patch's bytes read patch -1: nothing
        q = jnp.asarray(rng.normal(size=(1, tq, heads, dim)), jnp.float32)
        k = jnp.asarray(rng.normal(size=(1, tkv, heads, dim)), jnp.float32)
        v = jnp.asarray(rng.normal(size=(1, tkv, heads, dim)), jnp.float32)
        cot = jnp.asarray(rng.normal(size=(1, tq, heads, dim)), jnp.float32)
        ids_ = jnp.asarray(groups[None], jnp.int32)
        want = loss_and_grads(variants["gather"])(q, k, v, ids_, cot)
        got = loss_and_grads(variants["splash"])(q, k, v, ids_, cot)
        for a, b in zip(jax.tree_util.tree_leaves(want), jax.tree_util.tree_leaves(got)):
            worst = max(worst, float(jnp.max(jnp.abs(a - b))))
        if worst > 1e-4:
            raise SystemExit(f"{direction}: splash differs from the gather path by {worst:.2e}")
    return worst


def kernel_flops(tq: int, tkv: int, heads: int, dim: int) -> float:
    """Forward + backward FLOPs of splash under a full mask: every block computed. Forward QK^T and PV
    (2 matmuls); backward recomputes QK^T and forms dP, dV, dQ, dK (5): 7 matmuls of 2 Tq Tkv H K."""
    return 7 * 2 * tq * tkv * heads * dim


def compile_one(fn, shapes: list, device) -> dict:
    sharding = jax.sharding.SingleDeviceSharding(device)
    args = [jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding) for s in shapes]
    start = time.perf_counter()
    try:
        compiled = compile_lowered(jax.jit(fn).lower(*args))
    except DoesNotFit as error:
        return {"fits": False, "needed": error.needed_bytes, "seconds": time.perf_counter() - start}
    stats = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return {
        "fits": True,
        "peak": stats.argument_size_in_bytes + stats.temp_size_in_bytes,
        "temp": stats.temp_size_in_bytes,
        "flops": float((cost or {}).get("flops", 0.0)),
        "seconds": time.perf_counter() - start,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=os.path.join(ROOT, "experiments", "blt_1b.py:v5p-32"))
    parser.add_argument("--topology", default="v5litepod-1", help="its first chip compiles the programs")
    parser.add_argument("--only", default="gather,splash,dense", help="implementations to compile")
    args = parser.parse_args(argv)

    print(
        f"splash equals the gather path on this host (forward and gradients): largest difference {check_equal():.1e}",
        flush=True,
    )
    experiment = experiment_from_dict(load_experiment(args.config))
    model, data = experiment.model, experiment.data
    n, slots = data.row_bytes, data.row_patches * model.cross_attn_k
    heads, dim = model.cross_attn_heads, model.encoder.dim // model.cross_attn_heads
    dtype = jnp.dtype(model.dtype)
    device = topology_devices(args.topology)[0]
    options = RunOptions(attention="splash", platform="tpu")
    print(
        f"one row: {n} bytes, {data.row_patches} patches x k = {model.cross_attn_k} slots, {heads} heads of "
        f"{dim}, {dtype.name}; forward + backward on one {device.device_kind}\n"
    )
    print("| direction | implementation | fits | peak memory | XLA FLOPs | kernel FLOPs (analytic) | compile |")
    print("|---|---|---|---|---|---|---|")
    for direction, variants, tq, tkv in (
        ("encoder: slots read bytes", encoder_variants(model.cross_attn_k, options), slots, n),
        ("decoder: bytes read slots", decoder_variants(model.cross_attn_k, options), n, slots),
    ):
        shapes = [
            jax.ShapeDtypeStruct((1, tq, heads, dim), dtype),
            jax.ShapeDtypeStruct((1, tkv, heads, dim), dtype),
            jax.ShapeDtypeStruct((1, tkv, heads, dim), dtype),
            jax.ShapeDtypeStruct((1, n), jnp.int32),
            jax.ShapeDtypeStruct((1, tq, heads, dim), jnp.float32),
        ]
        for name in args.only.split(","):
            result = compile_one(loss_and_grads(variants[name]), shapes, device)
            kernel = f"{kernel_flops(tq, tkv, heads, dim) / 1e9:,.1f} G" if name == "splash" else "-"
            if result["fits"]:
                print(
                    f"| {direction} | {name} | yes | {result['peak'] / 2**30:.3f} GiB | "
                    f"{result['flops'] / 1e9:,.1f} G | {kernel} | {result['seconds']:.0f} s |",
                    flush=True,
                )
            else:
                print(
                    f"| {direction} | {name} | no: needs {result['needed'] / 2**30:.1f} GiB | - | - | {kernel} | "
                    f"{result['seconds']:.0f} s |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
