"""Evolving a NAMM scorer with CMA-ES (Hansen's `cma`), as the NAMM paper does.

    theta ~ CMA-ES(mean, sigma, C)          flat BackwardAttentionMemory parameters
    fitness(theta) = mean over training probes of retention(NAMM(theta), budget)

The line that is the whole idea: `es.tell(population, [-f for f in fitness])` (cma minimises).
Each generation evaluates the population and the current mean in worker processes (one ONNX Runtime
thread each), then pickles the CMA state, numpy's global RNG (which `cma` samples from) and the
history to `checkpoint.pkl`; a killed run started again with the same arguments continues the same
run. The probes and their full-cache reference are computed once and kept in the checkpoint.
"""
from __future__ import annotations

import json
import pickle
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from slm.evolve.priors import initial_vector
from slm.runtime.eviction.namm import NAMM, BackwardAttentionMemory

CHECKPOINT = "checkpoint.pkl"


@dataclass(frozen=True)
class EvolveConfig:
    """Defaults: the seventh run's recipe (docs/NAMM.md), ~37 min on 2 cores for SmolLM2-135M."""
    package: str
    budget: float = 0.25                # KV budget as a fraction of each prompt
    generations: int = 12
    popsize: int = 8                    # + the mean: evaluated every generation
    sigma0: float = 0.3
    seed: int = 0
    workers: int = 2
    tasks: tuple[str, ...] = ("niah_single", "niah_multikey", "variable_tracking")
    haystacks: tuple[str, ...] = ("shakespeare",)
    lengths: tuple[int, ...] = (768, 1024)  # prompt tokens; several mix lengths, so that age and position
                                        # features cannot encode where the training needles sit
    samples: int = 4                    # probes per (task, haystack, length)
    prior: str = "opening"              # where the initial mean ranks: a feature, "h2o" (accumulated
                                        # attention, as H2O), "opening" or "" (none); see initial_vector
    per_generation: int = 12            # > 0: each generation scores a fresh seeded subset of this many
                                        # probes (the same for every candidate); 0: all, every generation
    fitness: str = "log_retention"      # "retention": mean retention; "log_retention": mean log retention
                                        # (floored at 1%), so a few probes that happen to keep their answer
                                        # cannot outweigh the rest; see aggregate
    search: str = "skip"                # "full": all scorer parameters; "skip": only the linear skip over
                                        # the non-periodic features (BAM/MLP output fixed at 0), see search_space

    def same_run(self, other: "EvolveConfig") -> bool:
        """Everything but the number of generations (and workers) must match to resume."""
        a, b = asdict(self), asdict(other)
        for k in ("generations", "workers"):
            a.pop(k), b.pop(k)
        return a == b


# --- worker processes: one engine each, loaded once -----------------------------------------------
_worker: dict = {}


def _open_engine(package: str):
    from slm.evolve.probes import PROBE_OPTIONS
    from slm.runtime import Engine
    # any policy that needs attention opens the graph with attention-mass outputs; the policy that
    # actually evicts is passed per call (EvictionConfig), so one engine serves every candidate
    return Engine(package, PROBE_OPTIONS)


FITNESSES = ("retention", "log_retention")
LOG_FLOOR = 0.01


def aggregate(retentions: list[float], fitness: str) -> float:
    """One number per candidate from its per-probe retentions. The mean retention is dominated by
    the few probes whose answer survives at all (values near 1 against a floor of ~0.05: the first
    runs gained on 3 of 9 probes and did not generalise); the mean log retention counts doubling a
    small retention as much as doubling a large one."""
    if fitness == "retention":
        return float(np.mean(retentions))
    if fitness == "log_retention":
        return float(np.mean(np.log(np.maximum(retentions, LOG_FLOOR))))
    raise ValueError(f"fitness {fitness!r} is unknown; accepted: {', '.join(FITNESSES)}")


def _init_worker(package: str, probes, reference, budget: float, fitness: str) -> None:
    _worker.update(engine=_open_engine(package), probes=probes, reference=reference, budget=budget, fitness=fitness)


def _fitness(job: tuple[np.ndarray, list[int]]) -> tuple[float, list[float]]:
    from slm.evolve.probes import retention
    theta, subset = job
    w = _worker
    r = retention(w["engine"], [w["probes"][i] for i in subset], [w["reference"][i] for i in subset],
                  NAMM(BackwardAttentionMemory.from_vector(theta)), w["budget"])
    return aggregate(r, w["fitness"]), r


SEARCH_SPACES = ("full", "skip")


def search_space(cfg: EvolveConfig) -> tuple[np.ndarray, np.ndarray | None]:
    """(the full starting vector, the indices CMA-ES moves or None for all of them).

    "skip" searches 9 numbers instead of 1,071: the skip weights of the attention-mass EMAs, the mean
    mass per query, log age, log position and what the token read in the opening. The sinusoids of
    age stay 0 (with fixed prompt lengths they can encode where the training needles sit) and so does
    the network's output weight w2, so the scorer is a linear ranking of the features. CMA-ES needs on the order of 10 x dimension
    evaluations per step of real progress; 1,054 dimensions (then) with ~150 evaluations per run never
    left the prior (docs/NAMM.md)."""
    from slm.runtime.eviction.namm import FEATURES
    if cfg.search not in SEARCH_SPACES:
        raise ValueError(f"search {cfg.search!r} is unknown; accepted: {', '.join(SEARCH_SPACES)}")
    x0 = initial_vector(cfg.seed, cfg.prior or None)
    if cfg.search == "full":
        return x0, None
    shapes = BackwardAttentionMemory.SHAPES
    offset = {name: sum(int(np.prod(shapes[m])) for m in list(shapes)[:i]) for i, name in enumerate(shapes)}
    x0[offset["w2"]:offset["w2"] + int(np.prod(shapes["w2"]))] = 0.0
    skip = [offset["w_skip"] + i for i, f in enumerate(FEATURES) if "_age_" not in f]
    return x0, np.array(skip)


def expand(base: np.ndarray, index: np.ndarray | None, z) -> np.ndarray:
    """The full scorer vector of a point of the search space."""
    if index is None:
        return np.asarray(z, np.float32)
    theta = base.copy()
    theta[index] = z
    return theta


def probes_of_generation(cfg: EvolveConfig, n_probes: int, generation: int) -> list[int]:
    """Which probes generation `generation` (0-based) is scored on: all, or a subset drawn from
    (seed, generation) alone, so a resumed run draws the same ones."""
    if not 0 < cfg.per_generation < n_probes:
        return list(range(n_probes))
    rng = np.random.default_rng([cfg.seed, generation])
    return sorted(int(i) for i in rng.choice(n_probes, cfg.per_generation, replace=False))


def _reference(package: str, probes) -> list[float]:
    from slm.evolve.probes import probe_logprob
    engine = _worker.get("engine") or _worker.setdefault("engine", _open_engine(package))
    return [probe_logprob(engine, p, None, 1.0) for p in probes]


def _pool(cfg: EvolveConfig, probes, reference) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(cfg.workers, mp_context=get_context("spawn"), initializer=_init_worker,
                               initargs=(cfg.package, probes, reference, cfg.budget, cfg.fitness))


# --- the run ------------------------------------------------------------------------------------
def _save(path: Path, state: dict) -> None:
    from slm.core.paths import write_atomic
    write_atomic(path, pickle.dumps(state))     # a kill leaves either the old or the new checkpoint


def load_checkpoint(out: str | Path) -> dict | None:
    path = Path(out) / CHECKPOINT
    if not path.is_file():
        return None
    with open(path, "rb") as fh:
        return pickle.load(fh)


def _start(cfg: EvolveConfig, log) -> dict:
    import cma

    from slm.evolve.probes import make_probes
    engine = _open_engine(cfg.package)
    probes = [p for length in cfg.lengths
              for p in make_probes(engine, list(cfg.tasks), list(cfg.haystacks), length, cfg.samples, cfg.seed)]
    t0 = time.time()
    with ProcessPoolExecutor(cfg.workers, mp_context=get_context("spawn")) as pool:
        shares = [probes[i::cfg.workers] for i in range(cfg.workers)]
        refs = list(pool.map(_reference, [cfg.package] * cfg.workers, shares))
    reference = [0.0] * len(probes)
    for i, part in enumerate(refs):
        reference[i::cfg.workers] = part
    log(f"[evolve] {len(probes)} probes ({', '.join(cfg.tasks)} on {', '.join(cfg.haystacks)}, ~{'/'.join(map(str, cfg.lengths))} tokens); "
        f"full-cache answer log-prob {np.mean(reference):.3f}/token ({time.time() - t0:.0f} s)")
    base, index = search_space(cfg)
    x0 = base if index is None else base[index]
    es = cma.CMAEvolutionStrategy(x0, cfg.sigma0, {"seed": cfg.seed + 1, "popsize": cfg.popsize,
                                                   "CMA_diagonal": True, "verbose": -9})
    return {"config": cfg, "es": es, "generation": 0, "probes": probes, "reference": reference, "history": [],
            "best_mean": (-np.inf, base), "rng": np.random.get_state(), "seconds": 0.0}


def evolve(cfg: EvolveConfig, out: str | Path, log=lambda s: print(s, file=sys.stderr, flush=True)) -> dict:
    """Run (or resume) until `cfg.generations`; return the final state. Checkpoint after every generation."""
    aggregate([1.0], cfg.fitness)           # an unknown fitness fails here, not in a worker
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = load_checkpoint(out)
    if state is None:
        state = _start(cfg, log)
        _save(out / CHECKPOINT, state)
    elif not state["config"].same_run(cfg):
        from slm.core.errors import SlmError
        raise SlmError(f"{str(out)!r} holds a different run ({state['config']}); use another --out or the same arguments")
    else:
        log(f"[evolve] resuming {str(out)!r} at generation {state['generation']}")
    state["config"] = cfg
    es = state["es"]
    if state["generation"] >= cfg.generations:
        return state
    base, index = search_space(cfg)
    with _pool(cfg, state["probes"], state["reference"]) as pool:
        while state["generation"] < cfg.generations:
            t0 = time.time()
            np.random.set_state(state["rng"])
            mean = expand(base, index, es.mean)
            population = es.ask()
            subset = probes_of_generation(cfg, len(state["probes"]), state["generation"])
            thetas = [expand(base, index, z) for z in population] + [mean]
            results = list(pool.map(_fitness, [(theta, subset) for theta in thetas]))
            fitness = [f for f, _ in results[:-1]]
            mean_fitness, mean_per_probe = results[-1]
            es.tell(population, [-f for f in fitness])
            # on fixed probes keep the best mean seen; on changing subsets scores do not compare: keep the latest
            if cfg.per_generation or mean_fitness > state["best_mean"][0]:
                state["best_mean"] = (mean_fitness, mean)
            state["generation"] += 1
            state["seconds"] += time.time() - t0
            row = {"generation": state["generation"], "mean_fitness": mean_fitness, "best": max(fitness),
                   "median": float(np.median(fitness)), "sigma": float(es.sigma), "seconds": time.time() - t0,
                   "probes": subset, "mean_per_probe": mean_per_probe}
            state["history"].append(row)
            state["rng"] = np.random.get_state()
            _save(out / CHECKPOINT, state)
            with open(out / "log.jsonl", "a") as fh:
                fh.write(json.dumps(row) + "\n")
            log(f"[evolve] gen {row['generation']:3d}/{cfg.generations}: mean {mean_fitness:.4f}  best {row['best']:.4f}  "
                f"median {row['median']:.4f}  sigma {row['sigma']:.4f}  ({row['seconds']:.0f} s)")
    return state
