"""`slm evolve --model PACKAGE`: evolve a NAMM eviction scorer for a package and store it there.

Resumable: run the same command again after an interruption (state in --out/checkpoint.pkl).
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict
from pathlib import Path

from slm.runtime.eviction.namm_file import NAMM_FILE


def install(package: str | Path, theta, record: dict) -> Path:
    """Write the scorer into the package folder and name it in the manifest."""
    from slm.runtime.eviction.namm import BackwardAttentionMemory
    from slm.runtime.eviction.namm_file import install_scorer_file, save_scorer
    path = save_scorer(Path(package) / NAMM_FILE, BackwardAttentionMemory.from_vector(theta), record)
    return install_scorer_file(package, path)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from slm.evolve.cma_es import EvolveConfig
    d = EvolveConfig(package="")
    p.add_argument("--model", default=None, metavar="PACKAGE", help="package folder (default: the embedded default model)")
    p.add_argument("--budget", type=float, default=d.budget, help="KV budget as a fraction of the prompt (default 0.25)")
    p.add_argument("--generations", type=int, default=d.generations)
    p.add_argument("--popsize", type=int, default=d.popsize, help="CMA-ES population (the mean is evaluated too)")
    p.add_argument("--sigma0", type=float, default=d.sigma0)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--workers", type=int, default=d.workers, help="worker processes (one ONNX Runtime thread each)")
    p.add_argument("--tasks", nargs="*", default=list(d.tasks), help="training task types (slm.evals.longctx.tasks)")
    p.add_argument("--haystacks", nargs="*", default=list(d.haystacks))
    p.add_argument("--length", type=int, nargs="+", default=list(d.lengths),
                   help="prompt tokens per probe; several values mix prompt lengths (samples probes at each)")
    p.add_argument("--samples", type=int, default=d.samples, help="probes per (task, haystack)")
    p.add_argument("--per-generation", type=int, default=d.per_generation,
                   help="score each generation on a fresh seeded subset of this many probes (0 = all; "
                        "with a larger --samples pool this fights overfitting to fixed instances)")
    p.add_argument("--fitness", default=d.fitness, choices=["retention", "log_retention"],
                   help="per-candidate score: mean retention of the answer's likelihood, or its mean log (floored "
                        "at 1%%: every probe counts, not the few that keep their answer)")
    p.add_argument("--search", default=d.search, choices=["full", "skip"],
                   help="what CMA-ES moves: every scorer parameter (full), or only the linear skip over the "
                        "non-periodic features (skip: 9 numbers, converges in a few hundred evaluations)")
    p.add_argument("--prior", default=d.prior,
                   help="where the initial scorer ranks: a feature name, 'h2o' (accumulated attention), 'opening' (mean "
                        "attention plus what the token read in the conversation's opening) or '' (random)")
    p.add_argument("--out", default=None, help="run folder: checkpoint.pkl, log.jsonl (default runs/evolve/<package>)")
    p.add_argument("--no-install", action="store_true", help="do not write the scorer into the package")


def run(args) -> int:
    from slm.core.errors import SlmError
    try:
        import cma  # noqa: F401
    except ImportError:
        raise SlmError("slm evolve needs the `cma` library: pip install 'slm[evolve]'") from None
    from slm.evolve.cma_es import EvolveConfig, evolve
    from slm.evals.longctx.tasks import GENERATORS, HAYSTACKS
    from slm.core.paths import resolve_package
    package = str(resolve_package(args.model))
    for t in args.tasks:
        if t not in GENERATORS:
            raise SlmError(f"--tasks {t!r} is unknown; accepted: {', '.join(GENERATORS)}")
    for h in args.haystacks:
        if h not in HAYSTACKS:
            raise SlmError(f"--haystacks {h!r} is unknown; accepted: {', '.join(HAYSTACKS)}")
    from slm.evolve.priors import PRIORS
    if args.prior and args.prior not in PRIORS:
        raise SlmError(f"--prior {args.prior!r} is unknown; accepted: '' (none), h2o, opening or a feature: {', '.join(PRIORS[2:])}")
    if not 0 < args.budget < 1:
        raise SlmError(f"--budget {args.budget} must be a fraction of the prompt in (0, 1)")
    cfg = EvolveConfig(package=package, budget=args.budget, generations=args.generations, popsize=args.popsize,
                       sigma0=args.sigma0, seed=args.seed, workers=args.workers, tasks=tuple(args.tasks),
                       haystacks=tuple(args.haystacks), lengths=tuple(args.length), samples=args.samples, prior=args.prior,
                       per_generation=args.per_generation, search=args.search, fitness=args.fitness)
    out = Path(args.out or Path("runs") / "evolve" / Path(package).name)
    state = evolve(cfg, out)
    fitness, theta = state["best_mean"]
    history = state["history"]
    print(f"[evolve] {state['generation']} generations in {state['seconds'] / 60:.1f} min of evaluation; "
          f"initial mean fitness {history[0]['mean_fitness']:.4f}, best mean {fitness:.4f}", file=sys.stderr)
    if not args.no_install:
        record = {"config": {k: v for k, v in asdict(cfg).items() if k not in ("package", "workers")},
                  "generations": state["generation"], "fitness": fitness,
                  "initial_fitness": history[0]["mean_fitness"], "evaluation_seconds": state["seconds"],
                  "made": time.strftime("%Y-%m-%d %H:%M:%S")}
        print(install(package, theta, record))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("evolve", help="evolve a NAMM KV-eviction scorer for a package (CMA-ES, resumable)")
    add_arguments(p)
    p.set_defaults(func=run)


def main(argv: list[str] | None = None) -> int:
    from slm.core.errors import SlmError
    p = argparse.ArgumentParser(prog="slm evolve", description=__doc__.splitlines()[0])
    add_arguments(p)
    try:
        return run(p.parse_args(argv))
    except SlmError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
