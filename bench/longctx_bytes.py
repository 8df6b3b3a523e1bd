"""Long-context score against KV bytes for each KV dtype x policy: the score-per-byte curve.

    python bench/longctx_bytes.py --model PACKAGE --dtypes fp32 int8 int4 --out results/longctx-bytes \\
        -- --policies streaming h2o tova snapkv knorm namm --budgets 0.5 0.25 --lengths 1024 2048 --samples 2

Runs `slm eval longctx` once per dtype (into OUT/<dtype>/, each resumable: a killed run goes on where it
stopped), everything after `--` passed to each, then prints one table of every (dtype, policy, budget)
cell: mean score, mean KV MiB (scales included, counted at the cell's dtype), those bytes as a share of
the fp32 full cache's, and the score as a share of the fp32 full cache's; then, for each byte share in
`--at`, the best cell at or under it. Writes OUT/bytes.png: score against KV MiB, one colour per dtype.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cells(out: Path, dtype: str) -> list[dict]:
    path = out / dtype / "results.json"
    if not path.is_file():
        raise SystemExit(f"no results for {dtype}: {path} (run without --table-only first)")
    return json.loads(path.read_text())["cells"]


def mean(rows: list[dict], key: str) -> float:
    vals = [r[key] for r in rows if key in r]
    return statistics.mean(vals) if vals else float("nan")


def points(out: Path, dtypes: list[str]) -> list[dict]:
    pts = []
    for d in dtypes:
        for c in cells(out, d):
            pts.append({"dtype": d, "policy": c["policy"], "budget": c["budget"], "score": mean(c["rows"], "score"),
                        "mib": mean(c["rows"], "kv_bytes") / 2**20, "cases": sum("score" in r for r in c["rows"])})
    return pts


def table(pts: list[dict], at: list[float]) -> str:
    ref = next((p for p in pts if p["dtype"] == "fp32" and p["policy"] == "full"), None)
    if ref is None:
        raise SystemExit("the table compares against the fp32 full cache: include fp32 in --dtypes")
    lines = [f"fp32 full cache: score {ref['score']:.3f}, {ref['mib']:.1f} MiB (mean over {ref['cases']} cases)", "",
             "| KV dtype | cache | score | KV MiB | bytes / fp32 full | score / fp32 full |", "|---|---|---:|---:|---:|---:|"]
    for p in sorted(pts, key=lambda p: -p["mib"]):
        cache = "full cache" if p["policy"] == "full" else f"{p['policy']} @ {p['budget']:.0%} of the prompt"
        lines.append(f"| {p['dtype']} | {cache} | {p['score']:.3f} | {p['mib']:.1f} | {p['mib'] / ref['mib']:.1%} | "
                     f"{p['score'] / ref['score']:.1%} |" if ref["score"] else "| — |")
    lines += ["", "| bytes at most | best cell | score / fp32 full |", "|---:|---|---:|"]
    for share in at:
        fit = [p for p in pts if p["mib"] <= share * ref["mib"] * 1.001]
        if fit:
            best = max(fit, key=lambda p: (p["score"], -p["mib"]))
            cache = "full" if best["policy"] == "full" else f"{best['policy']} @ {best['budget']:.0%}"
            lines.append(f"| {share:.1%} | {best['dtype']} {cache} ({best['mib']:.1f} MiB) | "
                         f"{best['score'] / ref['score']:.1%} |")
    return "\n".join(lines)


def plot(pts: list[dict], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    colours = {"fp32": "tab:blue", "fp16": "tab:purple", "int8": "tab:green", "int4": "tab:orange"}
    markers = dict(zip(["full", "streaming", "h2o", "tova", "snapkv", "knorm", "namm"], "*osD^vP"))
    for p in pts:
        ax.scatter(p["mib"], p["score"], color=colours.get(p["dtype"], "k"), marker=markers.get(p["policy"], "x"),
                   s=90 if p["policy"] == "full" else 40)
    for d in dict.fromkeys(p["dtype"] for p in pts):
        ax.scatter([], [], color=colours.get(d, "k"), label=d)
    for name, m in markers.items():
        if any(p["policy"] == name for p in pts):
            ax.scatter([], [], color="grey", marker=m, label=name)
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xticks(sorted({round(p["mib"], 1) for p in pts if p["policy"] == "full"}))
    ax.set_xlabel("KV cache MiB (mean per case, at the dtype, scales included)")
    ax.set_ylabel("mean score")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    fig.savefig(path, dpi=120, bbox_inches="tight")


def main() -> None:
    argv = sys.argv[1:]
    passthrough = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--dtypes", nargs="+", default=["fp32", "int8", "int4"])
    ap.add_argument("--out", default="results/longctx-bytes")
    ap.add_argument("--at", nargs="*", type=float, default=[0.25, 0.125], help="byte shares of the fp32 full cache")
    ap.add_argument("--table-only", action="store_true", help="print the table of the runs already in --out")
    a = ap.parse_args(argv)
    out = Path(a.out)
    if not a.table_only:
        for d in a.dtypes:
            cmd = [sys.executable, "-m", "slm.cli", "eval", "longctx", "--kv-dtype", d, "--out", str(out / d),
                   *(["--model", a.model] if a.model else []), *passthrough]
            print("+", " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True, cwd=ROOT)
    pts = points(out, a.dtypes)
    print(table(pts, a.at))
    package = json.loads((out / a.dtypes[0] / "results.json").read_text())["package"]
    plot(pts, out / "bytes.png", f"{Path(package).name}: long-context score against KV bytes")
    print(f"\nplot: {out / 'bytes.png'}")


if __name__ == "__main__":
    main()
