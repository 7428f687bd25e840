"""Hash n-gram ids must be bit-exact to the reference's wrapping int64 arithmetic."""

import jax
import numpy as np
import pytest

from blt_jax.config import HashConfig
from blt_jax.nn.hash_embed import PRIMES, all_hash_ids, hash_ids

# blt_spec.md section 3: "<BOS>Daenerys_Ta", p = 1000000007, m = 500002.
SPEC_TOKENS = [1, 72, 101, 105, 114, 105, 118, 125, 119, 36, 88, 101]
SPEC_IDS = {
    3: [443987, 348935, 37502, 294216, 274140, 242340, 50093, 202570, 414224, 201424, 409561, 473651],
    4: [437197, 281585, 189712, 127061, 29038, 267201, 129446, 401070, 26871, 381272, 148156, 250338],
    5: [123201, 79613, 382808, 283737, 426389, 123063, 155827, 380477, 412897, 348081, 187892, 249379],
    6: [166353, 302503, 241104, 306205, 90295, 349786, 191529, 178252, 211792, 252547, 268005, 349383],
    7: [34117, 201753, 20286, 95355, 64005, 444548, 244054, 421114, 106637, 229492, 430315, 485790],
    8: [172383, 323061, 340750, 41807, 150805, 85526, 382522, 178197, 31469, 49357, 48532, 69310],
}


def bigint_reference(row, n, prime, vocab):
    """Python big-int emulation of torch int64: exact sum, wrapped to int64, floor-mod."""
    padded = [0] * (n - 1) + [int(x) for x in row]
    out = []
    for i in range(len(row)):
        exact = sum(padded[i + m] * prime**m for m in range(n))
        wrapped = ((exact + 2**63) % 2**64) - 2**63
        out.append(wrapped % vocab)
    return out


@pytest.fixture(scope="module")
def jitted_hash():
    return jax.jit(hash_ids, static_argnums=(1, 2, 3))


@pytest.mark.parametrize("n", sorted(SPEC_IDS))
def test_spec_vectors(jitted_hash, n):
    got = np.asarray(jitted_hash(np.array([SPEC_TOKENS], np.int32), n, PRIMES[0], 500002))[0]
    assert got.tolist() == SPEC_IDS[n]
    assert got.tolist() == bigint_reference(SPEC_TOKENS, n, PRIMES[0], 500002)


@pytest.mark.parametrize(
    "f,vocab,sizes",
    [(f, 500002, (3, 8)) for f in range(len(PRIMES))]
    + [(f, vocab, (1, 2, 3, 8, 13, 64)) for f in (0, 1) for vocab in (30000, 50002, 500002, (1 << 23) - 1)],
)
def test_random_tokens(f, vocab, sizes):
    rng = np.random.default_rng(f * 7 + vocab % 13)
    tokens = rng.integers(0, 512, size=(2, 40)).astype(np.int32)
    tokens[0, :5] = 511  # the largest ids allowed: the biggest limb sums
    for n in sizes:
        got = np.asarray(hash_ids(tokens, n, PRIMES[f], vocab))  # eager: no compile per case
        want = [bigint_reference(row, n, PRIMES[f], vocab) for row in tokens]
        assert got.tolist() == want, (f, vocab, n)


def test_negative_int64_sums_are_floor_modded(jitted_hash):
    # Find windows whose wrapped int64 sum is negative: the signed correction must kick in.
    rng = np.random.default_rng(0)
    tokens = rng.integers(4, 260, size=(1, 200)).astype(np.int32)
    n, prime = 5, PRIMES[0]
    padded = [0] * (n - 1) + tokens[0].tolist()
    negatives = sum(
        1 for i in range(200) if (((sum(padded[i + m] * prime**m for m in range(n)) + 2**63) % 2**64) - 2**63) < 0
    )
    assert negatives > 20  # the test exercises the correction
    got = np.asarray(jitted_hash(tokens, n, prime, 500002))[0]
    assert got.tolist() == bigint_reference(tokens[0], n, prime, 500002)


def test_table_order_is_function_major():
    config = HashConfig(group_sizes=(3, 5), vocab=4099, n_functions=2)
    tokens = np.array([SPEC_TOKENS], np.int32)
    ids = [np.asarray(x)[0].tolist() for x in all_hash_ids(tokens, config)]
    want = [bigint_reference(SPEC_TOKENS, n, PRIMES[f], 4099) for f in range(2) for n in (3, 5)]
    assert ids == want


def test_matches_transformers_torch_implementation():
    torch = pytest.importorskip("torch")
    from transformers.models.blt.modeling_blt import byte_group_hash_function

    rng = np.random.default_rng(1)
    tokens = rng.integers(0, 260, size=(3, 64)).astype(np.int64)
    for prime in PRIMES[:4]:
        for n in (3, 6, 8):
            want = byte_group_hash_function(torch.tensor(tokens), n, prime, 500002).numpy()
            got = np.asarray(hash_ids(tokens.astype(np.int32), n, prime, 500002))
            np.testing.assert_array_equal(got, want)
