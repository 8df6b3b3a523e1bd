"""The checkpoint folder train.py leaves and export reads: config.json (versioned) + model.safetensors."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from slm.megabyte.model import build, config_from_dict, config_to_dict


def save_checkpoint(model: torch.nn.Module, folder: str | Path) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config_to_dict(model.cfg), indent=2))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors")
    return folder


def load_checkpoint(folder: str | Path) -> torch.nn.Module:
    folder = Path(folder)
    model = build(config_from_dict(json.loads((folder / "config.json").read_text())))
    model.load_state_dict(load_file(folder / "model.safetensors"))
    return model.eval()
