"""A --model argument -> a package folder, exporting a model source into the cache on first use.

The core (slm.core.paths.locate_package) says where a package is or would be; only this layer, above
slm/export/ and slm/runtime/, builds one and installs the default model's evolved NAMM scorer into it.
"""
from __future__ import annotations

import sys
from pathlib import Path

from slm.core.errors import SlmError
from slm.core.package import MANIFEST, read_manifest
from slm.core.paths import default_package, locate_package
from slm.core.sources import Source, resolve_source


def build(source: Source, target: Path) -> Path:
    """Export `source` into `target`; the default model also gets its evolved NAMM scorer, so
    --kv-policy namm works out of the box."""
    try:
        from slm.export import build_package     # needs the export extra (torch, transformers, onnx)
    except ImportError as e:
        raise SlmError(f"exporting {source.path} needs the export extra (pip install 'slm[export]'): {e}") from None
    build_package(source, target)
    if target == default_package():
        from slm.runtime.eviction.namm_file import install_scorer_file
        install_scorer_file(target)
    return target


def resolve_package(model: str | None) -> Path:
    """--model PACKAGE_OR_SOURCE -> a package folder: a package as is, a model source (HF folder,
    .gguf, hub id, 'default') exported into the cache once, then reused."""
    target, source = locate_package(model)
    return target if source is None else build(source, target)


def pull(force: bool) -> Path | None:
    """`slm pull`: the default package, built unless it exists (or `force`); returns it when built."""
    target = default_package()
    if target.joinpath(MANIFEST).is_file() and not force:
        if not read_manifest(target).namm_file:     # pulled before the scorer shipped
            from slm.runtime.eviction.namm_file import install_scorer_file
            print(f"slm: installed the evolved NAMM scorer: {install_scorer_file(target)}", file=sys.stderr)
        print(f"slm: default package ready at {target}", file=sys.stderr)
        return None
    return build(resolve_source(None), target)
