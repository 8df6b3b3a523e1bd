"""The distilling step-by-step results table: standard fine-tuning vs step-by-step at 25/50/100% data.

    python bench/distill_table.py run   [--out runs/dss-table] [--tasks svamp esnli] [--steps 60] [TRAIN ARGS]
    python bench/distill_table.py table [--out runs/dss-table]

Every cell trains with TABLE_SETTINGS; any further `slm distill train` argument (`--lr 2e-4`,
`--seed 1`, `--save-every 20`, ...) is passed on to every cell and overrides them.

`run` trains one SmolLM2-135M student per cell (task × data fraction × method) through the
`slm distill` CLI in a fresh process each, with the same seed, steps, batch and learning rate for
every cell; a cell whose `training_record.json` exists is skipped, so re-running after a kill
finishes the table (a cell killed mid-way restarts; `--save-every` makes it resume instead).
The rationales are the paper's recorded PaLM-540B outputs, parsed into one store per task.
`table` reads the records and prints the markdown table (accuracy, correct/total, steps, seconds).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FRACTIONS = (0.25, 0.5, 1.0)
METHODS = ("standard", "step-by-step")
DATA = {"svamp": None, "esnli": "../shared/data/esnli-dss", "cqa": "../shared/data/cqa-dss"}
TABLE_SETTINGS = ["--batch-size", "8", "--lr", "1e-4", "--warmup-steps", "5", "--lam", "1", "--seed", "0",
                  "--save-every", "0", "--log-every", "10"]
EVAL_LIMIT = {"svamp": 0, "esnli": 300, "cqa": 300}       # test inputs scored at the end (0: all, SVAMP's 200)
MAX_NEW_TOKENS = {"svamp": 24, "esnli": 6, "cqa": 16}


def cell_dir(out: Path, task: str, fraction: float, method: str) -> Path:
    return out / f"{task}-{int(fraction * 100)}-{method}"


def distill(*args: str, threads: int) -> None:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "slm.distill", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env=env, cwd=ROOT)


def run(args: argparse.Namespace, train_args: list[str]) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for task in args.tasks:
        data = ["--data", str(ROOT / DATA[task])] if DATA[task] else []
        store = out / f"{task}_train_palm.jsonl"
        distill("rationales", "--task", task, *data, "--teacher", "recorded", "--split", "train",
                "--out", str(store), threads=args.threads)
        for fraction in FRACTIONS:
            for method in METHODS:
                cell = cell_dir(out, task, fraction, method)
                if (cell / "training_record.json").exists():
                    print(f"= {cell.name}: done", flush=True)
                    continue
                rationales = ["--rationales", str(store)] if method == "step-by-step" else []
                distill("train", "--task", task, *data, "--student", args.student, "--out", str(cell), *rationales,
                        "--train-fraction", str(fraction), "--steps", str(args.steps),
                        "--eval-limit", str(EVAL_LIMIT[task]), "--max-new-tokens", str(MAX_NEW_TOKENS[task]),
                        *TABLE_SETTINGS, *train_args, threads=args.threads)


def table(args: argparse.Namespace) -> None:
    out = Path(args.out)
    tasks = [t for t in DATA if any(out.glob(f"{t}-*"))]
    head = "| method | " + " | ".join(f"{t} {int(f * 100)}%" for t in tasks for f in FRACTIONS) + " |"
    print(head)
    print("|---|" + "---:|" * (len(tasks) * len(FRACTIONS)))
    details = []
    for method in METHODS:
        row = []
        for task in tasks:
            for fraction in FRACTIONS:
                rec_path = cell_dir(out, task, fraction, method) / "training_record.json"
                if not rec_path.exists():
                    row.append("not run")
                    continue
                rec = json.loads(rec_path.read_text())
                ev = rec["final_eval"]
                row.append(f"{100 * ev['accuracy']:.1f}% ({ev['correct']}/{ev['total']})")
                cfg = rec["config"]
                details.append(f"- {task} {int(fraction * 100)}% {method}: {rec['train_inputs']} train inputs, "
                               f"{rec['label_examples']} label / {rec['rationale_examples']} rationale examples, "
                               f"{rec['steps']} steps × batch {cfg['batch_size']}, lr {cfg['lr']}, seed {cfg['seed']}, "
                               f"{rec['seconds']:.0f} s, unparseable answers {ev['unparseable']}"
                               + (f", counted apart (record's left_out) {rec['left_out']}" if rec["left_out"] else ""))
        print(f"| {method} | " + " | ".join(row) + " |")
    print()
    print("\n".join(details))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("--out", default="runs/dss-table")
    r.add_argument("--tasks", nargs="+", default=["svamp", "esnli"], choices=sorted(DATA))
    r.add_argument("--student", default="smollm2")
    r.add_argument("--steps", type=int, default=60)
    r.add_argument("--threads", type=int, default=2, help="torch threads per training process")
    t = sub.add_parser("table")
    t.add_argument("--out", default="runs/dss-table")
    args, train_args = ap.parse_known_args()
    if args.command == "run":
        run(args, train_args)
    elif train_args:
        ap.error(f"unrecognized arguments: {' '.join(train_args)}")
    else:
        table(args)


if __name__ == "__main__":
    main()
