"""End to end on a tiny random student: recorded PaLM rationales → train → eval → export → runtime answer.
"""
import argparse
import json
from pathlib import Path

import pytest
import torch

from slm.distill.cli import register
from slm.distill.evaluate import evaluate_checkpoint, generate_answers, score
from slm.distill.multitask import PREDICT, prompt
from slm.distill.student import load_causal_lm
from slm.distill.tasks import get_task
from slm.distill.testing import save_tiny_student


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="slm distill")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("distill_e2e")
    student = save_tiny_student(root / "student")
    store = root / "palm.jsonl"
    assert _cli("rationales", "--task", "svamp", "--teacher", "recorded", "--out", str(store)) == 0
    out = root / "student-dss"
    assert _cli("train", "--task", "svamp", "--student", str(student), "--rationales", str(store),
                "--out", str(out), "--train-fraction", "0.02", "--steps", "4", "--batch-size", "4",
                "--max-len", "128", "--lr", "3e-3", "--eval-limit", "2", "--max-new-tokens", "8") == 0
    return root, out


def test_cli_pipeline_writes_a_checkpoint_and_scores_it(trained, capsys):
    root, out = trained
    record = json.loads((out / "training_record.json").read_text())
    assert record["steps"] == 4 and record["rationale_examples"] > 0
    assert record["student_source"]["kind"] == "hf"           # read by `slm export` (int8 default for GGUF students)
    predictions = root / "predictions.jsonl"
    assert _cli("eval", "--task", "svamp", "--model", str(out), "--limit", "3", "--max-new-tokens", "8",
                "--predictions", str(predictions)) == 0
    assert "svamp: accuracy" in capsys.readouterr().out
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["test-0", "test-1", "test-2"]
    result = evaluate_checkpoint(out, get_task("svamp"), limit=3, max_new_tokens=8)
    assert result.total == 3 and [p.output for p in result.predictions] == [r["output"] for r in rows]


def test_local_teacher_through_the_same_pipeline(trained):
    from slm.distill.rationales import generate_rationales
    from slm.distill.teachers import LocalTeacher

    root, _ = trained
    teacher = LocalTeacher.from_source(root / "student", max_new_tokens=8, batch_size=2)
    run = generate_rationales(get_task("svamp"), "test", teacher, root / "local.jsonl", limit=3)
    assert run.asked == 3 and run.store.kept + sum(run.store.rejected.values()) == 3  # a random model: rejected
    assert teacher.id == "local:student" and teacher.prompt_version(get_task("svamp")) == "svamp-cot-v1"


def test_student_answers_the_same_through_the_runtime(trained):
    from slm import export
    from slm import runtime

    root, out = trained
    package = root / "package"
    export.build_package(str(out), package, quant="fp32")  # fp32: the same numbers as PyTorch
    engine = runtime.Engine(package)
    task = get_task("svamp")
    examples = task.load("test")[:4]
    model, tokenizer = load_causal_lm(out)
    expected = generate_answers(model, tokenizer, [e.input for e in examples], max_new_tokens=8)
    served = ["".join(event.text for event in engine.generate(prompt(PREDICT, e.input), raw=True, max_tokens=8))
              for e in examples]
    assert any(text.strip() for text in expected), "the student must say something for the check to mean anything"
    assert served == expected
    assert score(task, examples, served).counts() == score(task, examples, expected).counts()
    # `slm distill eval` on the package scores through the Engine, the same as on the checkpoint
    from slm.distill.evaluate import evaluate_checkpoint
    via_engine = evaluate_checkpoint(package, task, "test", limit=4, max_new_tokens=8)
    assert [p.output for p in via_engine.predictions] == expected
    # few-shot (the untrained student's row of the table): solved train inputs before each prompt, the first
    # line scored; the same through the Engine as through PyTorch
    from slm.distill.evaluate import few_shot_prefix, first_line
    shots = task.load("train")[:2]
    prefix = few_shot_prefix(shots)
    assert prefix == "".join(f"predict: {s.input}\n{s.label}\n\n" for s in shots)
    raw = generate_answers(model, tokenizer, [e.input for e in examples], max_new_tokens=8, prefix=prefix)
    assert raw != expected                                   # the shots reach the model
    torch_shot = evaluate_checkpoint(out, task, "test", limit=4, max_new_tokens=8, few_shot=2)
    engine_shot = evaluate_checkpoint(package, task, "test", limit=4, max_new_tokens=8, few_shot=2)
    assert [p.output for p in torch_shot.predictions] == [first_line(o) for o in raw]
    assert [p.output for p in engine_shot.predictions] == [p.output for p in torch_shot.predictions]


def test_convergence_bench_scores_a_cell_through_its_packages(trained, tmp_path):
    """bench/distill_convergence.py packages: a trained cell exported (fp32 here) and scored through the
    Engine; the table puts it beside PyTorch's predictions, which an fp32 package reproduces exactly."""
    import shutil
    import subprocess
    import sys

    root, out = trained
    cell = tmp_path / "conv" / "standard-s0"
    shutil.copytree(out, cell)
    assert _cli("eval", "--task", "svamp", "--model", str(cell), "--limit", "3", "--max-new-tokens", "8",
                "--predictions", str(cell / "test.pred.jsonl")) == 0
    bench = Path(__file__).resolve().parents[1] / "bench" / "distill_convergence.py"
    done = subprocess.run([sys.executable, str(bench), "packages", "--task", "svamp", "--out", str(tmp_path / "conv"),
                           "--quants", "fp32", "--max-new-tokens", "8", "--test-limit", "3"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "standard-s0: the same student through each package" in done.stdout
    assert "| Engine, `--quant fp32` package |" in done.stdout and "| 3/3 |" in done.stdout, done.stdout
    assert (cell / "pkg-fp32.pred.jsonl").is_file()


def test_convergence_table_pairs_each_arm_with_standard_and_the_untrained_student(tmp_path):
    """bench/distill_convergence.py table on written records: per-seed accuracies and their mean, the paired
    differences (seeds averaged per input) against standard, between teachers and against the untrained student,
    the plot."""
    import subprocess
    import sys

    ids = [f"q{i}" for i in range(10)]
    def cell(name, right, best_step=20):
        (tmp_path / name).mkdir()
        (tmp_path / name / "test.pred.jsonl").write_text("".join(
            json.dumps({"id": i, "correct": i in right, "output": "x"}) + "\n" for i in ids))
        if name != "untrained":
            curve = [{"step": 10, "accuracy": 0.2, "loss": 1.0}, {"step": 20, "accuracy": 0.4, "loss": 0.8}]
            history = [{"step": s, "loss": 1 / s, "label_loss": 1 / s, "rationale_loss": 0.0, "lr": 1e-4} for s in (10, 20)]
            (tmp_path / name / "training_record.json").write_text(json.dumps(
                {"validation": curve, "history": history, "best_step": best_step, "steps": 40, "stopped": "plateau"}))
    cell("untrained", {"q0"})
    cell("standard-s0", {"q0", "q1", "q2", "q3"})                      # 40%
    cell("step-by-step-t-s0", {"q0", "q1", "q2", "q3", "q4", "q5"})    # 60%
    cell("step-by-step-t-s1", {"q0", "q1", "q2", "q3"})                # 40%: mean 50%, +1 of 10 per input on average
    cell("step-by-step-u-s0", {"q0", "q1"})                            # 20%: another teacher's rationales
    bench = Path(__file__).resolve().parents[1] / "bench" / "distill_convergence.py"
    done = subprocess.run([sys.executable, str(bench), "table", "--task", "svamp", "--out", str(tmp_path),
                           "--plot", str(tmp_path / "curves.png")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert "| student before training (few-shot) | — | 10.0% | — |" in out
    assert "| step-by-step, t | 60.0% / 40.0% | 50.0% |" in out and "| standard | 40.0% | 40.0% |" in out
    assert "the paper's T5-Base margin: +2.9" in out and "| t | +10.0 [" in out, out
    assert "| standard | +30.0 [" in out and "| step-by-step, t | +40.0 [" in out, out
    assert "| t − u | +30.0 [" in out and "| u | -20.0 [" in out, out                # teacher against teacher, paired
    assert (tmp_path / "curves.png").stat().st_size > 1000


def test_few_shot_answer_is_its_first_line():
    from slm.distill.evaluate import first_line
    assert first_line("( 3.0 + 4.0 )\n\npredict: Tom has") == "( 3.0 + 4.0 )"
    assert first_line("\n( 3.0 + 4.0 )\npredict:") == "( 3.0 + 4.0 )"
    assert first_line("") == "" and first_line("42") == "42"
