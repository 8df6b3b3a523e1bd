"""The student's two tasks, as token sequences (Hsieh et al., 2023, §3.2 "multi-task learning").

    predict: <input>\\n  ─►  <label><eos>       (label task; also what the student answers at test time)
    explain: <input>\\n  ─►  <rationale><eos>   (rationale task; training only)

The paper prepends these task prefixes to T5's encoder input; a decoder-only student reads the
prefix and input as a prompt whose tokens are masked out of the loss (label -100), so each loss is
the mean cross-entropy over the target tokens only.

`target_loss` computes exactly that while projecting to the vocabulary only the hidden states that
predict a target token (the prompt's and the padding's logits are never formed: on a 49k vocabulary
they are most of a CPU step's memory traffic), and `LengthGroupedBatches` puts inputs of similar
length together so little of a batch is padding.
"""
from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from slm.core.errors import SlmError

from slm.distill.store import RationaleRecord
from slm.distill.tasks.base import Example

PREDICT = "predict: "
EXPLAIN = "explain: "
IGNORE = -100  # label id that cross-entropy skips


@dataclass(frozen=True)
class TrainItem:
    input: str
    label: str
    rationale: str | None  # None: this input has no kept rationale, it trains the label task only


@dataclass(frozen=True)
class Encoded:
    label: tuple[list[int], list[int]]             # (input ids, target ids with the prompt masked)
    rationale: tuple[list[int], list[int]] | None


def prompt(prefix: str, text: str) -> str:
    return f"{prefix}{text}\n"


def select(examples: list[Example], fraction: float, seed: int) -> list[Example]:
    """A seeded random `fraction` of the training inputs (the paper's 12.5% ... 100% data sizes)."""
    if not 0 < fraction <= 1:
        raise SlmError(f"train fraction must be in (0, 1], got {fraction}")
    chosen = list(examples)
    random.Random(seed).shuffle(chosen)
    return chosen[:max(1, round(fraction * len(chosen)))]


def build_items(examples: list[Example], records: list[RationaleRecord] | None, *, label_source: str,
                ) -> tuple[list[TrainItem], Counter[str]]:
    """Join inputs with their kept rationales by id. Returns the items and a count of what was left out."""
    by_id = {r.id: r for r in records or []}
    items, left_out = [], Counter()
    for e in examples:
        record = by_id.get(e.id)
        if label_source == "teacher" and record is None:
            left_out["no_teacher_label"] += 1
            continue
        label = record.answer if label_source == "teacher" else e.label
        rationale = record.rationale if record is not None else None
        if records is not None and rationale is None:
            left_out["label_only_no_kept_rationale"] += 1  # still trains the label task
        items.append(TrainItem(input=e.input, label=label, rationale=rationale))
    return items, left_out


def encode_pair(tokenizer: PreTrainedTokenizerBase, prefix: str, text: str, target: str, max_len: int
                ) -> tuple[list[int], list[int]] | None:
    """(ids, labels) for prompt+target+eos with the prompt masked, or None when it exceeds `max_len`."""
    p = tokenizer(prompt(prefix, text), add_special_tokens=False)["input_ids"]
    t = tokenizer(target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    if len(p) + len(t) > max_len:
        return None
    return p + t, [IGNORE] * len(p) + t


def encode_items(tokenizer: PreTrainedTokenizerBase, items: list[TrainItem], max_len: int
                 ) -> tuple[list[Encoded], Counter[str]]:
    """Encode both tasks; an input whose label does not fit is rejected, a too-long rationale is dropped
    from that input only. Both are counted, never truncated (a cut label would teach a wrong answer)."""
    out, rejected = [], Counter()
    for item in items:
        label = encode_pair(tokenizer, PREDICT, item.input, item.label, max_len)
        if label is None:
            rejected["label_too_long"] += 1
            continue
        rationale = None
        if item.rationale is not None:
            rationale = encode_pair(tokenizer, EXPLAIN, item.input, item.rationale, max_len)
            if rationale is None:
                rejected["rationale_too_long"] += 1
        out.append(Encoded(label=label, rationale=rationale))
    return out, rejected


def pad(pairs: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest sequence: input_ids, attention_mask, labels, each (B, T)."""
    width = max(len(ids) for ids, _ in pairs)
    ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    labels = torch.full((len(pairs), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(pairs), width), dtype=torch.long)
    for row, (x, y) in enumerate(pairs):
        ids[row, :len(x)], labels[row, :len(y)], mask[row, :len(x)] = torch.tensor(x), torch.tensor(y), 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


class Collate:
    """Batch of `Encoded` → {"label": tensors, "rationale": tensors or None (no rationale in the batch)}."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, batch: list[Encoded]) -> dict[str, dict[str, torch.Tensor] | None]:
        rationales = [e.rationale for e in batch if e.rationale is not None]
        return {"label": pad([e.label for e in batch], self.pad_id),
                "rationale": pad(rationales, self.pad_id) if rationales else None}


def target_loss(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy over the target tokens: the same value as `model(**batch).loss`,
    with the vocabulary projection applied only where a target token is predicted."""
    hidden = model.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
                              ).last_hidden_state                       # (B, T, H)
    targets = batch["labels"][:, 1:]                                    # (B, T-1): position t predicts t+1
    keep = targets != IGNORE
    logits = model.get_output_embeddings()(hidden[:, :-1][keep])        # (N, V), N = target tokens
    cap = getattr(model.config, "final_logit_softcapping", None)        # Gemma 2/3
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return F.cross_entropy(logits.float(), targets[keep])


class LengthGroupedBatches:
    """Batches of indices, reshuffled each epoch from (seed, epoch), each drawn from a pool of similar
    lengths: the inputs are shuffled, cut into pools of `pool` batches, each pool sorted by length and
    cut into batches, and the batches shuffled. Deterministic per epoch, so a resumed run can skip the
    batches it already trained on (accelerate's `skip_first_batches`)."""

    def __init__(self, lengths: list[int], batch_size: int, *, seed: int, pool: int = 16) -> None:
        self.lengths, self.batch_size, self.seed, self.pool = lengths, batch_size, seed, pool
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        rng = random.Random(self.seed * 100_003 + self.epoch)
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        span = self.batch_size * self.pool
        batches = []
        for start in range(0, len(order), span):
            chunk = sorted(order[start:start + span], key=self.lengths.__getitem__)
            batches += [chunk[i:i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        rng.shuffle(batches)
        return iter(batches)


def length(e: Encoded) -> int:
    """Tokens of both tasks of one input (what its batch will be padded to, roughly)."""
    return len(e.label[0]) + (len(e.rationale[0]) if e.rationale is not None else 0)
