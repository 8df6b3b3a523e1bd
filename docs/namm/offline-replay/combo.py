import sys, numpy as np
sys.path.insert(0, "runs/oracle")
import sim; sim.CHUNKED = True
from sim import load, simulate
feats = ["log_mass_per_query", "log_age", "log_cum"]
names = feats + ["given_q", "given_sink", "given_user64", "given_first64"]
ps = load("runs/oracle/train", feats)
for b in (0.25,):
    for pq, age, a in [(1, 2, 0), (0, 0, 1), (1, 2, 1), (1, 2, 2), (1, 2, 4), (1, 2, 8), (1, 0, 2), (1, 0, 4), (0, 2, 4), (1,1,4)]:
        w = np.zeros(len(names), np.float32); w[0] = pq; w[1] = age; w[6] = a
        r = np.array([simulate(p, w, b) for p in ps])
        print(f"{b} pq {pq} age {age} opening {a}: ev-weighted {r[:,0].mean():.3f}  top-heads {r[:,1].mean():.3f}  unweighted {r[:,2].mean():.3f}", flush=True)
