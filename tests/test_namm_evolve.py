"""Evolving NAMM on a tiny model: a short seeded run beats its starting point, and a run killed
mid-way and started again finishes exactly as an uninterrupted one."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from slm.evolve.cma_es import EvolveConfig, evolve, load_checkpoint
from tests.killing import kill_mid_run

pytest.importorskip("cma")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(tasks=("niah_single", "variable_tracking"), haystacks=("repeated",), lengths=(128, 192), samples=1,
             popsize=6, sigma0=0.3, prior="", seed=0, workers=2, search="full", fitness="retention", per_generation=0)


def test_short_evolution_improves_over_the_initial_mean(tiny_package, tmp_path):
    state = evolve(EvolveConfig(package=str(tiny_package), budget=0.25, generations=6, **SMALL), tmp_path / "run",
                   log=lambda s: None)
    means = [row["mean_fitness"] for row in state["history"]]
    assert len(means) == 6 and state["generation"] == 6
    assert max(means[1:]) > means[0], means                 # the initial mean is generation 1's mean
    assert state["best_mean"][0] == max(means)              # and the best mean seen is the one kept
    lengths = sorted(len(p.prompt_ids) for p in state["probes"])      # one probe per (task, length)
    assert len(lengths) == 4 and lengths[0] < 160 < lengths[-1], lengths


def _cli(tiny_package, out, generations):
    return [sys.executable, "-m", "slm.evolve.cli", "--model", str(tiny_package), "--out", str(out), "--no-install",
            "--generations", str(generations), "--budget", "0.25", "--tasks", *SMALL["tasks"],
            "--haystacks", *SMALL["haystacks"], "--length", *map(str, SMALL["lengths"]), "--samples", str(SMALL["samples"]),
            "--popsize", str(SMALL["popsize"]), "--sigma0", str(SMALL["sigma0"]), "--prior", "", "--seed", "0"]


def test_resume_after_a_kill_continues_the_same_run(tiny_package, tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run(_cli(tiny_package, whole, 4), cwd=ROOT, check=True, capture_output=True)

    log = killed / "log.jsonl"
    kill_mid_run(_cli(tiny_package, killed, 4), cwd=ROOT, reached=lambda: len(log.read_text().splitlines()) >= 2,
                 finished=lambda: load_checkpoint(killed)["generation"] == 4, reset=lambda: shutil.rmtree(killed))
    interrupted = load_checkpoint(killed)                   # the run and its workers, killed after generation 2
    assert 2 <= interrupted["generation"] < 4

    subprocess.run(_cli(tiny_package, killed, 4), cwd=ROOT, check=True, capture_output=True)
    a, b = load_checkpoint(whole), load_checkpoint(killed)
    assert a["generation"] == b["generation"] == 4
    strip = lambda h: [{k: v for k, v in row.items() if k != "seconds"} for row in h]
    assert strip(a["history"]) == strip(b["history"])      # same candidates, same fitness, every generation
    assert np.array_equal(a["es"].mean, b["es"].mean) and a["es"].sigma == b["es"].sigma
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["generation"] for r in rows][-1] == 4


def test_resume_refuses_a_different_run(tiny_package, tmp_path):
    from slm.core.errors import SlmError
    out = tmp_path / "run"
    evolve(EvolveConfig(package=str(tiny_package), generations=1, **SMALL), out, log=lambda s: None)
    with pytest.raises(SlmError, match="different run"):
        evolve(EvolveConfig(package=str(tiny_package), generations=2, budget=0.5, **SMALL), out, log=lambda s: None)


def test_per_generation_subsets_are_seeded_and_shared_by_the_population(tiny_package, tmp_path):
    from slm.evolve.cma_es import probes_of_generation
    cfg = EvolveConfig(package=str(tiny_package), generations=3, **{**SMALL, "lengths": (160,), "samples": 3, "per_generation": 2})
    state = evolve(cfg, tmp_path / "run", log=lambda s: None)
    subsets = [row["probes"] for row in state["history"]]
    assert all(len(s) == 2 for s in subsets) and len({tuple(s) for s in subsets}) > 1
    assert subsets == [probes_of_generation(cfg, 6, g) for g in range(3)]        # a resume draws the same
    assert all(len(row["mean_per_probe"]) == 2 for row in state["history"])


def test_skip_search_moves_only_the_linear_skip_and_improves(tiny_package, tmp_path):
    from slm.evolve.cma_es import expand, search_space
    from slm.runtime.eviction.namm import FEATURES, BackwardAttentionMemory
    cfg = EvolveConfig(package=str(tiny_package), budget=0.25, generations=5,
                       **{**SMALL, "search": "skip", "prior": "log_mass_ema16"})
    base, index = search_space(cfg)
    assert len(index) == len([f for f in FEATURES if "_age_" not in f]) == 9
    scorer = BackwardAttentionMemory.from_vector(expand(base, index, np.arange(9, dtype=np.float32)))
    assert not scorer.w2.any()                                       # the network's output is off
    assert list(scorer.w_skip[[FEATURES.index(f) for f in FEATURES if "_age_" not in f]]) == list(range(9))
    assert not scorer.w_skip[[FEATURES.index(f) for f in FEATURES if "_age_" in f]].any()
    state = evolve(cfg, tmp_path / "run", log=lambda s: None)
    means = [row["mean_fitness"] for row in state["history"]]
    assert state["best_mean"][0] > means[0], means
    moved = BackwardAttentionMemory.from_vector(state["best_mean"][1])
    assert np.array_equal(moved.We, BackwardAttentionMemory.from_vector(base).We)   # untouched outside the skip
    with pytest.raises(ValueError, match="'bogus' is unknown; accepted: full, skip"):
        search_space(EvolveConfig(package="", search="bogus"))


def test_log_retention_fitness_counts_every_probe():
    from slm.evolve.cma_es import aggregate
    # under the mean, one probe that keeps its answer outweighs broad retention on all three; not under the mean log
    broad, lucky = [0.2, 0.2, 0.2], [1.0, 0.05, 0.05]
    assert aggregate(lucky, "retention") > aggregate(broad, "retention")
    assert aggregate(broad, "log_retention") > aggregate(lucky, "log_retention")
    assert aggregate([0.0, 1.0], "log_retention") == pytest.approx(np.log(0.01) / 2)      # floored, finite
    with pytest.raises(ValueError, match="'best' is unknown; accepted: retention, log_retention"):
        aggregate([1.0], "best")


def test_unknown_prior_is_a_clear_cli_error(tiny_package, capsys):
    from slm.evolve.cli import main
    assert main(["--model", str(tiny_package), "--prior", "h20", "--no-install"]) == 2
    err = capsys.readouterr().err
    assert "--prior 'h20' is unknown; accepted: '' (none), h2o, opening or a feature: log_mass_last" in err
