"""slm.evolve.survival: the evidence mask covers the needle sentence, and survival counts what the cache holds."""
from __future__ import annotations

import json

import numpy as np

from slm.evolve.probes import budgeted, probe_of
from slm.evolve.survival import evidence_mask, kept_positions, main
from slm.runtime import Engine
from slm.runtime.eviction import make_policy
from slm.evals.longctx.tasks import make_cases


def test_evidence_mask_is_the_needle_sentence(tiny_package):
    engine = Engine(tiny_package, threads=1, kv_policy="h2o", protect_chat=False)
    count = lambda text: len(engine.tokenizer.encode(text, add_special_tokens=False).ids)
    case = make_cases("niah_single", 256, "repeated", 1, count, seed=3)[0]
    probe = probe_of(engine, case)
    mask = evidence_mask(engine, case)
    assert len(mask) == len(probe.prompt_ids)
    text = engine.tokenizer.decode([t for t, m in zip(probe.prompt_ids, mask) if m])
    assert case.answers[0] in text and "special magic number" in text and "grass" not in text
    cache, eviction = budgeted(engine, probe, make_policy("h2o"), 0.25)
    engine.prefill(cache, list(probe.prompt_ids), eviction)
    kept = kept_positions(cache, len(probe.prompt_ids))
    assert (kept.sum(-1) == cache.length).all() and cache.length <= cache.capacity < len(probe.prompt_ids)


def test_survival_of_a_full_cache_is_one_and_a_budget_loses_some(tiny_package, tmp_path):
    args = ["--model", str(tiny_package), "--tasks", "niah_single", "--haystacks", "repeated", "--length", "256",
            "--samples", "2", "--policies", "streaming", "h2o", "--top", "2", "--out", str(tmp_path)]
    assert main(args + ["--budget", "1"]) == 0             # the full cache: nothing evicted
    full = json.loads((tmp_path / "survival.json").read_text())["policies"]
    assert main(args + ["--budget", "0.25"]) == 0
    tight = json.loads((tmp_path / "survival.json").read_text())["policies"]
    for name in ("streaming", "h2o"):
        assert min(full[name]["every_head"]) == 1.0
        assert np.mean(tight[name]["every_head"]) < np.mean(full[name]["every_head"])


def test_question_last_probes_ask_only_after_the_text(tiny_package):
    from slm.evolve.probes import make_probes
    engine = Engine(tiny_package, threads=1)
    first = make_probes(engine, ["niah_single"], ["repeated"], 256, 1, seed=3)[0]
    last = make_probes(engine, ["niah_single"], ["repeated"], 256, 1, seed=3, question_first=False)[0]
    text_first, text_last = (engine.tokenizer.decode(list(p.prompt_ids)) for p in (first, last))
    question = "What is the special magic number"
    assert text_first.count(question) == 2 and text_last.count(question) == 1
    assert text_last.index(question) > text_last.index("grass")              # after the text
    assert first.answer_ids == last.answer_ids and len(last.prompt_ids) < len(first.prompt_ids)
