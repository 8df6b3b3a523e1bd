"""`slm eval longctx` on a real (tiny) package: cells in their own processes, results written as each
cell ends, and a run interrupted and started again with the same arguments does only what is left."""
from __future__ import annotations

import argparse
import json

from slm.evals.longctx import evaluate


def _args(package, out, budgets):
    p = argparse.ArgumentParser()
    evaluate.add_arguments(p)
    return p.parse_args(["--model", str(package), "--policies", "streaming", "--budgets", *map(str, budgets),
                         "--tasks", "niah_single", "--haystacks", "repeated", "--lengths", "96", "--samples", "1",
                         "--longeval", "--threads", "1", "--out", str(out)])


def test_an_interrupted_evaluation_resumes_and_another_run_is_kept(tiny_package, tmp_path, capsys):
    out = tmp_path / "eval"
    assert evaluate.run(_args(tiny_package, out, [0.5])) == 0
    first = json.loads((out / "results.json").read_text())
    assert [(c["policy"], c["budget"]) for c in first["cells"]] == [("full", 1.0), ("streaming", 0.5)]
    assert all(r["prompt_tokens"] > 0 and "score" in r for c in first["cells"] for r in c["rows"])
    assert (out / "table.md").is_file() and (out / "plot.png").is_file()

    # as if killed after those two cells: mark them, then ask for one budget more
    for c in first["cells"]:
        c["marker"] = "done before"
    (out / "results.json").write_text(json.dumps(first))
    assert evaluate.run(_args(tiny_package, out, [0.5, 0.25])) == 0
    second = json.loads((out / "results.json").read_text())
    assert [(c["policy"], c["budget"], c.get("marker")) for c in second["cells"]] == \
        [("full", 1.0, "done before"), ("streaming", 0.5, "done before"), ("streaming", 0.25, None)]
    assert "resuming" in capsys.readouterr().err

    # other arguments: a new run, and the old results are kept beside it, not overwritten
    args = _args(tiny_package, out, [0.5])
    args.samples = 2
    assert evaluate.run(args) == 0
    assert json.loads((out / "results.previous.json").read_text()) == second
    third = json.loads((out / "results.json").read_text())
    assert len(third["cells"]) == 2
    args.samples = 3                                    # and yet another: neither earlier run is overwritten
    assert evaluate.run(args) == 0
    assert json.loads((out / "results.previous.json").read_text()) == second
    assert json.loads((out / "results.previous-2.json").read_text()) == third


def test_namm_is_evaluated_by_default_only_with_a_scorer(tiny_package, tmp_path):
    import shutil

    from slm.evolve.cli import install
    from slm.evolve.priors import initial_vector
    from slm.evals.longctx.evaluate import default_policies
    assert "namm" not in default_policies(tiny_package) and "h2o" in default_policies(tiny_package)
    pkg = tmp_path / "with-scorer"
    shutil.copytree(tiny_package, pkg)
    install(pkg, initial_vector(0, "opening"), {})
    assert default_policies(pkg)[-1] == "namm"


def test_cases_longer_than_the_context_are_counted_in_the_table(tiny_package, tmp_path, capsys):
    args = _args(tiny_package, tmp_path / "eval", [0.5])
    args.lengths = [96, 2048]                           # the tiny model's context is 512 tokens
    assert evaluate.run(args) == 0
    cells = json.loads((tmp_path / "eval" / "results.json").read_text())["cells"]
    assert all([("score" in r, "skipped" in r) for r in c["rows"]] == [(True, False), (False, True)] for c in cells)
    table = (tmp_path / "eval" / "table.md").read_text()
    assert table.count("| 1 (1 skipped) |") == 2         # full cache and streaming: one scored, one left out
    assert "1 of 2 cases are left out of every mean: longer than the model's context" in table
    assert "over 1 cases, 1 skipped" in capsys.readouterr().err
