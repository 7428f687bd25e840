"""`blt-jax quickstart` end to end at the tiny scale: every artifact it promises, the BLT learning, the
baseline matching the BLT's compute, resumption, and clear errors for bad options."""

import json
import os
import struct

import pytest
from user import TPU_NOISE, blt_jax

from blt_jax import cli
from blt_jax.config import ConfigError
from blt_jax.quickstart import make_plan, open_plan, run_quickstart
from blt_jax.quickstart import plan as planning
from blt_jax.quickstart.stages import PROMPT, STAGES, Paths

UNTRAINED_BPB = 8.0  # log2(260) = 8.02 bits: a uniform guess over the vocabulary
# Forty tiny steps take the BLT from ~8.0 to ~5 bits per byte; demand at least 1.5 bits.
LEARNED_MARGIN = 1.5
TINY = ["--scale", "tiny", "--minutes", "0.01", "--no-progress"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The workdir of one quickstart run made by the README's command as printed (`blt-jax
    quickstart`, default relative workdir), from a fresh directory, shrunk by the documented
    BLT_JAX_QUICKSTART_PRESET=tiny."""
    cwd = tmp_path_factory.mktemp("fresh")
    result = blt_jax("quickstart", cwd=cwd, BLT_JAX_QUICKSTART_PRESET="tiny")
    assert result.returncode == 0, result.stderr[-3000:]
    for noise in (*TPU_NOISE, "Traceback"):
        assert noise not in result.stderr, result.stderr[-3000:]
    assert "total" in result.stdout  # the summary table
    workdir = str(cwd / "runs" / "quickstart")
    assert os.path.isdir(workdir)
    return workdir


def test_the_printed_command_run_again_skips_every_stage(run):
    cwd = os.path.dirname(os.path.dirname(run))
    result = blt_jax("quickstart", cwd=cwd, BLT_JAX_QUICKSTART_PRESET="tiny")
    assert result.returncode == 0, result.stderr[-3000:]
    for name, _ in STAGES:
        assert f"{name}: done earlier" in result.stdout, (name, result.stdout)


def _png_size(path: str) -> tuple[int, int]:
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def test_every_artifact_exists(run):
    paths = Paths(run)
    for name, _ in STAGES:
        assert os.path.exists(paths.stage(name)), f"stage {name} recorded no result"
    assert sorted(os.listdir(paths.corpus_train)) and sorted(os.listdir(paths.corpus_validation))
    for workdir in (paths.entropy_lm, paths.blt, paths.baseline):
        assert os.listdir(os.path.join(workdir, "checkpoints")), workdir
        assert os.path.getsize(os.path.join(workdir, "metrics.jsonl")) > 0
    for directory in (paths.entropies_train, paths.entropies_validation):
        manifest = json.load(open(os.path.join(directory, "manifest.json")))
        assert manifest["complete"] and manifest["counts"]["documents"] > 0
    for figure in (paths.loss_curves, paths.bpb_vs_flops, paths.entropy_figure):
        width, height = _png_size(figure)
        assert width >= 400 and height >= 200, (figure, width, height)
    sample = open(paths.sample, encoding="utf-8").read()
    assert sample.startswith(PROMPT) and len(sample) > len(PROMPT)
    summary = open(os.path.join(run, "summary.txt")).read()
    for name, _ in STAGES:
        assert name in summary
    assert len(json.load(open(os.path.join(run, "summary.json")))) == len(STAGES)


def test_blt_learns_and_calibration_hits_target(run):
    results = {r["name"]: r for r in json.load(open(os.path.join(run, "summary.json")))}
    assert results["blt"]["bpb"] < UNTRAINED_BPB - LEARNED_MARGIN, results["blt"]
    assert results["baseline"]["bpb"] < UNTRAINED_BPB - LEARNED_MARGIN, results["baseline"]
    assert results["entropy_lm"]["bpb"] < UNTRAINED_BPB - LEARNED_MARGIN, results["entropy_lm"]
    calibration = json.load(open(Paths(run).calibration))
    assert abs(calibration["achieved_mean"] - 4.5) < 0.25, calibration["achieved_mean"]
    # The BLT trains with the calibrated threshold.
    config = json.load(open(os.path.join(run, "blt", "config.json")))
    assert config["data"]["patching"]["mode"] == "entropy"
    assert config["data"]["patching"]["threshold"] == pytest.approx(calibration["threshold"])


def test_baseline_spends_the_blts_compute(run):
    results = {r["name"]: r for r in json.load(open(os.path.join(run, "summary.json")))}
    blt, base = results["blt"], results["baseline"]
    assert blt["bytes"] == base["bytes"]  # same rows, same steps
    ratio = base["detail"]["flops_per_byte"] / blt["detail"]["flops_per_byte"]
    assert 0.7 < ratio < 1.4, ratio  # the tiny scale has few shapes to choose from


def test_rerun_resumes_and_redoes_only_missing_stages(run, capsys):
    paths = Paths(run)
    before = json.load(open(os.path.join(run, "summary.json")))
    os.remove(paths.stage("plots"))
    os.remove(paths.loss_curves)
    results = run_quickstart(run, minutes=0.01, scale="tiny", progress=False)
    printed = capsys.readouterr().out
    for name in ("corpus", "entropy_lm", "entropy_pass", "calibrate", "blt", "baseline", "generate"):
        assert f"{name}: done earlier" in printed
    assert "plots: Loss curves" in printed
    assert os.path.exists(paths.loss_curves)
    assert [r.bpb for r in results] == [r["bpb"] for r in before]


def test_other_options_on_the_same_workdir_are_refused(run):
    with pytest.raises(ValueError, match="--minutes 0.01 --scale tiny"):
        open_plan(run, make_plan(5, "tiny"))


def test_baseline_matches_small_blt_flops():
    plan = make_plan(12, "small")
    blt = planning.blt_model_dict(plan, threshold=1.0)
    target = planning.model_flops_per_byte(blt, plan.spec.row_bytes, 4.5)
    base = planning.baseline_model_dict(plan, target)
    # Widths step by 32 (CPU-efficient heads), so the match is within ~10%, not exact.
    assert abs(planning.model_flops_per_byte(base, plan.spec.row_bytes) / target - 1) < 0.1


def test_plan_scales_with_minutes_and_validates():
    short, long = make_plan(6, "small"), make_plan(24, "small")
    assert long.blt_steps > 3 * short.blt_steps and long.entropy_steps > 3 * short.entropy_steps
    assert long.corpus_bytes >= long.blt_steps * long.bytes_per_step  # the BLT never re-reads its sample
    with pytest.raises(ConfigError, match="minutes"):
        make_plan(0)
    with pytest.raises(ConfigError, match="scale"):
        make_plan(5, "huge")
    with pytest.raises(ConfigError, match="target_patch_length"):
        make_plan(5, target_patch_length=1.0)


def test_cli_rejects_unknown_stage(tmp_path):
    with pytest.raises(ValueError, match="unknown stage 'bogus'"):
        run_quickstart(str(tmp_path / "w"), minutes=0.01, scale="tiny", progress=False, only=("bogus",))


def test_experiment_file_gives_the_runs_the_quickstart_trained(run):
    """`blt-jax train --config experiments/quickstart.py:<run>@<workdir>` repeats a stage by hand."""
    from blt_jax.experiment import load_experiment
    from blt_jax.experiment.config import experiment_from_dict, experiment_to_dict

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for name in ("entropy_lm", "blt", "baseline"):
        experiment = experiment_from_dict(
            load_experiment(os.path.join(root, "experiments", f"quickstart.py:{name}@{run}"))
        )
        trained = json.load(open(os.path.join(run, name, "config.json")))
        assert json.loads(json.dumps(experiment_to_dict(experiment))) == trained, name
    with pytest.raises(ValueError, match="unknown quickstart run"):
        load_experiment(os.path.join(root, "experiments", "quickstart.py:bogus"))


def test_readme_lm_eval_commands_on_the_quickstart_models(run):
    """The README's commands for its results table, as printed (relative paths, from the directory
    the quickstart ran in): a cloze task from the held-out corpus, then the BLT (its entropy LM found
    through its entropy pass) and the byte baseline, clean and noised."""
    cwd = os.path.dirname(os.path.dirname(run))
    result = blt_jax(
        "make-tasks",
        "cloze",
        "tasks",
        "--cut",
        "midline",
        "--corpus",
        "runs/quickstart/corpus/validation",
        "--n",
        "12",
        cwd=cwd,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for model, noise in (("blt", "none,drop"), ("baseline", "none")):
        result = blt_jax(
            "lm-eval",
            "--checkpoint",
            f"runs/quickstart/{model}",
            "--tasks",
            "cloze_midline",
            "--include-path",
            "tasks",
            "--noise",
            noise,
            "--output",
            f"{model}.json",
            "--no-progress",
            cwd=cwd,
        )
        assert result.returncode == 0, (model, result.stderr[-3000:])
        results = json.load(open(os.path.join(cwd, f"{model}.json")))["results"]
        names = ["cloze_midline"] + (["cloze_midline@drop"] if "drop" in noise else [])
        assert sorted(results) == names, results
        assert all(results[n]["acc,none"] in {k / 12 for k in range(13)} for n in names), results  # 12 items


def test_interrupted_stage_exits_130_with_how_to_resume(monkeypatch, tmp_path, capsys):
    import blt_jax.quickstart as quickstart
    from blt_jax.stages import StageInterrupted

    def stopped(*args, **kwargs):
        raise StageInterrupted("blt", "SIGINT", 17)

    monkeypatch.setattr(quickstart, "run_quickstart", stopped)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["quickstart", "--workdir", str(tmp_path / "w"), *TINY])
    assert exit_.value.code == 130
    assert "stage blt stopped by SIGINT at step 17" in capsys.readouterr().err
