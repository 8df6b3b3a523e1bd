import sys, numpy as np
sys.path.insert(0, "runs/oracle")
import sim; sim.CHUNKED = len(sys.argv) > 2
from sim import load, simulate
feats = ["log_mass_per_query", "log_cum", "log_knorm"]
names = feats + ["given_q", "given_sink", "given_user64", "given_first64"]
ps = load(sys.argv[1], feats)
for i, f in enumerate(names):
    for sgn in (1, -1):
        w = np.zeros(len(names), np.float32); w[i] = sgn
        r = np.array([simulate(p, w, 0.25) for p in ps])
        print(f"{f:20} {sgn:+d}  ev-weighted {r[:,0].mean():.3f}  top-heads {r[:,1].mean():.3f}  unweighted {r[:,2].mean():.3f}", flush=True)
