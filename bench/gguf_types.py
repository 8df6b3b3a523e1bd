"""What each GGUF block type becomes in a package, and what it costs: bytes on disk against the GGUF,
and greedy agreement / perplexity against the GGUF's own fp32 arithmetic, for slm's exact carry
(`--quant gguf`), slm's re-quantised `--quant compact`, and llama.cpp on the same file.

    python bench/gguf_types.py [--types Q4_0 Q4_1 Q5_0 Q5_K_M Q6_K Q8_0] [--source GGUF] [--text-prompts 8]

Each type's GGUF is made from --source (default: the embedded SmolLM2 Q4_1) by llama.cpp's own
quantiser (bench/peers/llamacpp.py's prepare job, in its environment .bench-venvs/llamacpp). The
reference of each file is the fp32 twin of its exact package (bench/fp32_twin.py: the carried blocks
at accuracy_level 0, which equal transformers' dequantised load of the file). Quality comes from
bench/isa_quality.py (native CPU only). Writes results/gguf_types.json and prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LLAMACPP_PY = ROOT / ".bench-venvs" / "llamacpp" / "bin" / "python"


def folder_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.iterdir()) / 2 ** 20


def types_in(gguf_file: Path) -> str:
    import collections

    import gguf
    c = collections.Counter(t.tensor_type.name for t in gguf.GGUFReader(str(gguf_file)).tensors)
    return ", ".join(f"{k} x{v}" for k, v in sorted(c.items()) if k not in ("F32",))


def main(argv=None) -> None:
    from slm.core.sources import default_gguf

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--types", nargs="+", default=["Q4_0", "Q4_1", "Q5_0", "Q5_K_M", "Q6_K", "Q8_0"])
    p.add_argument("--source", type=Path, default=None, help="the GGUF to re-quantise (default: the embedded one)")
    p.add_argument("--work", type=Path, default=Path.home() / ".cache" / "slm" / "bench" / "gguf-types")
    p.add_argument("--text-prompts", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--out", type=Path, default=ROOT / "results" / "gguf_types.json")
    a = p.parse_args(argv)
    source = a.source or default_gguf()
    a.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for typ in a.types:
        d = a.work / typ
        d.mkdir(exist_ok=True)
        g = d / f"model-{typ}.gguf"
        if not g.is_file():
            job = d / "prepare.json"
            job.write_text(json.dumps({"mode": "prepare", "model": str(source), "out": str(g), "variant": typ}))
            subprocess.run([str(LLAMACPP_PY), str(ROOT / "bench" / "peers" / "llamacpp.py"), str(job)], check=True,
                           capture_output=True)
        pkgs = {}
        for mode in ("gguf", "compact"):
            pkgs[mode] = d / f"slm-{mode}"
            if not (pkgs[mode] / "manifest.json").is_file():
                subprocess.run([sys.executable, "-m", "slm.cli", "export", str(g), str(pkgs[mode]), "--quant", mode,
                                "--no-attention-stats"], check=True, cwd=ROOT, capture_output=True)
        twin = d / "fp32-twin"
        if not (twin / "manifest.json").is_file():
            subprocess.run([sys.executable, str(ROOT / "bench" / "fp32_twin.py"), str(pkgs["gguf"]), str(twin)],
                           check=True, cwd=ROOT, capture_output=True)
        out = d / "isa_quality.json"
        if not out.is_file():
            subprocess.run([sys.executable, str(ROOT / "bench" / "isa_quality.py"), str(pkgs["gguf"]), str(pkgs["compact"]),
                            "--reference", str(twin), "--llamacpp", str(LLAMACPP_PY), "--gguf", str(g),
                            "--text-prompts", str(a.text_prompts), "--new-tokens", str(a.new_tokens), "--windows", "1",
                            "--out", str(out)], check=True, cwd=ROOT, capture_output=True)
        quality = json.loads(out.read_text())["rows"]
        by = {("llama.cpp" if r["system"].startswith("llama.cpp") else Path(r["system"]).name): r for r in quality}
        gmib = g.stat().st_size / 2 ** 20
        row = {"type": typ, "tensors": types_in(g), "gguf_mib": gmib}
        for name, key in (("slm gguf (exact)", "slm-gguf"), ("slm compact", "slm-compact"), ("llama.cpp", "llama.cpp")):
            r = by[key]
            row[name] = {"mib": gmib if key == "llama.cpp" else folder_mib(pkgs[key.split("-")[1]]),
                         "agreement": statistics.fmean(r["agreement"]), "ppl": r["ppl_ratio"] - 1}
        rows.append(row)
        print(f"{typ}: {row}", file=sys.stderr, flush=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"command": "python bench/gguf_types.py " + " ".join(argv or sys.argv[1:]), "rows": rows},
                                indent=1))
    print(f"`python bench/gguf_types.py {' '.join(argv or sys.argv[1:])}` (from {source.name}; greedy agreement of "
          f"{a.new_tokens} tokens on {a.text_prompts + 8} prompts and perplexity against each file's fp32 twin)\n")
    print("| GGUF | tensor types | GGUF MiB | exact carry MiB (×) | agreement | ppl | compact MiB (×) | agreement | ppl "
          "| llama.cpp agreement | ppl |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        e, c, l = r["slm gguf (exact)"], r["slm compact"], r["llama.cpp"]
        print(f"| {r['type']} | {r['tensors']} | {r['gguf_mib']:.0f} | {e['mib']:.0f} ({e['mib'] / r['gguf_mib']:.2f}) | "
              f"{e['agreement']:.1f} | {e['ppl']:+.2%} | {c['mib']:.0f} ({c['mib'] / r['gguf_mib']:.2f}) | {c['agreement']:.1f} | "
              f"{c['ppl']:+.2%} | {l['agreement']:.1f} | {l['ppl']:+.2%} |")


if __name__ == "__main__":
    main()
