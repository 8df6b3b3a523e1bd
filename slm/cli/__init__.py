"""slm/cli/: the `slm` command, the composition root. It sits above every stage and is the only package
that imports them all, each lazily and only for the subcommand that runs (so `slm export` needs no
ONNX Runtime and `slm chat` no torch). Building a package on demand lives here too (packages.py).

    slm.* (core) ◄── runtime, export, megabyte ◄── evals ◄── tui, evolve, distill ◄── cli
"""
