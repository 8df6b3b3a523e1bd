"""Stage 2: train a decoder-only student on labels and rationales ("Distilling step-by-step",
Hsieh et al., 2023). Standard fine-tuning is the same loop with no rationales (or `lam=0`).

Entry point: `train(config)`. One plain loop; the idea is its one line

    loss = label_loss + lam * rationale_loss

Runs on CPU as is, and on one or several GPUs with `accelerate launch -m distill train ...`
(accelerate's Accelerator handles devices, gradient accumulation and mixed precision).
Output: `config.out` is a Hugging Face checkpoint folder, plus `train_config.json` and
`training_record.json`; `config.out/resume/` holds the last checkpoint to resume from.
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from torch.utils.data import DataLoader

from slm.errors import SlmError

from distill import multitask
from distill.evaluate import EvalResult, evaluate_model
from distill.store import read_kept, unread_lines
from distill.student import load_causal_lm, student_source
from distill.tasks import get_task

FORMAT_VERSION = 1
LABEL_SOURCES = ("gold", "teacher")
MIXED_PRECISION = ("no", "fp16", "bf16")


@dataclass(frozen=True)
class TrainConfig:
    student: str                    # HF checkpoint folder, .gguf file, or "smollm2"
    task: str                       # svamp | esnli | cqa | jsonl
    out: str                        # output folder (HF checkpoint + records)
    data: str | None = None         # task data folder (SVAMP: bundled copy when None)
    rationales: str | None = None   # rationale store (JSONL); None = standard fine-tuning
    lam: float = 1.0                # λ, weight of the rationale loss; 0 = standard fine-tuning
    label_source: str = "gold"      # "gold" labels, or the "teacher"'s answers (the paper's unlabeled setting)
    train_fraction: float = 1.0     # share of the train split used (seeded subset)
    steps: int = 100                # optimizer steps
    batch_size: int = 8             # per device, per micro-batch
    grad_accum: int = 1             # micro-batches per optimizer step
    lr: float = 5e-5
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_len: int = 256              # tokens of prompt + target; longer inputs are rejected and counted
    log_every: int = 10
    eval_every: int = 0             # optimizer steps between evaluations on the test split; 0 = only at the end
    eval_limit: int | None = 50     # test inputs per periodic evaluation (None = all)
    save_every: int = 0             # optimizer steps between resumable checkpoints; 0 = none
    max_new_tokens: int = 32        # answer length at evaluation
    mixed_precision: str = "no"     # "no" | "fp16" | "bf16" (GPU)
    seed: int = 0
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.label_source not in LABEL_SOURCES:
            raise SlmError(f"unknown label source {self.label_source!r}; accepted: {', '.join(LABEL_SOURCES)}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise SlmError(f"unknown mixed precision {self.mixed_precision!r}; accepted: {', '.join(MIXED_PRECISION)}")
        if self.lam < 0:
            raise SlmError(f"lam must be >= 0, got {self.lam}")
        if self.label_source == "teacher" and self.rationales is None:
            raise SlmError("label source 'teacher' needs a rationale file (--rationales)")
        for name in ("steps", "batch_size", "grad_accum", "max_len"):
            if getattr(self, name) < 1:
                raise SlmError(f"{name} must be at least 1, got {getattr(self, name)}")

    @property
    def multitask(self) -> bool:
        return self.rationales is not None and self.lam > 0

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> "TrainConfig":
        raw = json.loads(path.read_text())
        if raw.get("format_version") != FORMAT_VERSION:
            raise SlmError(f"{path}: train config format {raw.get('format_version')!r}, expected {FORMAT_VERSION}")
        unknown = set(raw) - {f.name for f in fields(cls)}
        if unknown:
            raise SlmError(f"{path}: unknown settings {', '.join(sorted(unknown))}")
        return cls(**raw)


@dataclass(frozen=True)
class TrainRecord:
    """What happened, written to `training_record.json` beside the weights."""
    config: dict
    train_inputs: int               # inputs selected from the train split
    label_examples: int             # inputs training the label task
    rationale_examples: int         # of those, inputs also training the rationale task
    left_out: dict[str, int]        # reason -> count (nothing is dropped silently)
    steps: int
    resumed_from_step: int
    seconds: float
    history: list[dict]             # {"step", "loss", "label_loss", "rationale_loss", "lr"} per log
    evals: list[dict]               # {"step", "accuracy", "correct", "total", "unparseable"}
    final_eval: dict | None
    student_source: dict            # {"kind": "hf" | "gguf" | "hub", "path": ...}: what the weights started from
    format_version: int = FORMAT_VERSION


def train(config: TrainConfig) -> TrainRecord:
    started = time.monotonic()
    out = Path(config.out)
    accelerator = Accelerator(gradient_accumulation_steps=config.grad_accum, mixed_precision=config.mixed_precision,
                              dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True))
    set_seed(config.seed)
    task = get_task(config.task, config.data)
    source = student_source(config.student)
    model, tokenizer = load_causal_lm(config.student)

    inputs = multitask.select(task.load("train"), config.train_fraction, config.seed)
    records = read_kept(config.rationales) if config.multitask or config.label_source == "teacher" else None
    items, left_out = multitask.build_items(inputs, records, label_source=config.label_source)
    encoded, rejected = multitask.encode_items(tokenizer, items, config.max_len)
    left_out.update(rejected)
    left_out.update(unread_lines(config.rationales) if records is not None else {})
    if not encoded:
        raise SlmError(f"no training examples left for task {config.task!r} (left out: {dict(left_out)})")
    loader = DataLoader(encoded, batch_size=config.batch_size, shuffle=True, drop_last=False,
                        collate_fn=multitask.Collate(tokenizer.pad_token_id))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    warmup = max(1, config.warmup_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    accelerator.register_for_checkpointing(scheduler)

    step, history, evals = _resume(accelerator, out / "resume", config)
    resumed_from = step
    test = task.load("test")
    micro = step * config.grad_accum  # micro-batches already consumed
    model.train()
    while step < config.steps:
        epoch, skip = divmod(micro, len(loader))
        loader.set_epoch(epoch)
        for batch in accelerator.skip_first_batches(loader, skip) if skip else loader:
            with accelerator.accumulate(model):
                label_loss = model(**batch["label"]).loss
                rationale_loss = (model(**batch["rationale"]).loss if config.multitask and batch["rationale"]
                                  else torch.zeros((), device=label_loss.device))
                loss = label_loss + config.lam * rationale_loss
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            micro += 1
            if not accelerator.sync_gradients:
                continue
            step += 1
            if step % config.log_every == 0 or step == config.steps:
                entry = {"step": step, "loss": loss.item(), "label_loss": label_loss.item(),
                         "rationale_loss": rationale_loss.item(), "lr": scheduler.get_last_lr()[0]}
                history.append(entry)
                accelerator.print(json.dumps(entry))
            if config.eval_every and step % config.eval_every == 0 and step < config.steps:
                evals.append(_evaluate(accelerator, model, tokenizer, task, test[:config.eval_limit], config, step))
                model.train()
            if config.save_every and step % config.save_every == 0 and step < config.steps:
                _save_resume(accelerator, out / "resume", config, step, history, evals)
            if step >= config.steps:
                break

    final = _evaluate(accelerator, model, tokenizer, task, test[:config.eval_limit], config, step)
    record = TrainRecord(config=asdict(config), train_inputs=len(inputs), label_examples=len(encoded),
                         rationale_examples=sum(e.rationale is not None for e in encoded), left_out=dict(left_out),
                         steps=step, resumed_from_step=resumed_from, seconds=round(time.monotonic() - started, 1),
                         history=history, evals=evals, final_eval=final,
                         student_source={"kind": source.kind, "path": source.path})
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        accelerator.unwrap_model(model).save_pretrained(out, save_function=accelerator.save)
        tokenizer.save_pretrained(out)
        config.save(out / "train_config.json")
        (out / "training_record.json").write_text(json.dumps(asdict(record), indent=2) + "\n")
        shutil.rmtree(out / "resume", ignore_errors=True)  # finished: nothing left to resume
    accelerator.end_training()
    return record


def _evaluate(accelerator: Accelerator, model, tokenizer, task, examples, config: TrainConfig, step: int) -> dict:
    """Accuracy of the label task on `examples` (main process; the others wait)."""
    result: EvalResult | None = None
    if accelerator.is_main_process:
        result = evaluate_model(accelerator.unwrap_model(model), tokenizer, task, examples,
                                max_new_tokens=config.max_new_tokens)
        accelerator.print(json.dumps({"step": step, "eval": result.line()}))
    accelerator.wait_for_everyone()
    return {"step": step, **result.counts()} if result is not None else {"step": step}


def _save_resume(accelerator: Accelerator, folder: Path, config: TrainConfig, step: int, history: list,
                 evals: list) -> None:
    """Model, optimizer, scheduler and RNG states, then the step; written to a temp folder and renamed
    so a kill during the save leaves the previous checkpoint intact."""
    tmp = folder.with_name(folder.name + ".tmp")
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        (tmp / "progress.json").write_text(json.dumps({"step": step, "config": asdict(config), "history": history,
                                                          "evals": evals}))
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    accelerator.wait_for_everyone()


def _resume(accelerator: Accelerator, folder: Path, config: TrainConfig) -> tuple[int, list, list]:
    """Continue from `folder` if a checkpoint is there; it must come from the same config (`steps` may grow)."""
    if not (folder / "progress.json").is_file():
        return 0, [], []
    progress = json.loads((folder / "progress.json").read_text())
    saved = {k: v for k, v in progress["config"].items() if k != "steps"}
    wanted = {k: v for k, v in asdict(config).items() if k != "steps"}
    if saved != wanted:
        changed = sorted(k for k in wanted if saved.get(k) != wanted[k])
        raise SlmError(f"{folder} was written with different settings ({', '.join(changed)}); "
                       "use the same settings to resume, or a new --out folder")
    accelerator.load_state(str(folder))
    accelerator.print(f"resumed from step {progress['step']} ({folder})")
    return progress["step"], progress["history"], progress["evals"]
