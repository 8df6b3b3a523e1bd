"""Seconds per training step of `slm distill train` on CPU, one change at a time.

    python bench/distill_step_speed.py --steps 4 --threads 2

Student SmolLM2-135M (the default GGUF, dequantised), SVAMP train with the recorded PaLM rationales,
batch 8, both tasks (label + rationale) per step, AdamW. Each variant runs `--steps` timed steps after
one warm-up step on the same seeded batches, and prints a markdown table: wall and CPU seconds per
step (on a shared host the CPU seconds are the fairer comparison), the share of padded positions, and
the tokens the vocabulary projection sees.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from contextlib import nullcontext

import torch
from torch.utils.data import DataLoader

from slm.distill import multitask
from slm.distill.rationales import generate_rationales
from slm.distill.store import read_kept
from slm.distill.student import load_causal_lm
from slm.distill.tasks import get_task
from slm.distill.teachers import RecordedTeacher

VARIANTS = (  # name, target-only loss, length-grouped batches, bf16 autocast
    ("baseline: full logits, shuffled batches, fp32", False, False, False),
    ("logits at target positions only", True, False, False),
    ("+ length-grouped batches", True, True, False),
    ("+ bf16 autocast", True, True, True),
)


def batches(encoded, batch_size: int, grouped: bool, seed: int, n: int):
    collate = multitask.Collate(pad_id=0)
    if grouped:
        loader = DataLoader(encoded, batch_sampler=multitask.LengthGroupedBatches(
            [multitask.length(e) for e in encoded], batch_size, seed=seed), collate_fn=collate)
    else:
        loader = DataLoader(encoded, batch_size=batch_size, shuffle=True, collate_fn=collate,
                            generator=torch.Generator().manual_seed(seed))
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == n:
            return out
    return out


def padding_share(batch_list) -> tuple[float, int]:
    padded = total = targets = 0
    for b in batch_list:
        for part in (b["label"], b["rationale"]):
            if part is None:
                continue
            total += part["attention_mask"].numel()
            padded += int((part["attention_mask"] == 0).sum())
            targets += int((part["labels"][:, 1:] != multitask.IGNORE).sum())
    return padded / total, targets // len(batch_list)


def epoch_positions(encoded, batch_size: int) -> None:
    """Exact counts for one epoch: positions the model runs on, padding, and target positions (what
    `target_loss` projects to the vocabulary), for shuffled and length-grouped batches."""
    print("| batches (one epoch) | positions | padding | target positions (projected by target_loss) |")
    print("|---|---:|---:|---:|")
    for name, grouped in (("shuffled", False), ("length-grouped", True)):
        pos = pad = tgt = 0
        for b in batches(encoded, batch_size, grouped, seed=0, n=-1):
            for part in (b["label"], b["rationale"]):
                if part is not None:
                    pos += part["attention_mask"].numel()
                    pad += int((part["attention_mask"] == 0).sum())
                    tgt += int((part["labels"][:, 1:] != multitask.IGNORE).sum())
        print(f"| {name} | {pos:,} | {pad:,} ({pad / pos:.0%}) | {tgt:,} ({tgt / pos:.0%}) |")
    print()


def run_variant(model, batch_list, target_only: bool, bf16: bool) -> list[float]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    loss_of = multitask.target_loss if target_only else (lambda m, b: m(**b).loss)
    times, cpu = [], []
    for batch in batch_list:
        start, start_cpu = time.perf_counter(), time.process_time()
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext():
            loss = loss_of(model, batch["label"])
            if batch["rationale"] is not None:
                loss = loss + loss_of(model, batch["rationale"])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return times[1:], cpu[1:]  # the first step warms up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, nargs="+", default=[2])
    parser.add_argument("--max-len", type=int, default=256)
    args = parser.parse_args()

    task = get_task("svamp")
    with tempfile.TemporaryDirectory() as tmp:
        store = os.path.join(tmp, "palm.jsonl")
        generate_rationales(task, "train", RecordedTeacher.for_split(task, "train"), store)
        records = read_kept(store)
    model, tokenizer = load_causal_lm("smollm2")
    model.train()
    items, _ = multitask.build_items(task.load("train"), records, label_source="gold")
    encoded, _ = multitask.encode_items(tokenizer, items, args.max_len)
    epoch_positions(encoded, 8)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"load average {os.getloadavg()[0]:.1f} at start; {args.steps} timed steps per row, batch {args.batch_size}\n")
    print("| variant | torch threads | wall s / step (median) | CPU s / step (all threads) | padded positions | "
          "target tokens / step |")
    print("|---|---:|---:|---:|---:|---:|")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for name, target_only, grouped, bf16 in VARIANTS:
            batch_list = batches(encoded, args.batch_size, grouped, seed=0, n=args.steps + 1)
            share, targets = padding_share(batch_list[1:])
            times, cpu = run_variant(model, batch_list, target_only, bf16)
            print(f"| {name} | {threads} | {statistics.median(times):.2f} | {statistics.median(cpu):.2f} | "
                  f"{share:.0%} | {targets} |", flush=True)
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end (2 cores shared with other jobs: compare rows "
          "within one run, not across machines)")


if __name__ == "__main__":
    main()
