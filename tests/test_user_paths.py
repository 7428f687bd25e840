"""`blt-jax` as users run it: relative and `~` paths from a fresh directory, a run killed with SIGKILL
and resumed, a trained run used after its corpus is deleted (eval, generate, export, a fresh process
loading the export), and bad input answered in one line with exit code 2 by every command."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import shared_runs
from user import TINY, TPU_NOISE, blt_jax, blt_jax_many, start, user_env

# A short tiny run: 24 steps, checkpoints every 4 steps (the last 3 kept), metrics every step, no
# periodic evaluation; the uninterrupted one is shared with other tests (tests/shared_runs.py).
TRAIN = list(shared_runs.TINY_24)


def _last_loss(workdir) -> tuple[int, float]:
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    rows = [row for row in rows if "loss" in row]  # training rows (evaluation rows hold eval_loss)
    return rows[-1]["step"], rows[-1]["loss"]


def _one_line_error(result, command: str) -> str:
    """The error line of a failed command; fails the test unless the failure is exactly one line."""
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"blt-jax {command}: error: "), lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A home directory for `~` paths and a fresh working directory inside it."""
    path = tmp_path_factory.mktemp("home")
    (path / "work").mkdir()
    return path


@pytest.fixture(scope="module")
def straight(home):
    """An uninterrupted run (trained once for the suite from a relative workdir), copied to
    `runs/straight` of the working directory: (workdir, final step, final loss)."""
    workdir = shared_runs.copy_to(shared_runs.trained(shared_runs.TINY_24), home / "work" / "runs" / "straight")
    assert sorted(os.listdir(workdir / "checkpoints"), key=int) == ["16", "20", "24"]
    return workdir, *_last_loss(workdir)


def test_relative_workdir_killed_with_sigkill_resumes_to_the_same_loss(home, straight):
    _, steps, loss = straight
    proc = start("train", *TRAIN, "--workdir", "runs/killed", cwd=home / "work", home=home)
    checkpoint = home / "work" / "runs" / "killed" / "checkpoints" / "4"
    deadline = time.time() + 600
    while not checkpoint.is_dir() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)  # mid-run: 20 steps remain
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert checkpoint.is_dir(), "no checkpoint before the kill"
    result = blt_jax("train", *TRAIN, "--workdir", "runs/killed", cwd=home / "work", home=home)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from step" in result.stderr
    assert _last_loss(home / "work" / "runs" / "killed") == (steps, pytest.approx(loss, rel=1e-6, abs=1e-6))


@pytest.fixture(scope="module")
def orphan(home):
    """A run in `~/runs/orphan` trained on a directory corpus given relatively, which is then deleted."""
    corpus = home / "work" / "corpus"
    corpus.mkdir()
    for i in range(6):
        (corpus / f"{i}.txt").write_text(f"def f{i}(x):\n    return x * {i} + {i}\n" * (20 + i))
    result = blt_jax(
        "train",
        *TRAIN,
        "--config.data.source=corpus",
        "--config.eval.source=corpus/0.txt",
        "--workdir",
        "~/runs/orphan",
        cwd=home / "work",
        home=home,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    shutil.rmtree(corpus)
    return home / "runs" / "orphan"


def test_a_run_whose_corpus_is_deleted_evaluates_generates_and_exports(home, orphan):
    other = home / "work" / "other.txt"
    other.write_text("class Point:\n    def __init__(self, x, y):\n        self.x = x\n" * 40)  # > one batch
    result = blt_jax("eval", "--checkpoint", "~/runs/orphan", "--data", "other.txt", cwd=home / "work", home=home)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "bits per byte" in result.stdout and "other.txt" in result.stdout and "over 0 bytes" not in result.stdout

    prompt = "def f(x):\n"
    result = blt_jax(
        "generate",
        "--checkpoint",
        "~/runs/orphan",
        "--prompt",
        prompt,
        "--max-new-bytes",
        "24",
        cwd=home / "work",
        home=home,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    from_run = result.stdout

    result = blt_jax("export", "~/runs/orphan", "exported", cwd=home / "work", home=home)
    assert result.returncode == 0, result.stderr[-3000:]
    exported = home / "work" / "exported"
    assert sorted(os.listdir(exported)) == ["blt_jax.json", "params.safetensors"]
    assert json.load(open(exported / "blt_jax.json"))["model"]["patching"]["mode"] == "space"  # the run's rule

    # A fresh process with only the export: the same bytes as generating from the run.
    code = (
        "import sys, blt_jax; m = blt_jax.from_pretrained('exported'); "
        f"sys.stdout.write(m.generate({prompt!r}, max_new_bytes=24) + '\\n')"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code],
        cwd=home / "work",
        env=user_env(home, PYTHONIOENCODING="utf-8"),
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=600,
    )
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert loaded.stdout == from_run


@pytest.fixture(scope="module")
def bad_inputs(home):
    """Files for the bad-input walk: an empty corpus directory, a broken checkpoint, a broken config."""
    root = home / "bad"
    (root / "empty").mkdir(parents=True)
    (root / "broken_model").mkdir()
    (root / "broken_model" / "blt_jax.json").write_text("{ not json")
    (root / "broken_run" / "checkpoints").mkdir(parents=True)
    (root / "syntax.py").write_text("def get_config(:\n")
    (root / "unreadable").mkdir()
    (root / "unreadable" / "x.parquet").write_bytes(b"PAR1 this is not parquet")
    return root


def _cases(bad, straight_workdir):
    tiny = ["--config", TINY]
    return [
        # (command line, expected text in the error line)
        (["train", "--config", "nope.py", "--workdir", "w"], "experiment file 'nope.py' does not exist"),
        (["train", "--config", str(bad / "syntax.py"), "--workdir", "w"], "invalid Python"),
        (["train", *tiny, "--workdir", "w", "--config.model.no_such=3"], "unknown key 'model.no_such'"),
        (["train", *tiny, "--workdir", "w", "--config.train.stpes=3"], "did you mean train.steps?"),
        (["train", *tiny, "--workdir", "w", "--config.train.steps=many"], "expected int, got 'many'"),
        (["train", *tiny, "--workdir", "w", "--config.train.steps=0"], "train.steps: must be >= 1, got 0"),
        (["train", *tiny, "--workdir", "w", "--config.data.source=missing_corpus"], "no such file or directory"),
        (["train", *tiny, "--workdir", "w", f"--config.data.source={bad / 'empty'}"], "directory holds no files"),
        (
            ["train", *tiny, "--workdir", "w", f"--config.data.source={bad / 'unreadable'}"],
            "x.parquet: unreadable Parquet",
        ),
        (
            [
                "train",
                *tiny,
                "--workdir",
                str(straight_workdir),
                "--config.model.latent.n_layers=3",
                "--config.train.steps=8",
                "--config.train.warmup_steps=2",
            ],
            "holds checkpoints of another model",
        ),
        (["params", "--config", "nope.py"], "does not exist"),
        (["params", "--config", f"{TINY.replace('tiny.py', 'blt_1b.py')}:bogus"], "bogus"),
        (["train", "--config", TINY], "the following arguments are required: --workdir"),
        (["generate", "--checkpoint", "x", "--max-new-bytes", "many"], "invalid int value: 'many'"),
        (["nosuchcommand"], "invalid choice: 'nosuchcommand'"),
        (["smoke", "--config", "nope.py"], "does not exist"),
        (["aot", "--config", "nope.py", "--topology", "v5litepod-4"], "does not exist"),
        (["aot", *tiny, "--topology", "v5litepod-4", "--config.mesh.no_such=1"], "unknown key 'mesh.no_such'"),
        (["patch", "--corpus", "missing_corpus", "--out", "o", *tiny], "no such file or directory"),
        (["patch", "--corpus", str(bad / "empty"), "--out", "o", *tiny], "directory holds no files"),
        (["calibrate", "--entropies", str(bad / "empty")], "no entropy shards"),
        (["plot-entropy", *tiny, "--text-file", "missing.txt", "--out", "f.png"], "missing.txt"),
        (["eval", "--checkpoint", "nowhere"], "no checkpoints/"),
        (["eval", "--checkpoint", str(bad / "broken_run")], "no complete checkpoint"),
        (["generate", "--checkpoint", "nowhere", "--prompt", "x"], "no such directory"),
        (["generate", "--checkpoint", str(bad / "broken_model"), "--prompt", "x"], "blt_jax.json"),
        (["export", str(bad / "broken_run"), "out"], "no complete checkpoint"),
        (["convert", str(bad / "empty"), "out"], "not a model directory"),
        (["quickstart", "--only", "bogus", "--workdir", "qs"], "unknown stage 'bogus'"),
        # One override dialect: every command that reads an experiment checks its overrides alike.
        (["smoke", "--config.model.latent.n_layres=1"], "did you mean model.latent.n_layers?"),
        (["params", *tiny, "--config.model.dim_bogus=1"], "unknown key 'model.dim_bogus'"),
        (
            ["eval", "--checkpoint", str(straight_workdir), "--config.eval.batch_sise=2"],
            "did you mean eval.batch_size?",
        ),
        (
            ["eval", "--checkpoint", str(straight_workdir), *tiny, "--config.model.latent.n_layers=1"],
            "parameter problem",
        ),
        (
            [
                "plot-entropy",
                "--checkpoint",
                str(straight_workdir),
                "--text",
                "x",
                "--out",
                "f.png",
                "--config.model.dim=8",
            ],
            "overrides apply to --config, not to --checkpoint",
        ),
        (["convert", str(bad / "empty"), "out", "--config.model.dim=8"], "`blt-jax convert` takes no config overrides"),
    ]


def test_every_command_answers_bad_input_in_one_line(home, bad_inputs, straight):
    """Each case is a real process (forked from one that imported the CLI once, tests/cli_forks.py);
    the first also runs as the console script, so the two ways are held to the same answer."""
    cases = _cases(bad_inputs, straight[0])
    results = blt_jax_many([args for args, _ in cases], cwd=home / "work", home=home, timeout=900)
    for (args, needle), result in zip(cases, results, strict=True):
        line = _one_line_error(result, args[0])
        assert needle in line, (args, line)
    console = blt_jax(*cases[0][0], cwd=home / "work", home=home)
    assert (console.returncode, console.stderr) == (results[0].returncode, results[0].stderr)
    # --verbose shows where it came from.
    result = blt_jax("train", "--config", "nope.py", "--workdir", "w", "--verbose", cwd=home / "work", home=home)
    assert result.returncode == 2 and "Traceback" in result.stderr


def test_a_missing_optional_package_is_one_line(home, tmp_path):
    """A feature whose optional package is absent (here gcsfs, for a gs:// workdir) says which package
    and how to install it, in one line."""
    hidden = tmp_path / "hidden" / "gcsfs"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text('raise ImportError("gcsfs is hidden for this test")\n')
    result = blt_jax(
        "train", *TRAIN, "--workdir", "gs://bucket/run", cwd=home / "work", home=home, PYTHONPATH=tmp_path / "hidden"
    )
    line = _one_line_error(result, "train")
    assert "gs:// paths need gcsfs" in line and "'.[gcs]'" in line, line


def _total_params(stdout: str) -> int:
    return int(
        next(line for line in stdout.splitlines() if line.strip().startswith("total")).split()[-1].replace(",", "")
    )


def _eval_bytes(stdout: str) -> int:
    return int(stdout.split(" bytes of ")[0].rsplit(" over ", 1)[1].replace(",", ""))


def test_every_command_reading_an_experiment_takes_the_same_overrides(home, straight):
    """params, smoke and eval take `--config FILE --config.a.b=v` as train and aot do (both tested
    above); eval applies overrides to the run's saved experiment, or to an experiment file."""
    work = home / "work"
    full = blt_jax("params", "--config", TINY, cwd=work, home=home)
    shallow = blt_jax("params", "--config", TINY, "--config.model.latent.n_layers=1", cwd=work, home=home)
    assert full.returncode == 0 and shallow.returncode == 0, (full.stderr[-2000:], shallow.stderr[-2000:])
    assert _total_params(shallow.stdout) < _total_params(full.stdout)
    smoke = blt_jax("smoke", "--config.model.latent.n_layers=1", cwd=work, home=home)
    assert smoke.returncode == 0, smoke.stderr[-2000:]
    assert _total_params(smoke.stdout) == _total_params(shallow.stdout)

    run = str(straight[0])
    whole = blt_jax("eval", "--checkpoint", run, "--batches", "1", cwd=work, home=home)
    half = blt_jax("eval", "--checkpoint", run, "--batches", "1", "--config.eval.batch_size=4", cwd=work, home=home)
    from_file = blt_jax(
        "eval",
        "--checkpoint",
        run,
        "--batches",
        "1",
        "--config",
        TINY,
        "--config.eval.batch_size=4",
        cwd=work,
        home=home,
    )
    for result in (whole, half, from_file):
        assert result.returncode == 0, result.stderr[-2000:]
    assert _eval_bytes(half.stdout) < _eval_bytes(whole.stdout)  # 4 rows instead of 8
    assert _eval_bytes(from_file.stdout) == _eval_bytes(half.stdout)
    assert half.stdout.split(" (loss")[0] == from_file.stdout.split(" (loss")[0]  # the same bits per byte


def test_no_libtpu_noise_on_a_cpu_host(home):
    result = blt_jax("smoke", cwd=home / "work", home=home)
    assert result.returncode == 0, result.stderr[-3000:]
    for noise in TPU_NOISE:
        assert noise not in result.stderr, result.stderr[-3000:]
    # The suite's other worker may hold libtpu (test_aot compiles in-process): a user's machine has one
    # libtpu process, so only the lock is lifted, not anything that could print. Compiled programs go to
    # the cache a user names (relative), not the suite's.
    result = blt_jax(
        "aot",
        "--config",
        TINY,
        "--topology",
        "v5litepod-4",
        "--config.mesh.fsdp=4",
        cwd=home / "work",
        home=home,
        ALLOW_MULTIPLE_LIBTPU_LOAD=1,
        JAX_COMPILATION_CACHE_DIR="",
        BLT_JAX_COMPILATION_CACHE="xla_cache",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["devices"] == 4 and report["largest_buffers"][0]["bytes"] > 0
    assert not list((home / "work").rglob("*memory-usage-report*"))  # XLA's dumps went to a temporary directory
    # The TPU program is not kept: this host could not load it back, and every later run would warn
    # that it failed to read it.
    kept = os.listdir(home / "work" / "xla_cache")
    assert kept and not [name for name in kept if name.startswith("jit_train_step")], kept
    for noise in TPU_NOISE:
        assert noise not in result.stderr, result.stderr[-3000:]


def test_compiled_programs_are_kept_between_runs(tmp_path):
    """`blt-jax` keeps XLA programs in ~/.cache/blt_jax/xla: the second run of a command reads them
    (nothing is compiled again) and prints the same."""
    home, work = tmp_path / "home", tmp_path / "home" / "work"
    work.mkdir(parents=True)
    # As a user's shell has it: no cache setting (the suite's shared cache is removed); every program
    # kept however fast it compiled.
    env = dict(JAX_COMPILATION_CACHE_DIR="", XDG_CACHE_HOME="", JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0)

    def smoke():
        result = blt_jax("smoke", "--config", TINY, cwd=work, home=home, **env)
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout.split("; total")[0]  # what the run computed (its timing aside)

    first = smoke()
    kept = home / ".cache" / "blt_jax" / "xla"
    programs = sorted(os.listdir(kept))
    assert any(name.startswith("jit_") for name in programs), programs
    assert smoke() == first
    assert sorted(os.listdir(kept)) == programs  # read, nothing compiled again


# Where the CLI's start-up puts the cache, for one environment (printed by a fresh process).
_CACHE_DIR = (
    "from blt_jax.cli import process; process.compilation_cache(); import jax; "
    "print(jax.config.jax_compilation_cache_dir)"
)


@pytest.mark.parametrize(
    "setting,expected",
    [
        ({}, "{home}/.cache/blt_jax/xla"),
        ({"XDG_CACHE_HOME": "{home}/xdg"}, "{home}/xdg/blt_jax/xla"),
        ({"BLT_JAX_COMPILATION_CACHE": "xla_cache"}, "{home}/work/xla_cache"),
        ({"BLT_JAX_COMPILATION_CACHE": "~/xla"}, "{home}/xla"),
        ({"BLT_JAX_COMPILATION_CACHE": "gs://bucket/xla"}, "gs://bucket/xla"),
        ({"BLT_JAX_COMPILATION_CACHE": "off"}, ""),  # left unset
        ({"BLT_JAX_COMPILATION_CACHE": "xla_cache", "JAX_COMPILATION_CACHE_DIR": "/elsewhere"}, "/elsewhere"),
    ],
)
def test_where_compiled_programs_are_kept(tmp_path, setting, expected):
    home = tmp_path / "home"
    (home / "work").mkdir(parents=True)
    env = user_env(home, JAX_COMPILATION_CACHE_DIR="", XDG_CACHE_HOME="")
    env.update({k: v.format(home=home) for k, v in setting.items()})
    result = subprocess.run(
        [sys.executable, "-c", _CACHE_DIR], cwd=home / "work", env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == expected.format(home=home)
