"""`slm distill rationales | train | eval`: the three stages of distilling step-by-step.

`register(subparsers)` adds the subcommands; each sets `func`, called as `func(args) -> int`.
`python -m slm.distill ...` runs the same commands without the rest of slm.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from slm.core.errors import SlmError

TEACHERS = ("recorded", "human", "local", "openai")


def register(subparsers: argparse._SubParsersAction) -> None:
    r = subparsers.add_parser("rationales", help="ask a teacher for a rationale and answer per input (resumable)")
    _task_args(r)
    r.add_argument("--split", default="train", help="train | test (default train)")
    r.add_argument("--teacher", required=True, choices=TEACHERS,
                   help="recorded: the paper's PaLM-540B outputs; human: the data's own explanations; "
                        "local: a transformers model (--model); openai: an OpenAI-compatible endpoint")
    r.add_argument("--model", help="local: HF folder, .gguf or 'smollm2'; openai: the model name")
    r.add_argument("--base-url", help="openai: e.g. http://127.0.0.1:8000/v1")
    r.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"), help="openai: default $OPENAI_API_KEY")
    r.add_argument("--endpoint", default="completions", choices=("completions", "chat"),
                   help="openai: completions (the raw few-shot prompt) or chat (a system message with the reply "
                        "format and the worked examples as turns: for instruct models)")
    r.add_argument("--no-structured", dest="structured", action="store_false",
                   help="openai chat: do not send response_format (a JSON Schema {rationale, answer}); without "
                        "this flag it is sent, and dropped for the run if the server answers 400 to it")
    r.add_argument("--concurrency", type=int, default=4, help="openai: requests in flight (default 4)")
    r.add_argument("--timeout", type=float, default=60.0, help="openai: seconds per request (default 60)")
    r.add_argument("--retries", type=int, default=3, help="openai: retries with backoff (default 3)")
    r.add_argument("--max-new-tokens", type=int, default=256, help="live teachers: completion length")
    r.add_argument("--batch-size", type=int, default=4, help="local: prompts per generate call")
    r.add_argument("--filter-disagreeing", action="store_true",
                   help="reject rationales whose answer differs from the gold label")
    r.add_argument("--limit", type=int, help="only the first N inputs of the split")
    r.add_argument("--show", type=int, metavar="N",
                   help="dry run: print the teacher's replies to the first N inputs and how each parsed; store nothing")
    r.add_argument("--parse-check", type=int, default=20, metavar="N",
                   help="stop if most of this run's first N replies fail to parse (default 20; 0: never)")
    r.add_argument("--out", help="rationale store (JSONL); re-run to resume (not needed with --show)")
    r.set_defaults(func=_rationales)

    t = subparsers.add_parser("train", help="train a student on labels (+ rationales: step-by-step)")
    _task_args(t)
    t.add_argument("--student", required=True, help="HF checkpoint folder, .gguf file, or 'smollm2'")
    t.add_argument("--out", required=True, help="output folder: HF checkpoint + training_record.json")
    t.add_argument("--rationales", help="rationale store; omit for standard fine-tuning")
    t.add_argument("--allow-label-only", action="store_true",
                   help="train even if no input has a kept rationale in --rationales (else an error)")
    t.add_argument("--lam", type=float, default=1.0, help="λ in label_loss + λ·rationale_loss (default 1)")
    t.add_argument("--label-source", default="gold", choices=("gold", "teacher"))
    t.add_argument("--train-fraction", type=float, default=1.0, help="share of the train split (default 1)")
    t.add_argument("--train-limit", type=int, help="the first N train inputs only, in file order (e.g. the inputs a "
                                                   "teacher's store covers; default: all)")
    t.add_argument("--steps", type=int, default=100, help="optimizer steps (default 100)")
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--grad-accum", type=int, default=1)
    t.add_argument("--lr", type=float, default=5e-5)
    t.add_argument("--warmup-steps", type=int, default=0)
    t.add_argument("--max-len", type=int, default=256)
    t.add_argument("--log-every", type=int, default=10)
    t.add_argument("--eval-every", type=int, default=0,
                   help="steps between evaluations: on the validation slice with --val-size, else on the test split "
                        "(0: end only)")
    t.add_argument("--eval-limit", type=int, default=50, help="test inputs per evaluation (0: all)")
    t.add_argument("--val-size", type=int, default=0,
                   help="train inputs held out (never trained on) for the validation curve and --patience")
    t.add_argument("--patience", type=int, default=0,
                   help="stop after this many validation evaluations without improvement and keep the best "
                        "weights (0: run all --steps)")
    t.add_argument("--save-every", type=int, default=0,
                   help="steps between resumable checkpoints (0: none; SIGTERM/Ctrl-C always saves one)")
    t.add_argument("--no-group-by-length", dest="group_by_length", action="store_false",
                   help="plain shuffled batches instead of batches of similar lengths")
    t.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    t.add_argument("--max-new-tokens", type=int, default=32)
    t.add_argument("--mixed-precision", default="no", choices=("no", "fp16", "bf16"))
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(func=_train)

    e = subparsers.add_parser("eval", help="accuracy of a trained student on a split")
    _task_args(e)
    e.add_argument("--model", required=True,
                   help="checkpoint folder written by `train`, or an slm package exported from one (runs the Engine)")
    e.add_argument("--split", default="test")
    e.add_argument("--limit", type=int)
    e.add_argument("--max-new-tokens", type=int, default=32)
    e.add_argument("--predictions", help="write each prediction to this JSONL file")
    e.add_argument("--few-shot", type=int, default=0, metavar="K",
                   help="put the first K train inputs, solved, before each prompt and score the first line of each "
                        "answer (how a student that was never trained is scored)")
    e.set_defaults(func=_eval)


def _task_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", required=True, help="svamp | esnli | cqa | jsonl")
    p.add_argument("--data", help="task data folder (SVAMP defaults to the bundled copy)")


def _teacher(args: argparse.Namespace, task):
    from slm.distill import teachers

    if args.teacher == "recorded":
        return teachers.RecordedTeacher.for_split(task, args.split)
    if args.teacher == "human":
        return teachers.HumanTeacher()
    if not args.model:
        raise SlmError(f"teacher {args.teacher!r} needs --model")
    if args.teacher == "local":
        return teachers.LocalTeacher.from_source(args.model, max_new_tokens=args.max_new_tokens,
                                                 batch_size=args.batch_size)
    if not args.base_url:
        raise SlmError("teacher 'openai' needs --base-url (e.g. http://127.0.0.1:8000/v1)")
    return teachers.OpenAITeacher(teachers.EndpointConfig(
        base_url=args.base_url, model=args.model, api_key=args.api_key, endpoint=args.endpoint,
        concurrency=args.concurrency, timeout_s=args.timeout, retries=args.retries, max_tokens=args.max_new_tokens,
        structured=args.structured))


def _rationales(args: argparse.Namespace) -> int:
    from slm.distill.rationales import ParseCheck, generate_rationales
    from slm.distill.tasks import get_task

    task = get_task(args.task, args.data)
    if args.show is not None:
        return _show(task, args.split, _teacher(args, task), args.show)
    if not args.out:
        raise SlmError("--out is required (the rationale store to write), unless --show N asks for a dry run")
    run = generate_rationales(task, args.split, _teacher(args, task), args.out,
                              filter_disagreeing=args.filter_disagreeing, limit=args.limit,
                              parse_check=ParseCheck(after=args.parse_check))
    if run.store.repaired_partial_lines:
        print(f"repaired: cut {run.store.repaired_partial_lines} partial line left by an interrupted run")
    print(run.line())
    for detail, count in run.failures.items():
        print(f"  teacher failure x{count}: {detail}")
    return 0 if run.failed == 0 else 1


def _show(task, split: str, teacher, n: int) -> int:
    from slm.distill.tasks.base import Parsed
    from slm.distill.teachers import TeacherFailure
    from slm.distill.rationales import show_replies

    if n < 1:
        raise SlmError(f"--show needs N >= 1, got {n}")
    parsed_count = agreed = shown = 0
    for example, reply, parsed in show_replies(task, split, teacher, n):
        shown += 1
        print(f"=== {example.id}  gold: {example.label}")
        print(f"--- input\n{example.input}")
        if isinstance(reply, TeacherFailure):
            print(f"--- teacher failure: {reply.detail}\n")
            continue
        print(f"--- reply\n{reply if isinstance(reply, str) else reply}")
        if isinstance(parsed, Parsed):
            agrees = task.is_correct(parsed.answer, example)
            parsed_count, agreed = parsed_count + 1, agreed + agrees
            print(f"--- parsed ({parsed.format or 'fixed format'}): answer {parsed.answer!r} "
                  f"({'agrees' if agrees else 'DISAGREES'} with gold)\nrationale: {parsed.rationale}\n")
        else:
            print(f"--- REJECTED {parsed.reason}: {parsed.detail}\n")
    structured = getattr(teacher, "structured", None)
    mode = "" if structured is None else f"; structured output {'on' if structured else 'off'}"
    print(f"parsed {parsed_count}/{shown}, answer agrees with gold {agreed}/{shown}{mode} (dry run: nothing stored)")
    return 0


def _train(args: argparse.Namespace) -> int:
    from slm.distill.train import TrainConfig, train

    config = TrainConfig(
        student=args.student, task=args.task, out=args.out, data=args.data, rationales=args.rationales,
        allow_label_only=args.allow_label_only, lam=args.lam, label_source=args.label_source,
        train_fraction=args.train_fraction, train_limit=args.train_limit, steps=args.steps,
        batch_size=args.batch_size, grad_accum=args.grad_accum, lr=args.lr, warmup_steps=args.warmup_steps,
        max_len=args.max_len, log_every=args.log_every,
        eval_every=args.eval_every, eval_limit=args.eval_limit or None, val_size=args.val_size,
        patience=args.patience, save_every=args.save_every, group_by_length=args.group_by_length,
        threads=args.threads, max_new_tokens=args.max_new_tokens, mixed_precision=args.mixed_precision,
        seed=args.seed)
    record = train(config)
    print(json.dumps({"steps": record.steps, "stopped": record.stopped, "best_step": record.best_step,
                      "final_eval": record.final_eval, "left_out": record.left_out, "seconds": record.seconds}))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from slm.distill.evaluate import evaluate_checkpoint
    from slm.distill.tasks import get_task

    result = evaluate_checkpoint(args.model, get_task(args.task, args.data), args.split, limit=args.limit,
                                 max_new_tokens=args.max_new_tokens, few_shot=args.few_shot,
                                 predictions_out=args.predictions)
    print(result.line())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m slm.distill", description=__doc__.splitlines()[0])
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except SlmError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
