"""The package's structure: its layers (`.importlinter`: no module imports one above its layer, no import
cycle) and functions short enough to read.

Order, top to bottom: cli, study | byteify, quickstart | evals, api | aot | stages, train | inference, loading,
experiment | checkpoint, convert, data, patching, params | parallel, models, nn | metrics, presets,
config | tokenizer | paths, errors. A second contract forbids cycles between sibling modules at every depth.
"""

import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINT = os.path.join(os.path.dirname(sys.executable), "lint-imports")


def _lint(root: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=root)  # the package under `root`, not the installed one
    return subprocess.run(
        [LINT, "--config", os.path.join(root, ".importlinter"), "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_layer_contracts_hold():
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "2 kept, 0 broken" in result.stdout


def test_an_upward_import_and_a_cycle_are_caught(tmp_path):
    """The contracts are not vacuous: nn importing the train loop, and a cycle inside nn, both fail."""
    shutil.copytree(os.path.join(ROOT, "blt_jax"), tmp_path / "blt_jax")
    shutil.copy(os.path.join(ROOT, ".importlinter"), tmp_path / ".importlinter")
    with open(tmp_path / "blt_jax" / "nn" / "axes.py", "a") as f:
        f.write("\nimport blt_jax.train.loop  # upward\n")
    with open(tmp_path / "blt_jax" / "nn" / "masks.py", "a") as f:
        f.write("\nimport blt_jax.nn.attention  # a cycle: attention imports masks\n")
    result = _lint(str(tmp_path))
    assert result.returncode != 0
    assert "blt_jax.nn is not allowed to import blt_jax.train" in result.stdout, result.stdout[-4000:]
    assert ".masks -> .attention" in result.stdout, result.stdout[-4000:]


def test_importing_the_package_stays_light():
    """`import blt_jax` (the API: from_pretrained, BLTModel) loads neither the training stack's data
    pipeline (grain) nor Orbax: asking for a model must not pay for them (about 0.5 s)."""
    code = "import sys, blt_jax; print(sorted({m.split('.')[0] for m in sys.modules} & {'grain', 'orbax'}))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHONPATH=ROOT)
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


MAX_FUNCTION_LINES = 100


def test_no_function_in_the_package_is_over_100_lines():
    """Long functions are cut into named steps (the structure a reader can follow); this keeps them so."""
    import ast
    import pathlib

    long = []
    for path in sorted(pathlib.Path(ROOT, "blt_jax").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "cut these into named steps: " + "; ".join(long)
