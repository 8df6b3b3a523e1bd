import sys, numpy as np
sys.path.insert(0, "runs/oracle")
from sim import load, simulate
feats = ["log_mass_last", "log_mass_ema4", "log_mass_ema16", "log_mass_ema64", "log_mass_ema256", "log_mass_per_query", "log_age", "log_position", "log_vnorm", "log_knorm", "log_cum"]
ps = load(sys.argv[1], feats)
ps = [p for p in ps if p["n"] >= 900]
for i, f in enumerate(feats):
    for sgn in (1, -1):
        w = np.zeros(len(feats) + 4, np.float32); w[i] = sgn   # + the 4 given_* columns sim appends
        r = np.array([simulate(p, w, 0.25) for p in ps])
        print(f"{f:20} {sgn:+d}  ev-weighted {r[:,0].mean():.3f}  top-heads {r[:,1].mean():.3f}  unweighted {r[:,2].mean():.3f}")
r = np.array([simulate(p, None, 0.25) for p in ps]); print("streaming", r.mean(0))
