"""Where a decode step's time goes: ONNX Runtime's profiler over one-token steps after `--past` cached
tokens, by op type (MatMulNBits by projection), with the KV bytes GroupQueryAttention reads.

    python bench/profile_decode.py PACKAGE [--past 512 2048] [--steps 20] [--threads 2]
"""
import argparse
import collections
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

from slm.core.package import read_manifest  # noqa: E402


def profile(pkg: str, past: int, steps: int, threads: int) -> tuple[collections.Counter, int]:
    man = read_manifest(pkg)
    d = man.dims
    so = ort.SessionOptions()
    so.enable_profiling, so.intra_op_num_threads, so.profile_file_prefix = True, threads, f"/tmp/ortprof-{past}"
    s = ort.InferenceSession(str(Path(pkg) / man.model_file), so, providers=["CPUExecutionProvider"])
    cap = past + steps + 1
    dtype = np.float16 if man.kv.dtype == "float16" else np.float32
    rng = np.random.default_rng(0)              # attention's cost does not depend on the values
    kv = {n: (rng.standard_normal((1, d.num_kv_heads, cap, d.head_dim)) * 0.1).astype(dtype)
          for n in man.kv.past_key + man.kv.past_value}
    # as the engine runs it: past and present bound to the same buffer (GroupQueryAttention's shared-buffer
    # mode), so a step writes one new slot instead of copying the cache into a new output
    io = s.io_binding()
    for past_name, present_name in zip(man.kv.past_key + man.kv.past_value, man.kv.present_key + man.kv.present_value):
        buf = kv[past_name]
        io.bind_cpu_input(past_name, buf)
        io.bind_output(present_name, "cpu", 0, dtype, list(buf.shape), buf.ctypes.data)
    io.bind_output("logits")
    for t in range(past, past + steps):
        for name, value in dict(input_ids=np.array([[100 + t % 1000]]), position_ids=np.array([[t]]),
                                seqlens_k=np.array([t], np.int32), total_sequence_length=np.array(t + 1, np.int32),
                                num_logits_to_keep=np.array(1)).items():
            io.bind_cpu_input(name, value)
        s.run_with_iobinding(io)
    events = json.load(open(s.end_profiling()))
    agg = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            op = e["args"].get("op_name")
            if op == "MatMulNBits":
                op += ":" + e["name"].split("/")[0].split(".")[-1]
            agg[op] += e["dur"]
    kv_bytes = man.kv.bytes_per_token(d) * past        # K and V of every layer, read once per step
    return agg, kv_bytes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("package")
    p.add_argument("--past", type=int, nargs="+", default=[256])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    print(f"onnxruntime {ort.__version__}, {a.threads} threads, {a.steps} steps after each --past\n")
    for past in a.past:
        agg, kv_bytes = profile(a.package, past, a.steps, a.threads)
        tot = sum(agg.values())
        print(f"past {past} tokens: {tot / a.steps / 1000:.2f} ms/step in kernels; KV read by attention "
              f"{kv_bytes / 2**20:.1f} MiB/step")
        print("| op | ms/step | share |\n|---|---:|---:|")
        for k, v in agg.most_common(12):
            print(f"| {k} | {v / a.steps / 1000:.2f} | {100 * v / tot:.1f}% |")
        print()


if __name__ == "__main__":
    main()
