"""`blt-jax byteify` end to end, as a user runs it (release tier: about 8 minutes on 2 cores).

A Llama (grouped-query attention, a head width other than D / H, Llama 3's RoPE scaling, tied
embeddings) is trained here with torch on half of Python's standard library, with a byte-level BPE
tokenizer, and saved with `save_pretrained`: a teacher with real knowledge, no download. It is
byteified on the other half from a fresh directory with relative paths, killed with SIGKILL in stage
1 and resumed by the same command; the byteified BLT beats the same BLT trained from scratch on the
held-out text, and its run is one that `eval`, `generate`, `export` and `lm-eval` take.
"""

import json
import os
import signal
import time

import pytest
import teachers
from user import TPU_NOISE, blt_jax, start

# The teacher: ten times the bytes the byteification trains on, a latent much larger than the byte
# stacks (as in the paper's 8B from Llama 3.1 and in Bolmo).
TEACHER = dict(hidden=96, heads=6, kv_heads=2, head_dim=16, ffn=256, layers=4)
TEACHER_STEPS = 1000
BYTEIFY = [
    "--scale",
    "tiny",
    "--config.stage1.steps=600",
    "--config.stage2.steps=600",
    "--config.entropy.steps=600",
    "--config.data.validation_bytes=20000",
    "--no-progress",
]


@pytest.mark.long
def test_byteify_a_trained_llama_resume_it_and_use_the_result(tmp_path):
    import torch

    torch.set_num_threads(2)
    from blt_jax.data.split import split_corpus

    work = tmp_path / "work"
    teachers.stdlib_corpus(work / "corpus", 400_000, part=1)
    # The teacher reads the other half of the library and the byteification's training text (split
    # here as byteify will split it), never its held-out documents.
    split_corpus(str(work / "corpus"), str(tmp_path / "seen"), str(tmp_path / "held"), 10**9, 20_000)
    seen = [p.read_bytes() for p in sorted((tmp_path / "seen").iterdir())]
    documents = teachers.stdlib_corpus(tmp_path / "teacher_text", 3_000_000, part=0) + seen
    teachers.train_llama(work / "llama", documents, vocab_size=512, steps=TEACHER_STEPS, **TEACHER)
    command = ["byteify", "--teacher", "llama", "--corpus", "corpus", "--workdir", "out", *BYTEIFY]

    proc = start(*command, cwd=work)
    checkpoints = work / "out" / "stage1" / "checkpoints"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if checkpoints.exists() and any(p.name.isdigit() for p in checkpoints.iterdir()):
            break
        time.sleep(0.5)
    # Orbax writes a step under a temporary name and renames it once complete: a step directory is a
    # committed checkpoint, so the kill can follow at once.
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    done = blt_jax(*command, cwd=work, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "teacher: done earlier" in done.stdout and "resumed from step" in done.stderr, (
        done.stdout,
        done.stderr[-2000:],
    )
    assert not any(noise in done.stderr for noise in TPU_NOISE)
    report = json.loads((work / "out" / "report.json").read_text())
    print(json.dumps(report))  # the figures, with -rP
    stages = {row["stage"]: row for row in report["stages"]}
    assert set(stages) == {1, 2} and report["final_run"] == str(work / "out" / "stage2")
    for row in [*stages.values(), report["baseline"]]:
        assert row["steps"] > 0 and row["bytes"] > 0 and row["train_flops"] > 0 and row["wall_seconds"] > 0
    assert report["baseline"]["steps"] == stages[1]["steps"] + stages[2]["steps"]
    assert 0 < report["teacher_bpb"] < 8 and report["bytes_per_token"] > 1.5
    # The point of it: the teacher's blocks carry what the same BLT from scratch has not learned.
    assert stages[2]["val_bpb"] < report["baseline_bpb"], report
    assert (work / "out" / "report.md").exists()

    # The result is an ordinary run.
    evaluated = blt_jax("eval", "--checkpoint", "out/stage2", "--data", "out/entropies/validation", cwd=work)
    assert evaluated.returncode == 0 and "bits per byte" in evaluated.stdout, evaluated.stderr[-2000:]
    generated = blt_jax(
        "generate",
        "--checkpoint",
        "out/stage2",
        "--prompt",
        "def ",
        "--max-new-bytes",
        "24",
        "--temperature",
        "0",
        cwd=work,
    )
    assert generated.returncode == 0 and generated.stdout.strip(), generated.stderr[-2000:]
    exported = blt_jax("export", "out/stage2", "exported", cwd=work)
    assert exported.returncode == 0 and (work / "exported" / "blt_jax.json").exists(), exported.stderr[-2000:]
    words = (
        "import return lambda class yield assert break while raise except global finally continue nonlocal "
        "string object number values buffer result parser module socket thread"
    )
    (work / "words.txt").write_text("\n".join(words.split()))
    made = blt_jax("make-tasks", "cute", "tasks", "--words", "words.txt", "--n", "4", "--kinds", "spelling", cwd=work)
    assert made.returncode == 0, made.stderr[-2000:]
    scored = blt_jax(
        "lm-eval",
        "--checkpoint",
        "exported",
        "--tasks",
        "cute_spelling",
        "--include-path",
        "tasks",
        "--limit",
        "4",
        "--no-progress",
        cwd=work,
    )
    assert scored.returncode == 0 and "cute_spelling" in scored.stdout, scored.stderr[-2000:]
    assert os.listdir(work / "out" / "baseline" / "checkpoints")
