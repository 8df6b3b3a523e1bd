"""Constrained decoding benchmark: the mask's cost per token, compile times, and JSON validity with
and without the constraint.

    python bench/constraint.py --packages ~/.cache/slm/packages/smollm2-135m-instruct-gguf ~/.cache/slm/packages/qwen2.5-coder-1.5b
    python bench/constraint.py --packages PACKAGE --validity 50 --validity-tokens 128 --replies results/r.jsonl

- mask µs/token: the tokens of real constrained replies replayed through fresh guides, each part of a
  step timed alone: llguidance's mask into a bit array, the bits onto the logits (-inf), the parser's
  consume; the first step (lexer states built on demand) apart from the later ones;
- compile ms: the tokenizer (once per engine) and each grammar (check + matcher, per request);
- validity: `json.loads` + jsonschema over `--validity` prompts asking for a JSON object, greedy,
  with and without `constraint=` (no fence stripping: the reply is the JSON or it is not);
  the replies can be written out (`--replies results/x.jsonl`) to see what the failures hold.
Prints markdown tables. The A/B of unconstrained decode speed is bench/constraint_ab.py.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import jsonschema  # noqa: E402
import numpy as np  # noqa: E402

from slm.runtime import Engine  # noqa: E402
from slm.runtime.constraint import Constraint, Grammars, Guide  # noqa: E402

PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "age", "city", "hobbies"],
          "properties": {"name": {"type": "string"}, "age": {"type": "integer"}, "city": {"type": "string"},
                         "hobbies": {"type": "array", "items": {"type": "string"}, "maxItems": 4}}}
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
GRAMMARS = {"regex date": Constraint.regex(r"[0-9]{4}-[0-9]{2}-[0-9]{2}"),
            "json person": Constraint.json_schema(PERSON),
            "json object": Constraint.json_schema({"type": "object"})}


def tool_call_grammar(engine: Engine) -> Constraint:
    """What the server asks for with tools=[get_weather], tool_choice="required" (Lark, tags as the tokenizer has them)."""
    from slm.runtime.serve.schemas import ChatCompletionRequest
    from slm.runtime.serve.tools import ToolPlan, tag_grammar
    body = ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "x"}], "tools": [WEATHER],
                                                 "tool_choice": "required"})
    return ToolPlan.of(body, engine.manifest.chat_template, tag_grammar(engine.tokenizer)).constraint
PEOPLE = ["a retired teacher", "a young chef", "a jazz drummer", "a marine biologist", "a taxi driver", "a poet",
          "a software tester", "a beekeeper", "a ballet dancer", "a firefighter"]
CITIES = ["Lyon", "Osaka", "Lima", "Accra", "Quebec"]


class TimedGuide(Guide):
    """A guide that times its own mask + consume inside a real generation (ONNX Runtime's threads
    around it, caches cold after each graph call)."""
    spent: list[float] = []

    def mask(self, logits):
        self.t0 = time.perf_counter()
        return super().mask(logits)

    def consume(self, token):
        super().consume(token)
        self.spent.append((time.perf_counter() - self.t0) * 1e6)


class TimedGrammars(Grammars):
    def guide(self, constraint):
        g = super().guide(constraint)
        return TimedGuide(g.matcher, self.vocab_size)


def prompts(n: int) -> list[str]:
    return [f"Describe {PEOPLE[i % len(PEOPLE)]} from {CITIES[i % len(CITIES)]} as a JSON object with the keys "
            f"name, age, city and hobbies (a list of up to 4 strings). Reply with the JSON only." for i in range(n)]


def valid(text: str) -> bool:
    try:
        jsonschema.validate(json.loads(text), PERSON)
    except (json.JSONDecodeError, jsonschema.ValidationError):
        return False
    return True


def mask_cost(engine: Engine, n_prompts: int, replays: int = 3) -> dict[str, tuple]:
    """Per grammar and part of a step (llguidance's mask, the bits onto the logits, the parser's
    consume): (first step µs, median µs, p90 µs, steps). Real replies are generated first, then
    their tokens replayed through fresh guides with each part timed alone."""
    rows = {}
    logits = np.zeros(engine.manifest.dims.vocab_size, np.float32)
    for name in ("json person", "lark tool call", "regex date"):
        replies, TimedGuide.spent = [], []
        for p in prompts(n_prompts):
            events = list(engine.generate(p, max_tokens=96, constraint=GRAMMARS[name], cache=engine.new_cache()))
            replies.append([e.token for e in events if e.token not in engine.eos_ids])
        xs = sorted(TimedGuide.spent)
        rows[f"{name}: whole step, inside generation (sampling included)"] = (
            float("nan"), statistics.median(xs), xs[int(0.9 * (len(xs) - 1))], len(xs))
        parts = {"llguidance mask": [], "bits -> logits": [], "consume": [], "whole step": []}
        firsts = {k: [] for k in parts}
        for _ in range(replays):
            for tokens in replies:
                guide = Guide(engine.grammars().guide(GRAMMARS[name]).matcher, len(logits))   # untimed
                for i, token in enumerate(tokens):
                    t0 = time.perf_counter()
                    guide.compute_bits()
                    t1 = time.perf_counter()
                    guide.apply_bits(logits)
                    t2 = time.perf_counter()
                    guide.consume(token)
                    t3 = time.perf_counter()
                    for k, v in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t3 - t0)):
                        (firsts if i == 0 else parts)[k].append(v * 1e6)
        for k, xs in parts.items():
            xs = sorted(xs)
            rows[f"{name}: {k}"] = (statistics.median(firsts[k]), statistics.median(xs), xs[int(0.9 * (len(xs) - 1))],
                                    len(xs) + len(firsts[k]))
    return rows


def compile_times(engine: Engine) -> dict[str, float]:
    t = time.perf_counter()
    grammars = TimedGrammars(engine.path.joinpath(engine.manifest.tokenizer_file).read_text(),
                             vocab_size=engine.manifest.dims.vocab_size, eos_ids=sorted(engine.eos_ids))
    out = {"tokenizer (once per engine)": (time.perf_counter() - t) * 1e3}
    for name, c in GRAMMARS.items():
        runs = []
        for _ in range(5):
            t = time.perf_counter()
            grammars.guide(c)       # check + matcher: what each request pays
            runs.append(time.perf_counter() - t)
        out[name] = statistics.median(runs) * 1e3
    engine._grammars = grammars
    return out


def unfenced(text: str) -> str:
    """The reply without a surrounding Markdown code fence (```json ... ```), for the diagnosis column only."""
    m = re.fullmatch(r"\s*```[a-zA-Z]*\n(.*?)\n?```\s*", text, re.S)
    return m.group(1) if m else text


MODES = {"without": ("without constraint", None), "with": ("with constraint", "json person")}


def validity(engine: Engine, n: int, max_tokens: int, replies: Path | None,
             modes: list[str]) -> dict[str, tuple[int, int, int, int, float]]:
    """Per mode: (valid, valid once a code fence is stripped, cut at max_tokens, prompts, tokens/s).
    With `replies`, each reply is appended there as it comes and a rerun skips those already there
    (resumable); the counts are over the file's records."""
    done = {}
    if replies and replies.exists():
        for line in replies.read_text().splitlines():
            r = json.loads(line)
            done[r["mode"], r["prompt"]] = r
    out = replies.open("a") if replies else None
    rows = {}
    for mode in modes:
        label, grammar = MODES[mode]
        records = []
        for i, p in enumerate(prompts(n)):
            if (label, i) in done:
                records.append(done[label, i])
                continue
            t = time.perf_counter()
            events = list(engine.generate(p, max_tokens=max_tokens, constraint=grammar and GRAMMARS[grammar],
                                          cache=engine.new_cache()))
            text = "".join(e.text for e in events)
            records.append({"mode": label, "prompt": i, "valid": valid(text), "finish": events[-1].finish_reason,
                            "tokens": events[-1].generated_tokens, "seconds": time.perf_counter() - t, "reply": text})
            if out:
                out.write(json.dumps(records[-1], ensure_ascii=False) + "\n")
                out.flush()
        timed = [r for r in records if "seconds" in r]
        rows[label] = (sum(valid(r["reply"]) for r in records), sum(valid(unfenced(r["reply"])) for r in records),
                       sum(r["finish"] == "length" for r in records), n,
                       sum(r["tokens"] for r in timed) / max(1e-9, sum(r["seconds"] for r in timed)))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--packages", nargs="+", required=True)
    ap.add_argument("--mask-prompts", type=int, default=5, help="replies replayed for the mask cost (0: skip)")
    ap.add_argument("--validity", type=int, default=50, help="prompts for the JSON-validity rate (0: skip)")
    ap.add_argument("--validity-tokens", type=int, default=128, help="max_tokens of each validity reply")
    ap.add_argument("--validity-packages", nargs="*", default=None, help="default: the first package only")
    ap.add_argument("--replies", type=Path, default=None,
                    help="append the validity replies here (JSONL); a rerun resumes, skipping those there")
    ap.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES), help="validity runs, in this order")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    for package in args.packages:
        engine = Engine(package, threads=args.threads)
        GRAMMARS["lark tool call"] = tool_call_grammar(engine)
        name, vocab = Path(package).name, engine.manifest.dims.vocab_size
        print(f"\n## {name} (vocab {vocab}, {engine.manifest.quant.mode})\n")
        print("| grammar | compile ms |\n|---|---:|")
        for k, v in compile_times(engine).items():
            print(f"| {k} | {v:.2f} |")
        sys.stdout.flush()
        if args.mask_prompts:
            print("\n| per token | first step µs | later steps: median µs | p90 µs | steps |\n|---|---:|---:|---:|---:|")
            for k, (first, med, p90, n) in mask_cost(engine, args.mask_prompts).items():
                print(f"| {k} | {'' if first != first else f'{first:.0f}'} | {med:.0f} | {p90:.0f} | {n} |")
            sys.stdout.flush()
        if args.validity and (args.validity_packages is None and package == args.packages[0]
                              or package in (args.validity_packages or ())):
            print(f"\n| {args.validity} prompts, greedy, max {args.validity_tokens} tokens | valid JSON (schema) | "
                  f"valid once a code fence is stripped | cut at max_tokens | tokens/s |\n|---|---:|---:|---:|---:|")
            for label, (ok, fenced, cut, total, tps) in validity(engine, args.validity, args.validity_tokens,
                                                                 args.replies, args.modes).items():
                print(f"| {label} | {ok}/{total} ({100 * ok / total:.0f}%) | {fenced}/{total} | {cut} | {tps:.1f} |")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
