"""Per-user folders (platformdirs) and how a --model argument becomes a package folder."""
from __future__ import annotations

import os
from pathlib import Path

from slm.core.errors import PackageError
from slm.core.package import MANIFEST
from slm.core.sources import Source, resolve_source


def write_atomic(path: Path, data: bytes) -> None:
    """Write a file so that a kill at any moment leaves the old content or the new, never half of it."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def cache_dir() -> Path:
    """Where `slm pull` and on-the-fly exports put packages ($SLM_CACHE overrides)."""
    if os.environ.get("SLM_CACHE"):
        return Path(os.environ["SLM_CACHE"])
    import platformdirs
    return Path(platformdirs.user_cache_dir("slm")) / "packages"


def data_dir() -> Path:
    """Where the TUI keeps its conversations ($SLM_DATA overrides)."""
    if os.environ.get("SLM_DATA"):
        return Path(os.environ["SLM_DATA"])
    import platformdirs
    return Path(platformdirs.user_data_dir("slm"))


def default_package() -> Path:
    return cache_dir() / "smollm2-135m-instruct-gguf"


def installed_packages() -> list[Path]:
    root = cache_dir()
    return sorted(p for p in root.iterdir() if (p / MANIFEST).is_file()) if root.is_dir() else []


def locate_package(model: str | None) -> tuple[Path, Source | None]:
    """--model PACKAGE_OR_SOURCE -> (its package folder, None) when that folder is a package, else
    (the cache folder its export goes to, the source to export there). Builds nothing: building
    on demand is the CLI's (slm/cli/packages.py), the one layer that may call slm/export/.
    """
    if model is not None and Path(model).expanduser().is_dir() and (Path(model).expanduser() / MANIFEST).is_file():
        return Path(model).expanduser(), None
    if model is not None and Path(model).expanduser().is_dir() and not (Path(model).expanduser() / "config.json").is_file() \
            and not list(Path(model).expanduser().glob("*.gguf")):
        raise PackageError(f"{model!r} is a folder but neither an slm package (no {MANIFEST}) nor a model source "
                           f"(no config.json or .gguf); accepted: a package from `slm export`/`slm pull`, a HF folder, "
                           f"a .gguf file or a hub id")
    source = resolve_source(model)
    target = default_package() if model in (None, "default") else cache_dir() / f"{source.name}-{source.kind}"
    return (target, None) if (target / MANIFEST).is_file() else (target, source)


def resolve_package(model: str | None) -> Path:
    """--model -> a package folder that exists (a package, or a source exported into the cache before);
    a PackageError saying how to make it otherwise."""
    target, source = locate_package(model)
    if source is not None:
        raise PackageError(f"no package for {model or 'the default model'} yet; run `slm pull` first")
    return target
