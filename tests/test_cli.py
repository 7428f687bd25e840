"""The `blt-jax` command: the README's smoke run, parameter counts, conversion, bad input."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args, timeout=600):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    cache = os.environ.get("BLT_JAX_TEST_CACHE", os.path.expanduser("~/.cache/blt_jax/jax_test_cache"))
    env["JAX_COMPILATION_CACHE_DIR"] = cache
    return subprocess.run([sys.executable, "-m", "blt_jax", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=ROOT)


def test_smoke_runs_the_whole_model():
    result = run("smoke")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "patches (threshold 1.3354)" in out
    assert "logits (1, 81, 260) float32, finite: True" in out
    assert "<s>" in out and "</s>" in out


def test_params_prints_the_released_count():
    result = run("params", "--config", "experiments/blt_1b.py")
    assert result.returncode == 0, result.stderr
    assert "4,533,879,808" in result.stdout and "3,072,012,288" in result.stdout
    assert "99,512,064" in result.stdout  # the entropy model, reported separately


@pytest.mark.parametrize(
    "args,needle",
    [
        (("params", "--config", "experiments/nope.py"), "experiment file 'experiments/nope.py' does not exist"),
        (("convert", "/nonexistent/dir", "/tmp/out"), "/nonexistent/dir: no such directory"),
        (("smoke", "--config", "experiments/entropy_100m.py"), "smoke needs a BLT"),
    ],
)
def test_bad_input_gives_one_clear_line(args, needle):
    result = run(*args)
    assert result.returncode == 2
    assert needle in result.stderr
    assert "Traceback" not in result.stderr


def test_invalid_config_names_the_field(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import importlib.util, os\n"
        f"spec = importlib.util.spec_from_file_location('tiny', {os.path.join(ROOT, 'experiments', 'tiny.py')!r})\n"
        "tiny = importlib.util.module_from_spec(spec); spec.loader.exec_module(tiny)\n"
        "def get_config(arg=None):\n"
        "    c = tiny.get_config()\n"
        "    c.model.encoder.n_heads = 5\n"
        "    return c\n"
    )
    result = run("params", "--config", str(bad))
    assert result.returncode == 2
    assert "model.encoder.n_heads: dim=32 is not divisible by n_heads=5" in result.stderr


def test_console_script_is_installed():
    script = os.path.join(os.path.dirname(sys.executable), "blt-jax")
    assert os.path.exists(script), "install with: pip install -c constraints.txt -e '.[test]'"
    result = subprocess.run([script, "params", "--config", "experiments/tiny.py"], capture_output=True, text=True,
                            cwd=ROOT, timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert result.returncode == 0, result.stderr
    assert "280,192" in result.stdout
