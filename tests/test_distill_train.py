"""Student training on a tiny random Llama: both losses fall, lam=0 is standard fine-tuning, resume after a kill."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from slm.distill.rationales import generate_rationales
from slm.distill.tasks import get_task
from slm.distill.teachers import RecordedTeacher
from slm.distill.testing import save_tiny_student
from slm.distill.train import TrainConfig, train
from slm.core.errors import SlmError
from tests.killing import kill_mid_run

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("distill_train")
    student = save_tiny_student(root / "student")
    task = get_task("svamp")
    generate_rationales(task, "train", RecordedTeacher.for_split(task, "train"), root / "palm.jsonl")
    base = TrainConfig(student=str(student), task="svamp", out=str(root / "out"), rationales=str(root / "palm.jsonl"),
                       train_fraction=0.04, steps=16, batch_size=4, lr=3e-3, max_len=128, log_every=1, eval_limit=4,
                       max_new_tokens=8, seed=0)
    return root, base


def test_multitask_loss_lowers_both_losses(setup):
    root, base = setup
    record = train(replace(base, out=str(root / "dss")))
    first, last = record.history[:3], record.history[-3:]
    mean = lambda rows, k: sum(r[k] for r in rows) / len(rows)
    assert mean(last, "label_loss") < 0.7 * mean(first, "label_loss")
    assert mean(last, "rationale_loss") < 0.7 * mean(first, "rationale_loss")
    assert all(abs(r["loss"] - (r["label_loss"] + r["rationale_loss"])) < 1e-4 for r in record.history)
    assert record.train_inputs == 32 and record.label_examples == 32
    without = record.left_out.get("label_only_no_kept_rationale", 0) + record.left_out.get("rationale_too_long", 0)
    assert record.rationale_examples + without == 32 and record.rationale_examples > 20
    out = root / "dss"
    saved = json.loads((out / "training_record.json").read_text())
    assert saved["format_version"] == 1 and saved["final_eval"]["total"] == 4
    assert TrainConfig.load(out / "train_config.json") == replace(base, out=str(out))
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    assert not (out / "resume").exists()


def test_train_limit_trains_the_inputs_a_teacher_store_covers(setup):
    root, base = setup
    rows = (root / "palm.jsonl").read_text().splitlines()
    covered = root / "first12.jsonl"                    # a teacher that reached the 12th input of the split
    covered.write_text("\n".join(rows[:12]) + "\n")
    kept = sum(json.loads(r)["status"] == "kept" for r in rows[:12])
    record = train(replace(base, out=str(root / "limited"), rationales=str(covered), train_fraction=1.0,
                           train_limit=12, steps=2, eval_limit=1))
    assert record.train_inputs == 12 and record.label_examples == 12
    assert record.left_out.get("label_only_no_kept_rationale", 0) == 12 - kept   # none outside the store's inputs
    with pytest.raises(SlmError, match="train_limit must be at least 1"):
        replace(base, train_limit=0)


def test_lam_zero_is_standard_fine_tuning(setup):
    root, base = setup
    standard = train(replace(base, out=str(root / "std"), rationales=None, steps=6, eval_limit=1))
    lam0 = train(replace(base, out=str(root / "lam0"), lam=0.0, steps=6, eval_limit=1))
    assert standard.rationale_examples == 0 and all(r["rationale_loss"] == 0 for r in standard.history)
    assert [r["label_loss"] for r in lam0.history] == pytest.approx([r["label_loss"] for r in standard.history])


def test_a_partial_last_rationale_line_is_counted_in_left_out(setup):
    root, base = setup
    partial = root / "partial.jsonl"
    partial.write_text(Path(base.rationales).read_text() + '{"id": "train-999", "task": "sva')   # a killed write
    record = train(replace(base, out=str(root / "partial"), rationales=str(partial), steps=1, eval_limit=1,
                           max_new_tokens=1))
    assert record.left_out["partial_last_line"] == 1
    assert "partial_last_line" not in train(replace(base, out=str(root / "whole"), steps=1, eval_limit=1,
                                                    max_new_tokens=1)).left_out


def test_config_errors_name_the_value(setup):
    _, base = setup
    with pytest.raises(SlmError, match="unknown label source 'gpt'; accepted: gold, teacher"):
        replace(base, label_source="gpt")
    with pytest.raises(SlmError, match="unknown mixed precision 'fp8'"):
        replace(base, mixed_precision="fp8")
    with pytest.raises(SlmError, match="model source ./nonexistent. does not exist"):
        train(replace(base, student="/nonexistent"))


def test_resume_after_sigkill_matches_an_uninterrupted_run(setup):
    root, base = setup
    out = root / "killed"
    cmd = [sys.executable, "-m", "slm.distill", "train", "--task", "svamp", "--student", base.student,
           "--rationales", base.rationales, "--out", str(out), "--train-fraction", "0.04", "--steps", "8",
           "--batch-size", "4", "--max-len", "128", "--grad-accum", "2", "--lr", "3e-3", "--log-every", "1",
           "--save-every", "2",
           "--eval-limit", "2", "--max-new-tokens", "4"]
    env = os.environ | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    progress = out / "resume" / "progress.json"
    kill_mid_run(cmd, cwd=REPO, env=env, reached=lambda: json.loads(progress.read_text())["step"] >= 2,
                 finished=(out / "training_record.json").exists, reset=lambda: shutil.rmtree(out))
    killed_at = json.loads(progress.read_text())["step"]
    assert 2 <= killed_at < 8 and not (out / "training_record.json").exists()

    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    resumed = json.loads((out / "training_record.json").read_text())
    assert resumed["resumed_from_step"] == killed_at and resumed["steps"] == 8

    straight = train(replace(base, out=str(root / "straight"), steps=8, grad_accum=2, eval_limit=2,
                             max_new_tokens=4))
    assert [r["step"] for r in resumed["history"]] == list(range(1, 9))
    assert [r["loss"] for r in resumed["history"]] == pytest.approx([r["loss"] for r in straight.history], rel=1e-3)


def test_target_loss_equals_the_full_loss():
    from slm.distill.multitask import pad, target_loss
    from tests.conftest import tiny_gemma3, tiny_llama

    batch = pad([([5, 6, 7, 8, 9, 10], [-100, -100, -100, 8, 9, 10]), ([11, 12, 13], [-100, 12, 13])], 0)
    for model in (tiny_llama(), tiny_gemma3()):       # Gemma: with its final logit soft-capping
        assert target_loss(model, batch).item() == pytest.approx(model(**batch).loss.item(), rel=1e-5)


def test_length_grouped_batches_cover_each_input_once_per_epoch():
    from slm.distill.multitask import LengthGroupedBatches

    lengths = [(i * 37) % 101 for i in range(203)]
    sampler = LengthGroupedBatches(lengths, 8, seed=3, pool=4)
    first = list(sampler)
    assert sorted(i for b in first for i in b) == list(range(203)) and len(first) == len(sampler) == 26
    assert list(sampler) == first                       # deterministic: a resumed run skips the same batches
    sampler.set_epoch(1)
    assert list(sampler) != first
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in first) / len(first)
    assert spread < 30                                  # a shuffled batch of 8 spans ~80 of 0..100


def test_a_store_without_kept_rationales_is_an_error_up_front(setup, tmp_path, caplog):
    root, base = setup
    empty = tmp_path / "none.jsonl"
    empty.write_text("")
    with pytest.raises(SlmError, match="needs rationales, but .*none.jsonl: it has no kept rationale at all, so all "
                                       "32 training inputs would train the label task only.*--allow-label-only"):
        train(replace(base, rationales=str(empty), student="/nonexistent-never-loaded"))
    with caplog.at_level("WARNING", logger="slm.distill"):
        record = train(replace(base, rationales=str(empty), allow_label_only=True, out=str(tmp_path / "lo"), steps=1,
                               eval_limit=1))
    assert record.rationale_examples == 0 and "32 of 32 training inputs have no kept rationale" in caplog.text


def test_validation_plateau_stops_and_keeps_the_best_weights(setup, tmp_path):
    root, base = setup
    record = train(replace(base, out=str(tmp_path / "p"), steps=400, lr=3e-2, val_size=6, eval_every=2, patience=2,
                           eval_limit=2, log_every=2))
    curve = record.validation
    assert record.stopped == "plateau" and record.steps < 400 and record.steps == curve[-1]["step"]
    assert record.train_inputs == 26                    # 32 selected, 6 held out
    best = max(curve, key=lambda p: (p["accuracy"], -p["loss"]))
    assert record.best_step == best["step"] < record.steps
    assert sum(p["step"] > record.best_step for p in curve) == 2   # patience 2: two evaluations without improvement
    from slm.distill.student import load_causal_lm
    from slm.distill.train import validation_loss
    from slm.distill import multitask
    model, tokenizer = load_causal_lm(tmp_path / "p")   # the written weights are the best step's, not the last
    val = multitask.select(get_task("svamp").load("train"), base.train_fraction, base.seed)[:6]
    encoded, _ = multitask.encode_items(tokenizer, multitask.build_items(val, None, label_source="gold")[0], 128)
    assert validation_loss(model, encoded, tokenizer.pad_token_id) == pytest.approx(best["loss"], abs=1e-4)
    assert not (tmp_path / "p" / "best").exists()


def test_sigterm_saves_a_checkpoint_and_the_run_resumes(setup):
    root, base = setup
    out = root / "termed"
    def cmd(steps):
        return [sys.executable, "-m", "slm.distill", "train", "--task", "svamp", "--student", base.student,
                "--rationales", base.rationales, "--out", str(out), "--train-fraction", "0.04", "--steps", str(steps),
                "--batch-size", "4", "--max-len", "128", "--lr", "3e-3", "--log-every", "1", "--eval-limit", "1",
                "--max-new-tokens", "2"]
    env = os.environ | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd(400), cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:                            # wait for a step to be logged, then SIGTERM
        if line.startswith('{"step": 2,'):
            proc.send_signal(signal.SIGTERM)
            break
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "stopped by SIGTERM at step" in err, err[-1000:]
    saved = json.loads((out / "resume" / "progress.json").read_text())["step"]
    assert 2 <= saved < 400 and [r["step"] for r in json.loads((out / "resume" / "progress.json").read_text())
                                 ["history"]] == list(range(1, saved + 1))
    done = subprocess.run(cmd(saved + 2), cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads((out / "training_record.json").read_text())
    assert record["resumed_from_step"] == saved and [r["step"] for r in record["history"]] == list(range(1, saved + 3))
