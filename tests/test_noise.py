"""The paper's five input noisings on fixed strings: what each does, at the paper's rates, and
reproducibly from (seed, text) alone."""

import itertools
import random
import string

import pytest

from blt_jax.errors import InputError
from blt_jax.evals import noise

LONG = "".join(random.Random(0).choice(string.ascii_lowercase + " ") for _ in range(20_000))
NO_RUNS = "abcdefghijklmnopqrstuvwxyz" * 400  # no character equals its neighbour


def test_antspeak_and_uppercase_on_fixed_strings():
    assert noise.noise_context("antspeak", "Hi you.") == "H I   Y O U ."
    assert noise.noise_context("uppercase", "def f(x): return x") == "DEF F(X): RETURN X"
    assert noise.noise_context("uppercase", "") == "" and noise.noise_context("antspeak", "") == ""


def test_drop_removes_a_tenth_of_the_characters_and_keeps_the_order():
    out = noise.noise_context("drop", LONG)
    it = iter(LONG)
    assert all(c in it for c in out)  # a subsequence of the input
    assert 0.09 < 1 - len(out) / len(LONG) < 0.11


def test_randomcase_upper_cases_half_of_the_characters():
    text = LONG.replace(" ", "")
    out = noise.noise_context("randomcase", text)
    assert out.lower() == text
    assert 0.48 < sum(c.isupper() for c in out) / len(out) < 0.52
    assert noise.noise_context("randomcase", "ABC", seed=1).lower() == "abc"


def test_repeat_repeats_a_fifth_of_the_characters_at_most_four_times():
    out = noise.noise_context("repeat", NO_RUNS)
    runs = [(c, len(list(group))) for c, group in itertools.groupby(out)]
    assert "".join(c for c, _ in runs) == NO_RUNS  # nothing but repetitions was added
    lengths = [n for _, n in runs]
    assert max(lengths) == 4 and min(lengths) == 1
    assert 0.18 < sum(n > 1 for n in lengths) / len(lengths) < 0.22


@pytest.mark.parametrize("name", ["drop", "randomcase", "repeat"])
def test_the_noise_of_a_text_depends_on_the_seed_and_the_text_alone(name):
    text = LONG[:400]
    first = noise.noise_context(name, text, seed=5)
    assert noise.noise_context(name, text, seed=5) == first  # the four choices of an item see one context
    assert noise.noise_context(name, text, seed=6) != first
    assert noise.noise_context(name.upper(), text, seed=5) == first


def test_names():
    assert noise.noise_context(None, "Ab") == "Ab" and noise.noise_context("none", "Ab") == "Ab"
    with pytest.raises(
        InputError,
        match=r"^unknown noise 'dorp'; choose one of antspeak, drop, randomcase, "
        r"repeat, uppercase \(or none\)$",
    ):
        noise.noise_context("dorp", "x")
