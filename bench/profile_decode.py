"""Where a decode step's time goes: ONNX Runtime's profiler over 20 one-token steps, by op type
(MatMulNBits by projection).  python bench/profile_decode.py PACKAGE"""
import sys, json, collections, numpy as np, onnxruntime as ort
sys.path.insert(0, ".")
from slm.package import read_manifest
pkg = sys.argv[1]
man = read_manifest(pkg)
so = ort.SessionOptions(); so.enable_profiling = True; so.intra_op_num_threads = 2; so.profile_file_prefix = "/tmp/ortprof"
s = ort.InferenceSession(pkg + "/model.onnx", so, providers=["CPUExecutionProvider"])
cap = 256; d = man.dims
kv = {n: np.zeros((1, d.num_kv_heads, cap, d.head_dim), np.float32) for n in man.kv.past_key + man.kv.past_value}
for t in range(20):
    feeds = dict(input_ids=np.array([[100+t]]), position_ids=np.array([[t]]), seqlens_k=np.array([t], np.int32), total_sequence_length=np.array(t+1, np.int32), num_logits_to_keep=np.array(1), **kv)
    s.run(["logits"], feeds)
f = s.end_profiling()
ev = json.load(open(f))
agg = collections.Counter()
for e in ev:
    if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
        agg[(e["args"].get("op_name")) + ("" if "layers" not in e["name"] else "") + (":" + e["name"].split("/")[0].split(".")[-1] if e["args"].get("op_name")=="MatMulNBits" else "")] += e["dur"]
tot = sum(agg.values())
for k, v in agg.most_common(12): print(f"{k:40s} {v/20/1000:8.2f} ms/step {100*v/tot:5.1f}%")
