"""Stage 2: train a decoder-only student on labels and rationales ("Distilling step-by-step",
Hsieh et al., 2023). Standard fine-tuning is the same loop with no rationales (or `lam=0`).

Entry point: `train(config)`. One plain loop; the idea is its one line

    loss = label_loss + lam * rationale_loss

Runs on CPU as is, and on one or several GPUs with `accelerate launch -m slm.distill train ...`
(accelerate's Accelerator handles devices, gradient accumulation and mixed precision).
Output: `config.out` is a Hugging Face checkpoint folder, plus `train_config.json` and
`training_record.json`; `config.out/resume/` holds the last checkpoint to resume from.
"""
from __future__ import annotations

import json
import logging
import shutil
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from torch.utils.data import DataLoader
from tqdm import tqdm

from slm.core.errors import SlmError

from slm.distill import multitask
from slm.distill.evaluate import EvalResult, evaluate_model
from slm.distill.plateau import Plateau
from slm.distill.store import read_kept, unread_lines
from slm.distill.student import load_causal_lm, student_source
from slm.distill.tasks import get_task

log = logging.getLogger("slm.distill")

FORMAT_VERSION = 1
LABEL_SOURCES = ("gold", "teacher")
MIXED_PRECISION = ("no", "fp16", "bf16")
GROWABLE = ("steps", "patience", "threads")  # settings a resumed run may change


@dataclass(frozen=True)
class TrainConfig:
    student: str                    # HF checkpoint folder, .gguf file, or "smollm2"
    task: str                       # svamp | esnli | cqa | jsonl
    out: str                        # output folder (HF checkpoint + records)
    data: str | None = None         # task data folder (SVAMP: bundled copy when None)
    rationales: str | None = None   # rationale store (JSONL); None = standard fine-tuning
    allow_label_only: bool = False  # step-by-step even when no input has a kept rationale (else an error)
    lam: float = 1.0                # λ, weight of the rationale loss; 0 = standard fine-tuning
    label_source: str = "gold"      # "gold" labels, or the "teacher"'s answers (the paper's unlabeled setting)
    train_fraction: float = 1.0     # share of the train split used (seeded subset)
    train_limit: int | None = None  # the first N train inputs in file order (those a teacher's store covers); None = all
    steps: int = 100                # optimizer steps
    batch_size: int = 8             # per device, per micro-batch
    grad_accum: int = 1             # micro-batches per optimizer step
    lr: float = 5e-5
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_len: int = 256              # tokens of prompt + target; longer inputs are rejected and counted
    log_every: int = 10
    eval_every: int = 0             # steps between evaluations (the validation slice if val_size, else test)
    eval_limit: int | None = 50     # test inputs per evaluation (None = all)
    val_size: int = 0               # train inputs held out for validation (never trained on); 0 = none
    patience: int = 0               # validation evaluations without improvement before stopping; 0 = all steps
    save_every: int = 0             # optimizer steps between resumable checkpoints; 0 = none (SIGTERM still saves)
    group_by_length: bool = True    # batches of similar lengths (less padding); False = plain shuffled batches
    threads: int | None = None      # torch CPU threads (None: torch's default)
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
        if self.train_limit is not None and self.train_limit < 1:
            raise SlmError(f"train_limit must be at least 1 (or None for the whole split), got {self.train_limit}")
        for name in ("steps", "batch_size", "grad_accum", "max_len"):
            if getattr(self, name) < 1:
                raise SlmError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.val_size < 0 or self.patience < 0:
            raise SlmError(f"val_size and patience must be >= 0, got {self.val_size} and {self.patience}")
        if self.patience and not (self.val_size and self.eval_every):
            raise SlmError(f"patience={self.patience} needs a validation slice and evaluations: set val_size "
                           f"(--val-size, got {self.val_size}) and eval_every (--eval-every, got {self.eval_every})")

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
    validation: list[dict] = ()     # the validation curve: {"step", "accuracy", "loss", "correct", "total"}
    best_step: int = 0              # the step whose weights were written (the best validation; else the last)
    stopped: str = "steps"          # "steps" (all run) | "plateau" (patience ran out)
    format_version: int = FORMAT_VERSION


def train(config: TrainConfig) -> TrainRecord:
    started = time.monotonic()
    out = Path(config.out)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    accelerator = Accelerator(gradient_accumulation_steps=config.grad_accum, mixed_precision=config.mixed_precision,
                              dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True))
    set_seed(config.seed)
    task = get_task(config.task, config.data)
    inputs = multitask.select(task.load("train")[:config.train_limit], config.train_fraction, config.seed)
    if config.val_size >= len(inputs):
        raise SlmError(f"val_size={config.val_size} leaves no training inputs out of {len(inputs)}")
    val, inputs = inputs[:config.val_size], inputs[config.val_size:]
    records = read_kept(config.rationales) if config.multitask or config.label_source == "teacher" else None
    items, left_out = multitask.build_items(inputs, records, label_source=config.label_source)
    if config.multitask:
        check_rationales(items, len(records), config)
    source = student_source(config.student)
    model, tokenizer = load_causal_lm(config.student)
    encoded, rejected = multitask.encode_items(tokenizer, items, config.max_len)
    left_out.update(rejected)
    left_out.update(unread_lines(config.rationales) if records is not None else {})
    if not encoded:
        raise SlmError(f"no training examples left for task {config.task!r} (left out: {dict(left_out)})")
    val_encoded, _ = multitask.encode_items(tokenizer, multitask.build_items(val, None, label_source="gold")[0],
                                            config.max_len)
    collate = multitask.Collate(tokenizer.pad_token_id)
    if config.group_by_length:
        loader = DataLoader(encoded, collate_fn=collate, batch_sampler=multitask.LengthGroupedBatches(
            [multitask.length(e) for e in encoded], config.batch_size, seed=config.seed))
    else:
        loader = DataLoader(encoded, batch_size=config.batch_size, shuffle=True, drop_last=False, collate_fn=collate)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    warmup = max(1, config.warmup_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    accelerator.register_for_checkpointing(scheduler)
    # one process: project to the vocabulary only at target positions (DDP needs the wrapped forward)
    loss_of = multitask.target_loss if accelerator.num_processes == 1 else (lambda m, b: m(**b).loss)

    step, history, evals, plateau = _resume(accelerator, out / "resume", config)
    resumed_from = step
    test = task.load("test")
    micro = step * config.grad_accum  # micro-batches already consumed
    bar = tqdm(total=config.steps, initial=step, desc="train", unit="step", file=sys.stderr, dynamic_ncols=True,
               mininterval=1.0 if sys.stderr.isatty() else 30.0, disable=not accelerator.is_main_process)
    model.train()
    with _StopOnSignal() as stop:
        while step < config.steps and not plateau.stop:
            epoch, skip = divmod(micro, len(loader))
            loader.set_epoch(epoch)
            for batch in accelerator.skip_first_batches(loader, skip) if skip else loader:
                with accelerator.accumulate(model):
                    label_loss = loss_of(model, batch["label"])
                    rationale_loss = (loss_of(model, batch["rationale"]) if config.multitask and batch["rationale"]
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
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
                if step % config.log_every == 0 or step == config.steps:
                    entry = {"step": step, "loss": loss.item(), "label_loss": label_loss.item(),
                             "rationale_loss": rationale_loss.item(), "lr": scheduler.get_last_lr()[0]}
                    history.append(entry)
                    accelerator.print(json.dumps(entry))
                if config.eval_every and step % config.eval_every == 0:
                    if val:
                        _validate(accelerator, model, tokenizer, task, val, val_encoded, config, step, plateau, out)
                    elif step < config.steps:
                        evals.append(_evaluate(accelerator, model, tokenizer, task, test[:config.eval_limit], config,
                                               step))
                    model.train()
                at_end = step >= config.steps or plateau.stop
                if not at_end and (stop.requested or (config.save_every and step % config.save_every == 0)):
                    _save_resume(accelerator, out / "resume", config, step, history, evals, plateau)
                if stop.requested and not at_end:
                    bar.close()
                    raise SystemExit(f"stopped by {stop.requested} at step {step}; checkpoint in {out / 'resume'}: "
                                     "run the same command to resume")
                if at_end:
                    break
    bar.close()

    if val and (not plateau.curve or plateau.curve[-1]["step"] != step):  # the last weights are a candidate too
        _validate(accelerator, model, tokenizer, task, val, val_encoded, config, step, plateau, out)
    if val and plateau.best_step != step and (out / "best").is_dir():
        accelerator.print(json.dumps({"restored_best_step": plateau.best_step, "last_step": step}))
        model = type(accelerator.unwrap_model(model)).from_pretrained(out / "best")
    final = _evaluate(accelerator, model, tokenizer, task, test[:config.eval_limit], config, step)
    record = TrainRecord(config=asdict(config), train_inputs=len(inputs), label_examples=len(encoded),
                         rationale_examples=sum(e.rationale is not None for e in encoded), left_out=dict(left_out),
                         steps=step, resumed_from_step=resumed_from, seconds=round(time.monotonic() - started, 1),
                         history=history, evals=evals, final_eval=final,
                         student_source={"kind": source.kind, "path": source.path},
                         validation=plateau.curve, best_step=plateau.best_step if val else step,
                         stopped="plateau" if plateau.stop else "steps")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        accelerator.unwrap_model(model).save_pretrained(out, save_function=accelerator.save)
        tokenizer.save_pretrained(out)
        config.save(out / "train_config.json")
        (out / "training_record.json").write_text(json.dumps(asdict(record), indent=2) + "\n")
        shutil.rmtree(out / "resume", ignore_errors=True)  # finished: nothing left to resume
        shutil.rmtree(out / "best", ignore_errors=True)
    accelerator.end_training()
    return record


class _StopOnSignal:
    """SIGTERM / SIGINT during training: finish the step, save a checkpoint, exit (resumed by re-running)."""

    def __enter__(self) -> "_StopOnSignal":
        self.requested: str | None = None
        self.previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        if self.requested:  # a second signal: stop now
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name


def _validate(accelerator: Accelerator, model, tokenizer, task, val, val_encoded, config: TrainConfig, step: int,
              plateau: Plateau, out: Path) -> None:
    """One point of the validation curve; the best weights so far are kept in `out/best/`."""
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        result = evaluate_model(unwrapped, tokenizer, task, val, max_new_tokens=config.max_new_tokens)
        loss = validation_loss(unwrapped, val_encoded, tokenizer.pad_token_id)
        improved = plateau.update(step, result.accuracy, loss, correct=result.correct, total=result.total)
        accelerator.print(json.dumps({"step": step, "val": result.line(), "val_loss": round(loss, 5),
                                      "best_step": plateau.best_step, "since_best": plateau.since_best}))
        if improved:
            tmp = out / "best.tmp"
            unwrapped.save_pretrained(tmp)
            shutil.rmtree(out / "best", ignore_errors=True)
            tmp.rename(out / "best")
    accelerator.wait_for_everyone()


@torch.no_grad()
def validation_loss(model, encoded: list[multitask.Encoded], pad_id: int, batch_size: int = 16) -> float:
    """Label-task cross-entropy per target token, teacher-forced, over `encoded`."""
    was_training = model.training
    model.eval()
    total = tokens = 0.0
    for start in range(0, len(encoded), batch_size):
        batch = multitask.pad([e.label for e in encoded[start:start + batch_size]], pad_id)
        n = int((batch["labels"][:, 1:] != multitask.IGNORE).sum())
        total += multitask.target_loss(model, batch).item() * n
        tokens += n
    model.train(was_training)
    return total / tokens if tokens else float("nan")


def check_rationales(items: list[multitask.TrainItem], kept: int, config: TrainConfig) -> None:
    """Refuse, before any weights load, a step-by-step run in which no input has a rationale (it would be
    standard fine-tuning under another name); warn with the count when only some inputs lack one."""
    missing = sum(item.rationale is None for item in items)
    if missing == 0:
        return
    if missing == len(items) and not config.allow_label_only:
        why = ("it has no kept rationale at all" if kept == 0 else
               f"its {kept} kept rationales match none of the train inputs' ids (another task or split?)")
        raise SlmError(f"step-by-step training needs rationales, but {config.rationales}: {why}, so all "
                       f"{len(items)} training inputs would train the label task only. Write rationales first "
                       "(`slm distill rationales ... --show 5` checks the teacher), train without --rationales "
                       "for standard fine-tuning, or pass --allow-label-only to go on")
    log.warning("%d of %d training inputs have no kept rationale in %s: they train the label task only",
                missing, len(items), config.rationales)


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
                 evals: list, plateau: Plateau) -> None:
    """Model, optimizer, scheduler and RNG states, then the step; written to a temp folder and renamed
    so a kill during the save leaves the previous checkpoint intact."""
    tmp = folder.with_name(folder.name + ".tmp")
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        (tmp / "progress.json").write_text(json.dumps({"step": step, "config": asdict(config), "history": history,
                                                          "evals": evals, "plateau": plateau.state()}))
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    accelerator.wait_for_everyone()


def _resume(accelerator: Accelerator, folder: Path, config: TrainConfig) -> tuple[int, list, list, Plateau]:
    """Continue from `folder` if a checkpoint is there; it must come from the same config (`steps` may grow)."""
    if not (folder / "progress.json").is_file():
        return 0, [], [], Plateau(config.patience)
    progress = json.loads((folder / "progress.json").read_text())
    saved = {k: v for k, v in progress["config"].items() if k not in GROWABLE}
    wanted = {k: v for k, v in asdict(config).items() if k not in GROWABLE}
    if saved != wanted:
        changed = sorted(k for k in wanted if saved.get(k) != wanted[k])
        raise SlmError(f"{folder} was written with different settings ({', '.join(changed)}); "
                       "use the same settings to resume, or a new --out folder")
    accelerator.load_state(str(folder))
    accelerator.print(f"resumed from step {progress['step']} ({folder})")
    plateau = Plateau.from_state(progress["plateau"] | {"patience": config.patience})
    return progress["step"], progress["history"], progress["evals"], plateau
