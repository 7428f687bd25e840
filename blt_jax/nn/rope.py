"""Rotary position embeddings: the inverse frequencies (bit for bit as the reference's torch computes
them on a CPU), Llama 3's frequency scaling, the cos/sin tables of positions, and the rotation of
interleaved pairs.

Why the frequencies are computed so carefully. The reference (Meta's `precompute_freqs_cis`, and
transformers' Llama and BLT) computes `1 / theta ** (arange(0, K, 2).float() / K)` in float32 with
torch. torch's CPU kernel computes `theta ** e` with SLEEF's vectorised `powf_u10` (error <= 1 ulp, not
always correctly rounded) for the entries that fill whole blocks of two SIMD vectors, and with the C
library's `powf` for the rest. numpy's float32 `power` is another function
again: its values were 1-4 ulps off for some head dims, an angle error that grows with the position
(entropies 4.2e-4 apart at byte 590 on a model with head_dim 12). `rope_inv_freq` reproduces torch's
values exactly: the same SLEEF algorithm in exact float32 arithmetic for the vector lanes, the C
library's `powf` for the rest, and IEEE float32 divisions as torch does them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import math
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np

from blt_jax.config import RopeScaling, StackConfig

F32 = np.float32

# ---- float32 arithmetic, exactly as the hardware rounds it -------------------------------------


def _round_f32(x: Fraction) -> F32:
    """The float32 nearest to an exact rational (ties to even); normal range only."""
    if x == 0:
        return F32(0.0)
    sign, mag = (-1, -x) if x < 0 else (1, x)
    exp = mag.numerator.bit_length() - mag.denominator.bit_length()
    if Fraction(2) ** exp > mag:
        exp -= 1
    scaled = mag / Fraction(2) ** (exp - 23)  # in [2^23, 2^24)
    whole, rest = divmod(scaled.numerator, scaled.denominator)
    twice = 2 * rest
    if twice > scaled.denominator or (twice == scaled.denominator and whole % 2):
        whole += 1
    return F32(sign * math.ldexp(whole, exp - 23))


def _fma(a: F32, b: F32, c: F32) -> F32:
    """a * b + c with one rounding (the FMA instruction)."""
    return _round_f32(Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c)))


# Double-float ("df") helpers: an unevaluated sum hi + lo of two float32, as SLEEF's df.h with FMA.


def _df_add2_ff(x: F32, y: F32) -> tuple[F32, F32]:
    s = x + y
    v = s - x
    return s, (x - (s - v)) + (y - v)


def _df_add2(x: tuple[F32, F32], y: tuple[F32, F32]) -> tuple[F32, F32]:
    s = x[0] + y[0]
    v = s - x[0]
    t = (x[0] - (s - v)) + (y[0] - v)
    return s, t + (x[1] + y[1])


def _df_add(x: tuple[F32, F32], y: tuple[F32, F32]) -> tuple[F32, F32]:
    s = x[0] + y[0]
    return s, (((x[0] - s) + y[0]) + x[1]) + y[1]


def _df_add2_df_f(x: tuple[F32, F32], y: F32) -> tuple[F32, F32]:
    s = x[0] + y
    v = s - x[0]
    t = (x[0] - (s - v)) + (y - v)
    return s, t + x[1]


def _df_add_f_df(x: F32, y: tuple[F32, F32]) -> tuple[F32, F32]:
    s = x + y[0]
    return s, ((x - s) + y[0]) + y[1]


def _df_mul_df_f(x: tuple[F32, F32], y: F32) -> tuple[F32, F32]:
    s = x[0] * y
    return s, _fma(x[1], y, _fma(x[0], y, -s))


def _df_mul(x: tuple[F32, F32], y: tuple[F32, F32]) -> tuple[F32, F32]:
    s = x[0] * y[0]
    return s, _fma(x[0], y[1], _fma(x[1], y[0], _fma(x[0], y[0], -s)))


def _df_square(x: tuple[F32, F32]) -> tuple[F32, F32]:
    s = x[0] * x[0]
    return s, _fma(x[0] + x[0], x[1], _fma(x[0], x[0], -s))


def _df_div(n: tuple[F32, F32], d: tuple[F32, F32]) -> tuple[F32, F32]:
    t = F32(1.0) / d[0]
    s = n[0] * t
    u = _fma(t, n[0], -s)
    v = _fma(-d[1], t, _fma(-d[0], t, F32(1.0)))
    return s, _fma(s, v, _fma(n[1], t, u))


def _df_normalize(x: tuple[F32, F32]) -> tuple[F32, F32]:
    s = x[0] + x[1]
    return s, (x[0] - s) + x[1]


def _log_df(d: F32) -> tuple[F32, F32]:
    """log(d) as a double-float, for a positive normal d (SLEEF's `logkf`)."""
    e = math.floor(math.log2(float(d * F32(1.0 / 0.75))))  # the AVX-512 path's getexp, exact here
    while math.ldexp(1.0, e) > float(d * F32(1.0 / 0.75)):
        e -= 1
    while math.ldexp(1.0, e + 1) <= float(d * F32(1.0 / 0.75)):
        e += 1
    m = F32(math.ldexp(float(d), -e))  # in [0.75, 1.5)
    x = _df_div(_df_add2_ff(F32(-1.0), m), _df_add2_ff(F32(1.0), m))
    x2 = _df_square(x)
    t = F32(0.240320354700088500976562)
    t = _fma(t, x2[0], F32(0.285112679004669189453125))
    t = _fma(t, x2[0], F32(0.400007992982864379882812))
    c = (F32(0.66666662693023681640625), F32(3.69183861259614332084311e-09))
    s = _df_mul_df_f((F32(0.69314718246459960938), F32(-1.904654323148236017e-09)), F32(e))
    s = _df_add(s, (x[0] * F32(2.0), x[1] * F32(2.0)))
    return _df_add(s, _df_mul(_df_mul(x2, x), _df_add2(_df_mul_df_f(x2, t), c)))


def _exp_df(d: tuple[F32, F32]) -> F32:
    """exp(d) of a double-float (SLEEF's `expkf`), in the normal range."""
    u = (d[0] + d[1]) * F32(1.442695040888963407359924681001892137426645954152985934135449406931)
    q = int(np.rint(u))  # round half to even, as cvtps2dq
    s = _df_add2_df_f(d, F32(q) * F32(-0.693145751953125))
    s = _df_add2_df_f(s, F32(q) * F32(-1.428606765330187045e-06))
    s = _df_normalize(s)
    u = F32(0.00136324646882712841033936)
    for coefficient in (
        0.00836596917361021041870117,
        0.0416710823774337768554688,
        0.166665524244308471679688,
        0.499999850988388061523438,
    ):
        u = _fma(u, s[0], F32(coefficient))
    t = _df_add(s, _df_mul_df_f(_df_square(s), u))
    t = _df_add_f_df(F32(1.0), t)
    return F32(math.ldexp(float(t[0] + t[1]), q))


def sleef_powf(x: F32, y: F32) -> F32:
    """x ** y as SLEEF's vectorised `powf_u10` computes it, for x > 0 normal and a normal result.

    What torch's CPU kernel uses for the lanes of full SIMD blocks (`rope_inv_freq`)."""
    if y == 0 or x == 1:
        return F32(1.0)
    return _exp_df(_df_mul_df_f(_log_df(F32(x)), F32(y)))


@functools.cache
def _libm_powf():
    """The C library's `powf` (what torch's scalar path calls), or None where it cannot be loaded."""
    try:
        libm = ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6")
        powf = libm.powf
    except (OSError, AttributeError):
        return None
    powf.restype, powf.argtypes = ctypes.c_float, [ctypes.c_float, ctypes.c_float]
    return powf


def _scalar_pow(x: F32, y: F32) -> F32:
    """x ** y as torch's scalar path computes it: the C library's powf (glibc's is within 1 ulp, not
    always correctly rounded); without one, the correctly rounded value (float64 holds 29 more bits)."""
    powf = _libm_powf()
    if powf is None:
        return F32(np.power(np.float64(x), np.float64(y)))
    return F32(powf(float(x), float(y)))


@functools.cache
def _torch_block() -> int:
    """Elements per iteration of torch's vectorised CPU loop: two SIMD vectors of float32 (32 with
    AVX-512, 16 with AVX2 or NEON). Entries beyond the last full block take the scalar path."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        flags = ""
    return 32 if " avx512f" in flags else 16


@functools.cache
def _default_inv_freq(head_dim: int, theta: float) -> np.ndarray:
    n = head_dim // 2
    exponents = np.arange(0, head_dim, 2).astype(F32) / F32(head_dim)  # int64 -> float32, then / K
    vector_lanes = (n // _torch_block()) * _torch_block()
    base = F32(theta)
    powers = [sleef_powf(base, e) if i < vector_lanes else _scalar_pow(base, e) for i, e in enumerate(exponents)]
    return (F32(1.0) / np.asarray(powers, F32)).astype(F32)


def _llama3(inv_freq: np.ndarray, scaling: RopeScaling) -> np.ndarray:
    """Llama 3's scaled frequencies, in float32 operations as transformers orders them (a Python
    scalar divided by a tensor is torch's `reciprocal(t) * scalar`)."""
    factor, low, high = F32(scaling.factor), F32(scaling.low_freq_factor), F32(scaling.high_freq_factor)
    old = F32(scaling.original_max_position)
    low_wavelen = F32(scaling.original_max_position / scaling.low_freq_factor)
    high_wavelen = F32(scaling.original_max_position / scaling.high_freq_factor)
    wavelen = (F32(1.0) / inv_freq) * F32(2 * math.pi)
    scaled = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq).astype(F32)
    smooth = ((F32(1.0) / wavelen) * old - low) / (high - low)
    smoothed = ((F32(1.0) - smooth) * scaled) / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, smoothed, scaled).astype(F32)


def rope_inv_freq(head_dim: int, theta: float, scaling: RopeScaling | None = None) -> np.ndarray:
    """Inverse frequencies of the K/2 rotated pairs, float32 [K/2], as the reference's torch computes
    them (module docstring), with Llama 3's scaling when `scaling` is given."""
    inv_freq = _default_inv_freq(int(head_dim), float(theta))
    if scaling is None:
        return inv_freq.copy()
    return _llama3(inv_freq, scaling)


def rope_tables(positions: jax.Array, stack: StackConfig) -> tuple[jax.Array, jax.Array]:
    """cos and sin of the rotation angles of a stack's heads.

    Args:
      positions: int [B, N] (or [N]) absolute positions.
      stack: the stack (head_dim, rope_theta, rope_scaling).

    Returns:
      (cos, sin), each fp32 [B, N, K/2] (or [N, K/2]).
    """
    inv_freq = rope_inv_freq(stack.head_dim, stack.rope_theta, stack.rope_scaling)
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotates interleaved pairs (x_2j, x_2j+1) by the angle of pair j (Llama-1 convention; Llama
    checkpoints in the Hugging Face layout rotate halves, and are converted to pairs when read).

    Args:
      x: [B, N, H, K].
      cos, sin: [B, N, K/2].

    Returns:
      [B, N, H, K] in x's dtype; the rotation itself is computed in fp32.
    """
    pairs = x.astype(jnp.float32).reshape(*x.shape[:-1], x.shape[-1] // 2, 2)
    x0, x1 = pairs[..., 0], pairs[..., 1]
    c, s = cos[:, :, None, :], sin[:, :, None, :]
    out = jnp.stack([x0 * c - x1 * s, x0 * s + x1 * c], axis=-1)
    return out.reshape(x.shape).astype(x.dtype)
