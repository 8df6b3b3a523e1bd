"""Evolving a learned KV-eviction policy (NAMM, Cetin et al. 2024) for a package, with CMA-ES.

    package folder ─► slm evolve ─► package folder + namm.npz (manifest `namm_file`) ─► --kv-policy namm

probes.py   long-context task instances scored by the likelihood of their gold answer
cma_es.py   the evolution loop: workers, checkpoint, resume
cli.py      `slm evolve` (register(subparsers)); installs the scorer into the package
heldout.py  evaluation on held-out tasks and haystacks against the hand-made policies

Needs numpy, onnxruntime and `cma` (the `evolve` extra); never torch.
"""
