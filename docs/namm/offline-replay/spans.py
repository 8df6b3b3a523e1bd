"""Evidence mask per probe: prompt tokens inside a sentence that holds one of the answers (not in the question)."""
import sys, re, numpy as np
from pathlib import Path
from runtime import Engine
from evolve.probes import make_probes
PKG = sys.argv[1]; OUT = Path(sys.argv[2]); seed = int(sys.argv[3]); lengths = [int(x) for x in sys.argv[4].split(",")]
tasks = sys.argv[5].split(","); haystacks = sys.argv[6].split(","); samples = int(sys.argv[7])
eng = Engine(PKG, threads=1)
from runtime.longctx.tasks import make_cases
count = lambda text: len(eng.tokenizer.encode(text, add_special_tokens=False).ids)
k = 0
for L in lengths:
    for task in tasks:
        for hay in (["wordlist"] if task == "common_words" else haystacks):
            for case in make_cases(task, L, hay, samples, count, seed=seed):
                text = eng.render_chat([{"role": "user", "content": case.prompt}])
                enc = eng.tokenizer.encode(text, add_special_tokens=False)
                start = text.find(case.context); end = start + len(case.context)
                spans = []
                for a in case.answers:
                    for m in re.finditer(re.escape(a), text[start:end]):
                        i, j = start + m.start(), start + m.end()
                        s0 = max(text.rfind(". ", start, i), text.rfind("\n", start, i), start)
                        e0 = text.find(".", j); e0 = end if e0 < 0 else e0 + 1
                        spans.append((s0, e0))
                mask = np.array([any(s <= o[0] < e for s, e in spans) for o in enc.offsets])
                ids = eng.encode([{"role": "user", "content": case.prompt}])
                assert len(ids) == len(mask), (len(ids), len(mask))
                np.save(OUT / f"mask-{seed}-{k}.npy", mask)
                print(k, task, hay, mask.sum(), len(spans))
                k += 1
