"""Test session set-up: 8 simulated CPU devices, fp32 CPU, a persistent compilation cache.

The environment must be set before jax is imported anywhere, hence at the top of conftest.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Test workers only compile for TPU topologies (no TPU is opened): let several load libtpu at once.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import jax  # noqa: E402
import pytest  # noqa: E402

# Compiled executables are reused across test processes and runs (XLA compiles slowly on 2 cores).
_CACHE = os.environ.get("BLT_JAX_TEST_CACHE", os.path.expanduser("~/.cache/blt_jax/jax_test_cache"))
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
# Long end-to-end runs (marker `long`) keep the suite under 15 minutes on 2 cores: CI runs them after
# it, in the release tier (README), with this variable set.
LONG_TESTS = "BLT_JAX_LONG_TESTS"


# Test files by what they cost (worker seconds on 2 cores, cold compilation cache, 2026-12-07), the
# costliest first. Workers take whole files (pytest.ini: --dist loadfile) in collection order, so a
# long file taken last would run alone at the end; files not listed follow, in their usual order.
COSTLIEST_FIRST = (
    "test_generate.py",  # 456 s
    "test_user_paths.py",  # 255 s
    "test_multihost.py",  # 250 s
    "test_lm_eval.py",  # 244 s
    "test_train_step.py",  # 222 s
    "test_splash.py",  # 190 s
    "test_train_loop.py",  # 188 s
    "test_gcs.py",  # 175 s
    "test_quickstart.py",  # 151 s
    "test_byteify.py",  # 109 s
    "test_faults.py",  # 98 s
    "test_aot.py",  # 93 s
    "test_serve.py",  # 92 s
    "test_blt_semantics.py",  # 84 s
)


def _cost_rank(item) -> int:
    name = os.path.basename(str(item.path))
    return COSTLIEST_FIRST.index(name) if name in COSTLIEST_FIRST else len(COSTLIEST_FIRST)


def pytest_collection_modifyitems(config, items):
    items.sort(key=_cost_rank)  # stable: tests keep their order within a file
    if os.environ.get(LONG_TESTS) == "1":
        return
    skip = pytest.mark.skip(reason=f"a long end-to-end run: the release tier runs it ({LONG_TESTS}=1, see the README)")
    for item in items:
        if "long" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def fixtures_dir() -> str:
    return FIXTURES


# Tiers, counted from the test reports (which carry each test's markers, under xdist too) and said in
# the summary, so tests the suite leaves to the release tier are never skipped silently.
_TIERS: dict[str, int] = {}


def pytest_runtest_logreport(report):
    if report.when != "setup":
        return
    tier = next((name for name in ("long", "released") if name in report.keywords), "suite")
    _TIERS[tier] = _TIERS.get(tier, 0) + 1


def pytest_terminal_summary(terminalreporter):
    if not _TIERS:
        return
    runs_long = os.environ.get(LONG_TESTS) == "1"
    runs_released = bool(os.environ.get("BLT_JAX_AOT_RELEASED"))
    parts = [f"suite {_TIERS.get('suite', 0)}"]
    for name, runs, variable in (("long", runs_long, LONG_TESTS), ("released", runs_released, "BLT_JAX_AOT_RELEASED")):
        if _TIERS.get(name):
            parts.append(f"{name} {_TIERS[name]} ({'run' if runs else f'release tier, skipped here: {variable}=1'})")
    terminalreporter.write_line("tests by tier: " + "; ".join(parts))
