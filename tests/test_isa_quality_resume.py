"""bench/isa_quality.py's worker keeps each finished prompt and window (an emulated AVX2 job takes
hours), so a killed run resumes where it stopped: nothing recomputed, nothing lost."""
import json

from bench.isa_quality import compute


def test_a_killed_job_resumes_from_its_last_prompt(tiny_package, tmp_path):
    job = {"package": str(tiny_package), "threads": 1, "new_tokens": 4,
           "prompts": [[1, 2, 3], [4, 5, 6], [7, 8, 9]], "windows": [[1, 2, 3, 4, 5, 6]]}
    whole = compute(job, tmp_path / "fresh.partial.json")
    saved = json.loads((tmp_path / "fresh.partial.json").read_text())
    assert saved == {"tokens": whole["tokens"], "nll": whole["nll"]}        # every prompt and window kept
    # a run killed after its first prompt: that prompt's result is read back, not recomputed
    partial = tmp_path / "killed.partial.json"
    marker = [-1, -1, -1, -1]
    partial.write_text(json.dumps({"tokens": [marker], "nll": []}))
    resumed = compute(job, partial)
    assert resumed["tokens"] == [marker] + whole["tokens"][1:]
    assert resumed["nll"] == whole["nll"] and resumed["capital"] == whole["capital"]
