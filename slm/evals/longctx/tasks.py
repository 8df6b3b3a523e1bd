"""Long-context tasks, generated in-project and seeded (after RULER, Hsieh et al. 2024, "RULER: What's
the Real Context Size of Your Long-Context Language Models?"), plus LongChat's LongEval line retrieval.

A task instance is a `Case`: a prompt of about `length` tokens, a question at its end, and a scorer.
"""
from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPEATED = ("The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. ")
# keys and words for needles and word lists: plain English nouns (no download needed)
WORDS = """apple river candle mirror garden pencil window forest bottle rocket violin harbor
lantern pepper meadow saddle engine falcon glacier marble tunnel cactus anchor basket blanket castle
cherry cloud compass crystal desert dolphin feather fountain galaxy hammer helmet island jacket jungle
kettle ladder lemon magnet mountain needle ocean orchard oyster paddle parrot pillow planet pocket
puzzle rabbit ribbon saddle scarf shadow shovel silver spider sponge statue tiger tomato trumpet
tulip umbrella valley velvet wagon walnut whistle wizard yacht zebra bridge button carpet dragon
""".split()

DATA = Path(__file__).resolve().parent / "data"       # copies of ../shared/data, with their licences


@dataclass(frozen=True)
class Case:
    task: str
    haystack: str
    length: int                 # target prompt tokens
    context: str                # the long text
    question: str
    answers: tuple[str, ...]    # all must appear in the output for full marks
    max_tokens: int
    question_first: bool = True  # False: the question only after the text (no query-aware cue in streaming)

    def score(self, output: str) -> float:
        """Fraction of the expected answers that appear in the output (RULER's recall-style metric)."""
        return sum(a.lower() in output.lower() for a in self.answers) / len(self.answers)

    @property
    def prompt(self) -> str:
        """The question comes before the text as well as after it: under a hard KV budget the text
        streams through the cache, and a query-aware policy can only keep what the query points at
        if it has seen the query (kvpress's SnapKV, by contrast, holds the whole prompt first).
        With question_first=False it comes only after the text, as in many real chats."""
        if not self.question_first:
            return f"Read the text, then answer.\n\n{self.context}\n\n{self.question}"
        return f"Read the text, then answer. {self.question.split('?')[0]}?\n\n{self.context}\n\n{self.question}"


def _haystack_sentences(kind: str, rng: random.Random) -> list[str]:
    if kind == "repeated":
        return [REPEATED]
    text = (DATA / "tinyshakespeare" / "input.txt").read_text()
    start = rng.randrange(0, len(text) - 200_000)
    return [line + "\n" for line in text[start:start + 200_000].splitlines() if line.strip()]


def _fill(kind: str, n_tokens: int, count: Callable[[str], int], rng: random.Random, reserve: int) -> list[str]:
    """Haystack pieces adding up to about n_tokens - reserve tokens."""
    pieces, sentences = [], _haystack_sentences(kind, rng)
    per = max(1, count("".join(sentences[:20])) / min(20, len(sentences)))
    need = int((n_tokens - reserve) / per)
    for i in range(max(1, need)):
        pieces.append(sentences[i % len(sentences)])
    return pieces


def _insert(pieces: list[str], needles: list[str], rng: random.Random) -> str:
    slots = sorted(rng.randrange(0, len(pieces) + 1) for _ in needles)
    out = list(pieces)
    for offset, (slot, needle) in enumerate(zip(slots, needles)):
        out.insert(slot + offset, needle + " ")
    return "".join(out)


def _number(rng: random.Random) -> str:
    return str(rng.randrange(1_000_000, 10_000_000))


def niah_single(length, haystack, count, rng) -> Case:
    key, value = rng.choice(WORDS), _number(rng)
    ctx = _insert(_fill(haystack, length, count, rng, 80), [f"One of the special magic numbers for {key} is: {value}."], rng)
    return Case("niah_single", haystack, length, ctx,
                f"What is the special magic number for {key} mentioned in the provided text? The special magic number for {key} is:",
                (value,), 40)


def niah_multikey(length, haystack, count, rng) -> Case:
    keys = rng.sample(WORDS, 4)
    values = [_number(rng) for _ in keys]
    needles = [f"One of the special magic numbers for {k} is: {v}." for k, v in zip(keys, values)]
    ctx = _insert(_fill(haystack, length, count, rng, 140), needles, rng)
    i = rng.randrange(len(keys))
    return Case("niah_multikey", haystack, length, ctx,
                f"What is the special magic number for {keys[i]} mentioned in the provided text? The special magic number for {keys[i]} is:",
                (values[i],), 40)


def niah_multivalue(length, haystack, count, rng) -> Case:
    key = rng.choice(WORDS)
    values = [_number(rng) for _ in range(4)]
    needles = [f"One of the special magic numbers for {key} is: {v}." for v in values]
    ctx = _insert(_fill(haystack, length, count, rng, 140), needles, rng)
    return Case("niah_multivalue", haystack, length, ctx,
                f"What are all the special magic numbers for {key} mentioned in the provided text? The special magic numbers for {key} are:",
                tuple(values), 64)


def variable_tracking(length, haystack, count, rng) -> Case:
    value = str(rng.randrange(10_000, 100_000))
    names = ["".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(5)) for _ in range(4)]
    chain = [f"VAR {names[0]} = {value}."] + [f"VAR {names[i]} = VAR {names[i - 1]}." for i in range(1, len(names))]
    ctx = _insert(_fill(haystack, length, count, rng, 120), chain, rng)
    # needles are inserted in sorted slots, so the chain stays in order
    return Case("variable_tracking", haystack, length, ctx,
                f"Find all variables that are assigned the value {value} in the text above. Answer: the variables are",
                tuple(names), 32)


def common_words(length, haystack, count, rng) -> Case:
    common = rng.sample(WORDS, 10)
    rare = [w for w in WORDS if w not in common]
    words = common * max(3, length // 100)
    sample = "\n".join(f"{100 + i}. {w}" for i, w in enumerate(rng.sample(WORDS, 20)))
    per_line = max(1.0, count(sample) / 20)                  # a numbered line costs several tokens
    words += [rng.choice(rare) for _ in range(max(0, int((length - 100) / per_line) - len(words)))]
    rng.shuffle(words)
    ctx = "Below is a numbered list of words.\n" + "\n".join(f"{i + 1}. {w}" for i, w in enumerate(words))
    assert Counter(words).most_common(10)[-1][1] >= max(3, length // 100)
    return Case("common_words", "wordlist", length, ctx,
                "What are the 10 most common words in the list above? Answer: The top 10 words are:",
                tuple(common), 48)


GENERATORS = {"niah_single": niah_single, "niah_multikey": niah_multikey, "niah_multivalue": niah_multivalue,
              "variable_tracking": variable_tracking, "common_words": common_words}
HAYSTACKS = ("repeated", "shakespeare")


def make_cases(task: str, length: int, haystack: str, n: int, count: Callable[[str], int], seed: int = 0) -> list[Case]:
    rng = random.Random(f"{task}/{length}/{haystack}/{seed}")
    return [GENERATORS[task](length, haystack, count, rng) for _ in range(n)]


def longeval_lines(n_lines: int, n: int) -> list[Case]:
    """LongChat's fixed line-retrieval cases (../shared/data/longeval)."""
    path = DATA / "longeval" / f"{n_lines}_lines.jsonl"
    cases = []
    for line in path.read_text().splitlines()[:n]:
        r = json.loads(line)
        head, _, question = r["prompt"].rpartition("\n\nNow the record is over.")
        cases.append(Case(f"longeval_{n_lines}_lines", "lines", r["token_size"], head + "\n\nNow the record is over.",
                          question.strip() + " The <REGISTER_CONTENT> is", (str(r["expected_number"]),), 12))
    return cases
