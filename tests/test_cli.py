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
    return subprocess.run(
        [sys.executable, "-m", "blt_jax", *args], capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT
    )


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
    result = subprocess.run(
        [script, "params", "--config", "experiments/tiny.py"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )
    assert result.returncode == 0, result.stderr
    assert "280,192" in result.stdout


def test_patch_calibrate_plot_end_to_end(tmp_path):
    corpus = tmp_path / "texts"
    corpus.mkdir()
    for i in range(5):
        (corpus / f"{i}.txt").write_text(("Byte Latent Transformer patches bytes by entropy. " * (i + 1)).strip())
    out = tmp_path / "entropies"
    result = run(
        "patch",
        "--corpus",
        str(corpus),
        "--out",
        str(out),
        "--config",
        "experiments/tiny.py",
        "--docs-per-shard",
        "2",
        "--chunk",
        "64",
    )
    assert result.returncode == 0, result.stderr
    assert "wrote 3 shard(s)" in result.stdout and "5 documents" in result.stdout
    assert "B/s" in result.stderr  # the progress bar reports bytes per second

    result = run(
        "calibrate",
        "--entropies",
        str(out),
        "--target",
        "4.5",
        "--max-patch-length",
        "16",
        "--json",
        str(tmp_path / "cal.json"),
    )
    assert result.returncode == 0, result.stderr
    assert "rule global: threshold" in result.stdout and "rule monotonic: threshold" in result.stdout
    import json

    rows = json.loads((tmp_path / "cal.json").read_text())
    assert [r["rule"] for r in rows] == ["global", "monotonic"]
    assert all(abs(r["achieved_mean"] - 4.5) < 1.0 for r in rows)

    fig = tmp_path / "fig.png"
    result = run("plot-entropy", "--config", "experiments/tiny.py", "--text", "Hello, BLT!", "--out", str(fig))
    assert result.returncode == 0, result.stderr
    assert fig.read_bytes()[:4] == b"\x89PNG"


def test_patch_missing_corpus_fails_fast(tmp_path):
    result = run(
        "patch", "--corpus", str(tmp_path / "none"), "--out", str(tmp_path / "o"), "--config", "experiments/tiny.py"
    )
    assert result.returncode == 2 and "no such file or directory" in result.stderr
    assert not (tmp_path / "o").exists()


def test_the_one_line_error_is_a_line_of_its_own_whatever_other_threads_write():
    """A background thread (Orbax's, tensorstore's) may leave a line open on stderr when the command's
    error is printed: the error still starts its own line, nothing is added when the last write ended
    one, and with `hold` (the process is about to end) a later writer is kept out."""
    import io
    import threading

    from blt_jax.cli.stderr import Shared

    error = "blt-jax train: error: no space left"
    open_line = Shared(io.StringIO())
    writer = threading.Thread(target=open_line.write, args=("Traceback (most recent call last):",))
    writer.start()
    writer.join()
    open_line.last_line(error)
    assert open_line.getvalue() == f"Traceback (most recent call last):\n{error}\n"

    closed_line = Shared(io.StringIO())
    closed_line.write("ERROR absl: a write failed\n")
    closed_line.last_line(error)
    assert closed_line.getvalue() == f"ERROR absl: a write failed\n{error}\n"

    held = Shared(io.StringIO())
    held.last_line(error, hold=True)
    late = threading.Thread(target=held.write, args=("RuntimeError: Event loop is closed",), daemon=True)
    late.start()
    late.join(0.5)
    assert late.is_alive() and held.getvalue() == f"{error}\n"
