"""The user path of docs/DISTILL.md, every stage a real process, as a user types it:

    JSONL domain data ─► `slm serve` (a real instruct model, on 127.0.0.1) ─► `slm distill rationales`
    ─► store ─► `slm distill train` ─► `slm distill eval` ─► `slm export` ─► `slm generate --model` answers

The teacher is the embedded SmolLM2-135M-Instruct package (int4, so its words differ between CPUs:
the checks are on counts and formats, never on its text); the student is a tiny random Llama,
exported at fp32, so the runtime must answer exactly as `slm distill eval` did.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from slm.distill.testing import save_tiny_student

REPO = Path(__file__).resolve().parents[1]
SLM = [sys.executable, "-c", "import sys; from slm.cli.main import main; sys.exit(main())"]
CAPITALS = [("France", "Paris"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Japan", "Tokyo"), ("Peru", "Lima"),
            ("Egypt", "Cairo"), ("Kenya", "Nairobi"), ("Norway", "Oslo"), ("Chile", "Santiago"), ("Cuba", "Havana")]
ENV = os.environ | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def slm(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    done = subprocess.run(SLM + list(args), cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"slm {' '.join(args)}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    return done


@pytest.fixture(scope="module")
def teacher_url(default_gguf_package):
    """`slm serve` as a user starts it, on a free loopback port, under a name of its own (clients asking for
    any other model get 404); the URL from its first line."""
    proc = subprocess.Popen(SLM + ["serve", "--model", str(default_gguf_package), "--port", "0", "--threads", "1",
                                   "--served-model-name", "domain-teacher"],
                            cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        for line in proc.stdout:
            if "serving" in line:
                assert "'domain-teacher'" in line, line
                yield line.split(" at ")[1].split()[0], "domain-teacher"
                break
        else:
            pytest.fail(f"slm serve exited with {proc.wait()} before serving")
    finally:
        proc.terminate()
        proc.wait(timeout=60)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("domain")
    rows = [{"input": f"What is the capital of {country}?", "label": city} for country, city in CAPITALS]
    for row, (country, city) in zip(rows[:2], CAPITALS):   # two worked examples: the teacher's few-shot turns
        row["rationale"] = f"The government of {country} sits in its capital city, {city}."
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:8]))
    (folder / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[8:]))
    (folder / "instruction.txt").write_text("Name the capital city of the country.")
    return folder


def test_jsonl_data_to_a_live_teacher_to_a_student_that_answers(teacher_url, data, tmp_path):
    url, model = teacher_url
    teacher = ["--task", "jsonl", "--data", str(data), "--teacher", "openai", "--endpoint", "chat",
               "--base-url", url, "--model", model, "--max-new-tokens", "64", "--concurrency", "2"]

    shown = slm("distill", "rationales", *teacher, "--show", "2")
    assert shown.stdout.count("--- reply") == 2 and "dry run: nothing stored" in shown.stdout

    store = tmp_path / "rationales.jsonl"
    run = slm("distill", "rationales", *teacher, "--out", str(store))
    records = [json.loads(line) for line in store.read_text().splitlines()]
    assert sorted(r["id"] for r in records) == [f"train-{i}" for i in range(8)]        # each input once
    kept = [r for r in records if r["status"] == "kept"]
    assert f"kept {len(kept)} / rejected {8 - len(kept)}" in run.stdout
    assert len(kept) >= 4, [r["completion"] for r in records]   # the instruct model follows the JSON format
    assert all(r["completion"] and r["prompt_version"] == "jsonl-cot-v1/chat-json-v1" for r in records)
    # today's `slm serve` refuses response_format: the run says so once and goes on with the same messages
    refused = "does not take response_format (HTTP 400" in run.stderr
    assert refused or all(r["detail"] == "format: json" for r in kept)
    assert run.stderr.count("does not take response_format") == int(refused)

    student, out = save_tiny_student(tmp_path / "student"), tmp_path / "student-dss"
    slm("distill", "train", "--task", "jsonl", "--data", str(data), "--student", str(student), "--rationales",
        str(store), "--out", str(out), "--steps", "3", "--batch-size", "4", "--max-len", "160", "--lr", "3e-3",
        "--eval-limit", "2", "--max-new-tokens", "6")
    trained = json.loads((out / "training_record.json").read_text())
    assert trained["rationale_examples"] + trained["left_out"].get("rationale_too_long", 0) == len(kept)

    predictions = tmp_path / "predictions.jsonl"
    scored = slm("distill", "eval", "--task", "jsonl", "--data", str(data), "--model", str(out),
                 "--max-new-tokens", "6", "--predictions", str(predictions))
    assert "jsonl: accuracy" in scored.stdout and "/2)" in scored.stdout
    first = json.loads(predictions.read_text().splitlines()[0])

    package = tmp_path / "package"
    slm("export", str(out), str(package), "--quant", "fp32", "--no-attention-stats")
    answer = slm("generate", "--model", str(package), "--raw", "--temperature", "0", "--max-tokens", "6",
                 "predict: What is the capital of Chile?\n")
    assert first["output"], "the student must say something for the comparison to mean anything"
    assert answer.stdout == first["output"] + "\n"          # the runtime answers as PyTorch did (fp32)
