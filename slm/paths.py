"""Per-user folders (platformdirs) and how a --model argument becomes a package folder."""
from __future__ import annotations

import os
from pathlib import Path

from slm.errors import PackageError
from slm.package import MANIFEST


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


def resolve_package(model: str | None, *, export_if_needed: bool = True) -> Path:
    """--model PACKAGE_OR_SOURCE -> a package folder.

    A package folder is used as is. Anything else is a model source (HF folder, .gguf, hub id,
    'default') exported into the cache once, then reused.
    """
    if model is not None and Path(model).expanduser().is_dir() and (Path(model).expanduser() / MANIFEST).is_file():
        return Path(model).expanduser()
    if model is not None and Path(model).expanduser().is_dir() and not (Path(model).expanduser() / "config.json").is_file() \
            and not list(Path(model).expanduser().glob("*.gguf")):
        raise PackageError(f"{model!r} is a folder but neither an slm package (no {MANIFEST}) nor a model source "
                           f"(no config.json or .gguf); accepted: a package from `slm export`/`slm pull`, a HF folder, "
                           f"a .gguf file or a hub id")
    from slm.sources import resolve_source
    source = resolve_source(model)
    target = default_package() if model in (None, "default") else cache_dir() / f"{source.name}-{source.kind}"
    if (target / MANIFEST).is_file():
        return target
    if not export_if_needed:
        raise PackageError(f"no package for {model or 'the default model'} yet; run `slm pull` first")
    from export import build_package     # needs the export extra (torch, transformers, onnx)
    build_package(source, target)
    if target == default_package():
        from runtime.eviction.namm import install_scorer_file
        install_scorer_file(target)         # the default model's evolved NAMM scorer
    return target
