"""Probes: long-context task instances made ready to score an eviction policy by likelihood.

A probe's value under a policy at a KV budget is the mean log-probability of its gold answer tokens,
teacher-forced after a natural reply prefix ("The special magic number for tulip is:"), with the
prompt prefilled through the budgeted cache. Against the full cache it becomes the *retention*

    retention = exp(logp_budget - logp_full)       1 = as good as keeping everything

which is far less noisy than exact match, and still meaningful where a 135M model rarely answers
exactly (it scores ~0 on NIAH at full cache). Task generators: slm.evals.longctx.tasks.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from slm.runtime.decoding import log_probs
from slm.runtime.eviction import Policy
from slm.runtime.options import EngineOptions
from slm.runtime.kv_cache import EvictionConfig, KVCache
from slm.evals.longctx.tasks import Case, longeval_lines, make_cases


# how evolve opens a package: one ONNX Runtime thread (a worker process per core), the graph with
# attention statistics (tova reads them; the policy that evicts comes in each EvictionConfig), no
# protected chat turns (a probe is one long prompt)
PROBE_OPTIONS = EngineOptions(threads=1, kv_policy="tova", protect_chat=False)


@dataclass(frozen=True)
class Probe:
    task: str
    haystack: str
    prompt_ids: tuple[int, ...]     # the chat-rendered prompt
    prefix_ids: tuple[int, ...]     # the reply up to the answer: teacher-forced, not scored
    answer_ids: tuple[int, ...]     # the gold answer: scored
    answers: tuple[str, ...]
    max_tokens: int                 # for greedy generation (evaluation only)


def reply_prefix(question: str) -> str:
    """The sentence the task's question ends with, which the reply naturally starts with:
    "...? The special magic number for X is:" -> "The special magic number for X is:"."""
    if "Answer:" in question:
        return question.rsplit("Answer:", 1)[1].strip()
    return question.rsplit("?", 1)[-1].strip()


def probe_of(engine, case: Case, extra_tokens: int = 24) -> Probe:
    tok = engine.tokenizer
    prompt = [{"role": "user", "content": case.prompt}] if engine.template else case.prompt
    return Probe(task=case.task, haystack=case.haystack, prompt_ids=tuple(engine.encode(prompt)),
                 prefix_ids=tuple(tok.encode(reply_prefix(case.question), add_special_tokens=False).ids),
                 answer_ids=tuple(tok.encode(" " + ", ".join(case.answers), add_special_tokens=False).ids),
                 answers=case.answers, max_tokens=case.max_tokens + extra_tokens)


def make_probes(engine, tasks: list[str], haystacks: list[str], length: int, n: int, seed: int,
                longeval: tuple[int, int] | None = None, question_first: bool = True) -> list[Probe]:
    """n probes per (task, haystack) at about `length` prompt tokens (common_words uses its word list);
    plus, optionally, LongEval's fixed (n_lines, count) line-retrieval cases. question_first=False
    asks the question only after the text (Case.prompt)."""
    count = lambda text: len(engine.tokenizer.encode(text, add_special_tokens=False).ids)
    cases = []
    for task in tasks:
        for haystack in (["wordlist"] if task == "common_words" else haystacks):
            cases += make_cases(task, length, haystack, n, count, seed=seed)
    if longeval:
        cases += longeval_lines(*longeval)
    return [probe_of(engine, replace(c, question_first=question_first)) for c in cases]


def budgeted(engine, probe: Probe, policy: Policy | None, budget: float) -> tuple[KVCache, EvictionConfig]:
    """A fresh cache of `budget` x the prompt (as `slm eval longctx` sizes it), evicting with `policy`;
    budget >= 1 is the full cache (room for everything, never evicts)."""
    n = len(probe.prompt_ids)
    if budget >= 1:
        capacity = n + len(probe.prefix_ids) + len(probe.answer_ids) + probe.max_tokens + 1
    else:
        capacity = max(16, int(budget * n))
    cache = engine.new_cache(capacity, statistics=policy.statistics if policy is not None else ())
    return cache, replace(engine.eviction_for(cache), policy=policy)


def answer_logprob(engine, cache: KVCache, eviction: EvictionConfig, logits: np.ndarray, probe: Probe) -> float:
    """Teacher-force prefix + answer after the prefilled prompt; mean log-prob of the answer tokens."""
    lp = log_probs(engine, cache, logits, probe.prefix_ids + probe.answer_ids, eviction)
    total = 0.0
    for value in lp[len(probe.prefix_ids):]:
        total += value
    return total / len(probe.answer_ids)


def probe_logprob(engine, probe: Probe, policy: Policy | None, budget: float) -> float:
    cache, eviction = budgeted(engine, probe, policy, budget)
    logits = engine.prefill(cache, list(probe.prompt_ids), eviction)
    return answer_logprob(engine, cache, eviction, logits, probe)


def retention(engine, probes: list[Probe], reference: list[float], policy: Policy | None, budget: float) -> list[float]:
    """Per probe: exp(logp under `policy` at `budget` - logp with the full cache)."""
    return [float(np.exp(probe_logprob(engine, p, policy, budget) - ref)) for p, ref in zip(probes, reference)]
