import numpy as np, glob
from runtime.eviction.namm import FEATURES
NAMES = [f for f in FEATURES if f != "log_opening"] + ["log_vnorm", "log_knorm", "log_cum"]   # as collected (before log_opening)

CHUNKED = False
def load(folder, feats):
    idx = [NAMES.index(f) for f in feats]
    out = []
    for path in sorted(glob.glob(f"{folder}/*.npz")):
        z = np.load(path)
        times = [int(t) for t in z["times"]]
        F = {t: z[f"f{t}"][..., idx].astype(np.float32) for t in times}
        k = path.rsplit("/", 1)[1][:-4]
        mask = np.load(f"{folder}/mask-{k}.npy")
        import os
        g = np.load(f"{folder}/given-{k}.npy") if os.path.exists(f"{folder}/given-{k}.npy") else None
        if g is not None and CHUNKED:
            n_ = g.shape[-1]; gc = g.copy()
            for c0 in range(0, n_, 32):
                gc[..., c0:c0 + 32] = g[..., c0:c0 + 32].mean(-1, keepdims=True)
            g = gc
        if g is not None:      # append static per-token features: log mass given to the question, to the sinks
            for t in times:
                extra = np.log(1e-4 + g[:, :, :, :t]).transpose(0, 2, 3, 1) / 4
                F[t] = np.concatenate([F[t], extra], -1)
        out.append(dict(mask=mask, times=times, F=F, label=z["label"].astype(np.float64), n=int(z["n"]), task=str(z["task"]), haystack=str(z["haystack"])))
    return out

def simulate(p, w, budget, ch=32):
    """Retained share of the answer's attention over the evictable region, mean over (L, H)."""
    n, label = p["n"], p["label"]
    C = max(16, int(budget * n)); ec = max(1, C // 8); rec = C // 8
    L, H, _ = label.shape
    kept = np.zeros((L, H, n), bool)
    length = 0
    for s in range(0, n, ch):
        m = min(ch, n - s)
        if length + m > C:
            need = length + m - C
            k = max(need, ec)
            t = max(tt for tt in p["times"] if tt <= s)
            sc = p["F"][t][..., :s] @ w if w is not None else np.zeros((L, H, s), np.float32)
            if w is None:   # streaming: oldest first
                sc = np.broadcast_to(np.arange(s, dtype=np.float32), (L, H, s)).copy()
            pos = np.arange(s)
            sc = np.where(kept[..., :s], sc, np.inf)
            sc[..., (pos >= s - rec) | (pos < 4)] = np.inf
            drop = np.argpartition(sc, k - 1, axis=-1)[..., :k]
            np.put_along_axis(kept[..., :s], drop, False, axis=-1)  # note: view assignment
            length -= k
        kept[..., s:s + m] = True
        length += m
    E = p["mask"]
    lab = label[..., E]
    ev = float((lab * kept[..., E]).sum() / lab.sum())
    top = lab.sum(-1).ravel().argsort()[-10:]                 # the 10 heads that read the evidence most
    ev_top = float(kept[..., E].reshape(-1, E.sum())[top].mean())
    return ev, ev_top, float(kept[..., E].mean())
    region = np.zeros(n, bool); region[4:n - rec] = True
    tot = label[..., region].sum(-1)
    ret = (label * kept)[..., region].sum(-1)
    return float(np.mean(ret / np.maximum(tot, 1e-12))), float(ret.sum() / tot.sum())
