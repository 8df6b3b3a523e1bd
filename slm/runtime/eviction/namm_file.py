"""A NAMM scorer as a file: `namm.npz` beside the graph, named by the manifest's `namm_file`.

save_scorer / load_scorer (a versioned JSON header naming the features) and install_scorer_file,
which copies a scorer into a package; SHIPPED is the scorer evolved for the embedded default model.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from slm.runtime.eviction.namm import D_MODEL, FEATURES, FORMAT, FORMATS_READ, SPECTRUM_HALF_LIVES, BackwardAttentionMemory
from slm.core.errors import PackageError


def save_scorer(path: str | Path, scorer: BackwardAttentionMemory, record: dict | None = None) -> Path:
    """Write the scorer as .npz: its arrays, plus a JSON header naming the format and features."""
    header = {"format": FORMAT, "features": list(FEATURES), "spectrum_half_lives": list(SPECTRUM_HALF_LIVES),
              "record": record or {}}
    path = Path(path)
    with open(path, "wb") as fh:
        np.savez(fh, header=np.array(json.dumps(header)), **{k: getattr(scorer, k) for k in scorer.SHAPES})
    return path


def load_scorer(path: str | Path) -> tuple[BackwardAttentionMemory, dict]:
    try:
        with np.load(path, allow_pickle=False) as z:
            header = json.loads(str(z["header"]))
            arrays = {k: z[k].astype(np.float32) for k in BackwardAttentionMemory.SHAPES}
    except (OSError, KeyError, ValueError) as e:
        raise PackageError(f"NAMM scorer {str(path)!r} is unreadable ({e}); re-run `slm evolve --model PACKAGE`") from None
    if FORMATS_READ.get(header.get("format")) == tuple(header.get("features", ())) != FEATURES:
        # an older scorer: the features it lacks (appended since) get zero weight, so it ranks as it did
        missing = len(FEATURES) - len(header["features"])
        arrays["We"] = np.concatenate([arrays["We"], np.zeros((missing, D_MODEL), np.float32)])
        arrays["w_skip"] = np.concatenate([arrays["w_skip"], np.zeros(missing, np.float32)])
        header = {**header, "format": FORMAT, "features": list(FEATURES)}
    if header.get("format") != FORMAT or tuple(header.get("features", ())) != FEATURES \
            or tuple(header.get("spectrum_half_lives", ())) != SPECTRUM_HALF_LIVES:
        raise PackageError(f"NAMM scorer {str(path)!r} was made for other features ({header.get('format')}); "
                           f"re-run `slm evolve --model PACKAGE`")
    for k, shape in BackwardAttentionMemory.SHAPES.items():
        if arrays[k].shape != shape:
            raise PackageError(f"NAMM scorer {str(path)!r}: {k} has shape {arrays[k].shape}, expected {shape}")
    return BackwardAttentionMemory(**arrays), header


# the scorer evolved for the embedded default model (docs/NAMM.md, seventh run, 12 generations);
# `slm pull` installs it into the default package
SHIPPED = Path(__file__).resolve().parent / "scorers" / "smollm2-135m-instruct.npz"
NAMM_FILE = "namm.npz"


def install_scorer_file(package: str | Path, scorer_file: str | Path = SHIPPED) -> Path:
    """Copy a scorer file into a package folder and name it in the manifest (checked first: a file
    that does not load is refused before the package is touched)."""
    from dataclasses import replace

    from slm.core.package import read_manifest, write_manifest
    from slm.core.paths import write_atomic
    load_scorer(scorer_file)
    package = Path(package)
    manifest = read_manifest(package)
    target = package / NAMM_FILE
    if Path(scorer_file).resolve() != target.resolve():
        write_atomic(target, Path(scorer_file).read_bytes())
    write_manifest(package, replace(manifest, namm_file=NAMM_FILE))
    return target
