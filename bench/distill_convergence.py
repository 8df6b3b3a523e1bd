"""Step-by-step against standard fine-tuning, each trained to a validation plateau, several seeds,
with paired bootstrap 95% intervals (the table of docs/DISTILL.md "Results").

    python bench/distill_convergence.py run --task svamp --student smollm2 --out runs/conv --seeds 0 1 \\
        --store palm=runs/svamp_palm.jsonl --store qwen=/work/jobs/distill/svamp-train-qwen2.5-coder-1.5b.jsonl \\
        -- --steps 3000 --val-size 80 --eval-every 50 --patience 5 --save-every 50 --batch-size 8 --lr 1e-4
    python bench/distill_convergence.py table --task svamp --out runs/conv \\
        --teacher-store qwen=/work/jobs/distill/svamp-test-qwen2.5-coder-1.5b.jsonl --plot results/distill/curves.png

`run` makes one cell per arm and seed, each a fresh `python -m slm.distill` process: `untrained` (the
student as it starts, scored once, `--few-shot` solved train inputs before each prompt), `standard` (gold labels only) and `step-by-step:<NAME>` for each
`--store NAME=PATH`. Everything after `--` goes to every `distill train` (the plateau settings). Each
cell's test predictions are written by `distill eval` to `<cell>/test.pred.jsonl`; a cell that has
them is skipped, and `--save-every` in the train settings makes a killed cell resume.
`packages` exports one trained cell (default: the best step-by-step cell) with `slm export` at each
`--quants` mode and scores every package on the test split through the Engine (`distill eval --model PKG`),
printing accuracy beside PyTorch's and how many outputs are identical to PyTorch's.
`table` prints the markdown table: accuracy per seed and mean, and for each step-by-step arm its
difference from standard with a paired bootstrap 95% interval over the test inputs (`slm.distill.stats`),
the teacher's own test accuracy from a store of the test split, and a plot of the validation curves.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from slm.distill.stats import paired_bootstrap  # noqa: E402


def distill(*args: str) -> None:
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "slm.distill", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env=env, cwd=ROOT)


def arms(stores: dict[str, str], standard: bool = True) -> list[tuple[str, str | None]]:
    return [("standard", None)] * standard + [(f"step-by-step:{name}", path) for name, path in stores.items()]


def cell_dir(out: Path, arm: str, seed: int) -> Path:
    return out / f"{arm.replace(':', '-')}-s{seed}"


def run(args: argparse.Namespace, train_args: list[str]) -> None:
    out = Path(args.out)
    task = ["--task", args.task] + (["--data", args.data] if args.data else [])
    scoring = ["--max-new-tokens", str(args.max_new_tokens)] + (["--limit", str(args.test_limit)] if args.test_limit else [])
    untrained = out / "untrained"
    if not args.no_standard and not (untrained / "test.pred.jsonl").is_file():   # scored by the standard instance
        untrained.mkdir(parents=True, exist_ok=True)
        distill("eval", *task, "--model", args.student, *scoring, "--few-shot", str(args.few_shot),
                "--predictions", str(untrained / "test.pred.jsonl"))
    for seed in args.seeds:
        for arm, store in arms(dict(s.split("=", 1) for s in args.store), standard=not args.no_standard):
            cell = cell_dir(out, arm, seed)
            if (cell / "test.pred.jsonl").is_file():
                print(f"= {cell.name}: done", flush=True)
                continue
            rationales = ["--rationales", store] if store else []
            distill("train", *task, "--student", args.student, *rationales, "--out", str(cell), "--seed", str(seed),
                    "--eval-limit", "1", *train_args)   # the test set is scored once, below, with predictions
            distill("eval", *task, "--model", str(cell), *scoring, "--predictions", str(cell / "test.pred.jsonl"))


# Distilling step-by-step (Hsieh et al., 2023), T5-Base on 100% of the data, step-by-step − standard (points)
PAPER_MARGIN = {"svamp": 65.50 - 62.63, "cqa": 63.29 - 62.19, "esnli": 89.51 - 88.38}


def correctness(path: Path) -> dict[str, float]:
    return {row["id"]: float(row["correct"]) for row in map(json.loads, path.read_text().splitlines())}


def table(args: argparse.Namespace) -> None:
    out = Path(args.out)
    names = sorted({p.parent.name.rsplit("-s", 1)[0] for p in out.glob("*-s*/test.pred.jsonl")})
    rows, per_arm = [], {}
    base = out / "untrained" / "test.pred.jsonl"
    if base.is_file():
        c = correctness(base)
        rows.append(f"| student before training (few-shot) | — | {100 * sum(c.values()) / len(c):.1f}% | — |")
    for name in ["standard"] + [n for n in names if n != "standard"]:
        seeds = sorted(out.glob(f"{name}-s*/test.pred.jsonl"))
        if not seeds:
            continue
        runs = [correctness(p) for p in seeds]
        per_arm[name] = {i: sum(r[i] for r in runs) / len(runs) for i in runs[0]}
        accs = [100 * sum(r.values()) / len(r) for r in runs]
        steps = [json.loads((p.parent / "training_record.json").read_text()) for p in seeds]
        stopped = ", ".join(f"s{p.parent.name.rsplit('-s', 1)[1]}: best step {r['best_step']} of {r['steps']} "
                            f"({r['stopped']})" for p, r in zip(seeds, steps))
        rows.append(f"| {name.replace('step-by-step-', 'step-by-step, ')} | {' / '.join(f'{a:.1f}%' for a in accs)} | "
                    f"{sum(accs) / len(accs):.1f}% | {stopped} |")
    for spec in args.teacher_store:
        label, path = spec.split("=", 1)
        records = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
        agree = sum(bool(r.get("agrees_with_gold")) for r in records)
        split = records[0]["split"] if records else "?"
        rows.append(f"| teacher {label} (its own answers; {len(records)} {split} inputs stored) | — | "
                    f"{100 * agree / max(1, len(records)):.1f}% | unparseable count as wrong |")
    print("| student | accuracy per seed | mean | stopping |\n|---|---:|---:|---|")
    print("\n".join(rows))
    if "standard" in per_arm and len(per_arm) > 1:
        margin = PAPER_MARGIN.get(args.task)
        paper = f" (the paper's T5-Base margin: {margin:+.1f})" if margin is not None else ""
        print(f"\n| step-by-step − standard{paper} | points, paired bootstrap 95% interval | test inputs |\n|---|---:|---:|")
        for name, scores in per_arm.items():
            if name != "standard":
                d = paired_bootstrap(scores, per_arm["standard"])
                print(f"| {name.replace('step-by-step-', '')} | {d.line()} | {d.inputs} |")
    teachers = [n for n in per_arm if n != "standard"]
    if len(teachers) > 1:
        print("\n| one teacher's rationales − another's | points, paired bootstrap 95% interval | test inputs |"
              "\n|---|---:|---:|")
        for i, a in enumerate(teachers):
            for b in teachers[i + 1:]:
                d = paired_bootstrap(per_arm[a], per_arm[b])
                print(f"| {a.replace('step-by-step-', '')} − {b.replace('step-by-step-', '')} | {d.line()} | {d.inputs} |")
    if base.is_file() and per_arm:
        untrained = correctness(base)
        print("\n| trained − untrained (few-shot) | points, paired bootstrap 95% interval | test inputs |\n|---|---:|---:|")
        for name, scores in per_arm.items():
            d = paired_bootstrap(scores, {i: untrained[i] for i in scores})
            print(f"| {name.replace('step-by-step-', 'step-by-step, ')} | {d.line()} | {d.inputs} |")
    if args.plot:
        plot(out, Path(args.plot))


def best_cell(out: Path) -> Path:
    """The trained cell with the highest test accuracy (step-by-step arms first on a tie)."""
    cells = [p.parent for p in out.glob("*-s*/test.pred.jsonl")]
    if not cells:
        raise SystemExit(f"{out}: no trained cell with test predictions yet (run `run` first)")
    score = lambda c: (sum(correctness(c / "test.pred.jsonl").values()), c.name.startswith("step-by-step"))
    return max(cells, key=score)


def packages(args: argparse.Namespace) -> None:
    out = Path(args.out)
    cell = out / args.cell if args.cell else best_cell(out)
    task = ["--task", args.task] + (["--data", args.data] if args.data else [])
    torch_rows = {r["id"]: r for r in map(json.loads, (cell / "test.pred.jsonl").read_text().splitlines())}
    rows = [f"| PyTorch (transformers, fp32) | {100 * sum(r['correct'] for r in torch_rows.values()) / len(torch_rows):.1f}% "
            f"({sum(r['correct'] for r in torch_rows.values())}/{len(torch_rows)}) | — |"]
    for quant in args.quants:
        pkg, preds = cell / f"pkg-{quant}", cell / f"pkg-{quant}.pred.jsonl"
        if not preds.is_file():
            if not (pkg / "manifest.json").is_file():
                cmd = [sys.executable, "-m", "slm.cli", "export", str(cell), str(pkg), "--quant", quant, "--no-attention-stats"]
                print("+", " ".join(cmd), flush=True)
                subprocess.run(cmd, check=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
            distill("eval", *task, "--model", str(pkg), "--max-new-tokens", str(args.max_new_tokens),
                    *(["--limit", str(args.test_limit)] if args.test_limit else []), "--predictions", str(preds))
        got = {r["id"]: r for r in map(json.loads, preds.read_text().splitlines())}
        same = sum(got[i]["output"] == torch_rows[i]["output"] for i in got if i in torch_rows)
        right = sum(r["correct"] for r in got.values())
        rows.append(f"| Engine, `--quant {quant}` package | {100 * right / len(got):.1f}% ({right}/{len(got)}) | {same}/{len(got)} |")
    print(f"\n{cell.name}: the same student through each package\n")
    print("| student as run | test accuracy | outputs identical to PyTorch's |\n|---|---:|---:|")
    print("\n".join(rows))


def plot(out: Path, path: Path) -> None:
    """Training loss (smoothed over 5 logs) and validation accuracy per cell, one colour per cell."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss_ax, val_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for record_path in sorted(out.glob("*-s*/training_record.json")):
        record = json.loads(record_path.read_text())
        steps, losses = [h["step"] for h in record["history"]], [h["label_loss"] for h in record["history"]]
        smooth = [sum(losses[max(0, i - 4):i + 1]) / len(losses[max(0, i - 4):i + 1]) for i in range(len(losses))]
        line, = loss_ax.plot(steps, smooth, lw=1, label=record_path.parent.name)
        curve = record["validation"]
        val_ax.plot([p["step"] for p in curve], [100 * p["accuracy"] for p in curve], marker=".", color=line.get_color(),
                    label=record_path.parent.name)
        val_ax.axvline(record["best_step"], color=line.get_color(), ls=":", lw=0.8)
    loss_ax.set(xlabel="optimizer step", ylabel="label-task loss (train, mean of 5 logs)", yscale="log")
    val_ax.set(xlabel="optimizer step", ylabel="validation accuracy (%); dotted: the step kept")
    val_ax.legend(fontsize=7)
    fig.suptitle(out.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    print(f"\nplot: {path}")


def main() -> None:
    argv = sys.argv[1:]
    train_args = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("--task", required=True)
    r.add_argument("--data")
    r.add_argument("--student", default="smollm2")
    r.add_argument("--out", required=True)
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    r.add_argument("--store", action="append", default=[], metavar="NAME=PATH", help="a rationale store (train split)")
    r.add_argument("--no-standard", action="store_true", help="only the --store arms (another instance trains the "
                                                               "standard cells)")
    r.add_argument("--max-new-tokens", type=int, default=24)
    r.add_argument("--few-shot", type=int, default=4, help="solved train inputs before each prompt of the untrained "
                                                          "student (it has never seen the label task's format)")
    r.add_argument("--test-limit", type=int, default=0, help="score the first N test inputs (0: all)")
    t = sub.add_parser("table")
    t.add_argument("--task", required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--teacher-store", action="append", default=[], metavar="NAME=PATH",
                   help="the teacher's store of the test split: its own accuracy")
    t.add_argument("--plot", help="write the validation curves to this PNG")
    k = sub.add_parser("packages")
    k.add_argument("--task", required=True)
    k.add_argument("--data")
    k.add_argument("--out", required=True)
    k.add_argument("--cell", help="a cell folder name under --out (default: the best by test accuracy)")
    k.add_argument("--quants", nargs="+", default=["fp32", "int8", "int4", "compact"])
    k.add_argument("--max-new-tokens", type=int, default=24)
    k.add_argument("--test-limit", type=int, default=0, help="score the first N test inputs (0: all), as `run` did")
    args = parser.parse_args(argv)
    {"run": lambda: run(args, train_args), "table": lambda: table(args), "packages": lambda: packages(args)}[args.command]()


if __name__ == "__main__":
    main()
