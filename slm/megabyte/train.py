"""Train MEGABYTE or the flat byte-level baseline from scratch on a byte corpus, with a fixed
budget of training FLOPs (so the two can be compared at equal compute, as the paper does).

    python -m slm.megabyte.train --preset megabyte-4m --data input.txt --out runs/mb --flops 1.2e13
    python -m slm.megabyte.train --preset flat-4m     --data input.txt --out runs/flat --flops 1.2e13

The held-out text is the corpus's last 10%. One plain loop: sample windows, `accelerator.backward(loss)`
(accelerate: the CPU here, GPUs with `accelerate launch`), AdamW with warmup and cosine decay. Resumable: `out/resume.pt` holds the model, the optimiser and the
step, written every `save_every` steps; rerunning the same command continues. Progress is a tqdm bar
with its ETA; `out/log.jsonl` has one record per logged step. The checkpoint folder it leaves is
the folder export reads (slm/export/megabyte.py): `config.json` (the model config, versioned) and
`model.safetensors`, plus `result.json` (held-out bits per byte, parameters, FLOPs, wall time).
"""
from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from tqdm import tqdm

from slm.megabyte.checkpoint import save_checkpoint
from slm.megabyte.model import (Decoder, FlatConfig, MegabyteConfig, build, count_parameters, loss_bits,
                            train_flops_per_byte)

HELD_OUT = 0.1          # the last 10% of the corpus

PRESETS: dict[str, MegabyteConfig | FlatConfig] = {
    # ~3.7M parameters each; the flat one costs ~4.8x the FLOPs per byte at 512-byte windows
    "megabyte-4m": MegabyteConfig(patch_size=8, max_patches=128, glob=Decoder(256, 4, 8, 8, 704),
                                  local=Decoder(128, 2, 4, 4, 352)),
    "flat-4m": FlatConfig(max_bytes=1024, decoder=Decoder(256, 4, 8, 8, 832)),
    # for tests
    "megabyte-tiny": MegabyteConfig(patch_size=4, max_patches=256, glob=Decoder(32, 2, 2, 1, 64),
                                    local=Decoder(16, 1, 1, 1, 32)),
    "flat-tiny": FlatConfig(max_bytes=1024, decoder=Decoder(16, 2, 1, 1, 32)),
}


@dataclass(frozen=True)
class TrainConfig:
    preset: str
    data: str                   # a byte corpus (any file)
    out: str                    # the checkpoint folder
    flops: float                # training FLOPs budget (model.train_flops_per_byte x bytes seen)
    batch_size: int = 16
    seq_bytes: int = 512        # bytes per training window (a multiple of the patch size)
    lr: float = 2e-3
    warmup: float = 0.05        # share of the steps
    weight_decay: float = 0.1
    eval_every: int = 50        # steps between held-out evaluations (on eval_bytes of it)
    eval_bytes: int = 16384
    save_every: int = 25
    threads: int = 2
    seed: int = 0

    @property
    def steps(self) -> int:
        per_step = train_flops_per_byte(PRESETS[self.preset], self.seq_bytes) * self.batch_size * self.seq_bytes
        return max(1, round(self.flops / per_step))


def split(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    arr = np.frombuffer(data, np.uint8)
    cut = int(len(arr) * (1 - HELD_OUT))
    return arr[:cut], arr[cut:]


def batch(arr: np.ndarray, batch_size: int, seq: int, rng: np.random.Generator) -> torch.Tensor:
    starts = rng.integers(0, len(arr) - seq, batch_size)
    return torch.from_numpy(np.stack([arr[s:s + seq] for s in starts]).astype(np.int64))


@torch.no_grad()
def held_out_bits(model: torch.nn.Module, arr: np.ndarray, seq: int, limit: int | None = None) -> float:
    """Bits per byte over consecutive windows of `seq` bytes of `arr` (the first `limit` bytes)."""
    model.eval()
    arr = arr[:limit] if limit else arr
    windows = torch.from_numpy(arr[:len(arr) // seq * seq].astype(np.int64)).view(-1, seq)
    device = next(model.parameters()).device
    total = sum(loss_bits(model, w[None].to(device)).item() for w in windows)
    model.train()
    return total / len(windows)


def lr_at(step: int, cfg: TrainConfig) -> float:
    warm = max(1, int(cfg.warmup * cfg.steps))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, cfg.steps - warm)))


def train(cfg: TrainConfig) -> dict:
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    model_cfg = PRESETS[cfg.preset]
    if isinstance(model_cfg, MegabyteConfig) and cfg.seq_bytes % model_cfg.patch_size:
        raise ValueError(f"seq_bytes {cfg.seq_bytes} is not a multiple of patch_size {model_cfg.patch_size}")
    train_arr, held = split(Path(cfg.data).read_bytes())
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    model = build(model_cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    rng, step, elapsed = np.random.default_rng(cfg.seed), 0, 0.0
    resume = out / "resume.pt"
    if resume.is_file():
        state = torch.load(resume, weights_only=False)
        if state["train_config"] != asdict(cfg):
            raise ValueError(f"{resume} was written by another configuration; remove it or use another --out")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        rng.bit_generator.state = state["rng"]
        step, elapsed = state["step"], state["elapsed"]
    # accelerate places the model and optimiser (CPU here; `accelerate launch` for GPUs, mixed precision)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    model, opt = accelerator.prepare(model, opt)
    log = (out / "log.jsonl").open("a")
    per_step = train_flops_per_byte(model_cfg, cfg.seq_bytes) * cfg.batch_size * cfg.seq_bytes
    bar = tqdm(total=cfg.steps, initial=step, desc=cfg.preset, unit="step")
    t0 = time.perf_counter() - elapsed
    while step < cfg.steps:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        loss = loss_bits(model, batch(train_arr, cfg.batch_size, cfg.seq_bytes, rng).to(accelerator.device))
        opt.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        record = {"step": step, "train_bits_per_byte": round(loss.item(), 4), "lr": opt.param_groups[0]["lr"],
                  "flops": step * per_step, "elapsed_s": round(time.perf_counter() - t0, 1)}
        if step % cfg.eval_every == 0 or step == cfg.steps:
            record["held_out_bits_per_byte"] = round(held_out_bits(model, held, cfg.seq_bytes, cfg.eval_bytes), 4)
        log.write(json.dumps(record) + "\n")
        log.flush()
        bar.set_postfix(bits=f"{loss.item():.3f}")
        bar.update()
        if step % cfg.save_every == 0 or step == cfg.steps:
            torch.save({"model": accelerator.unwrap_model(model).state_dict(), "optimizer": opt.state_dict(),
                        "rng": rng.bit_generator.state,
                        "step": step, "elapsed": time.perf_counter() - t0, "train_config": asdict(cfg)}, resume)
    bar.close()
    wall = time.perf_counter() - t0
    model = accelerator.unwrap_model(model)
    save_checkpoint(model, out)
    result = {"preset": cfg.preset, "parameters": count_parameters(model), "steps": cfg.steps,
              "bytes_seen": cfg.steps * cfg.batch_size * cfg.seq_bytes, "train_flops": cfg.steps * per_step,
              "train_flops_per_byte": per_step / (cfg.batch_size * cfg.seq_bytes), "wall_s": round(wall, 1),
              "held_out_bytes": len(held) // cfg.seq_bytes * cfg.seq_bytes,
              "held_out_bits_per_byte": held_out_bits(model, held, cfg.seq_bytes), "train_config": asdict(cfg)}
    (out / "result.json").write_text(json.dumps(result, indent=2))
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m slm.megabyte.train", description=__doc__.splitlines()[0])
    p.add_argument("--preset", required=True, choices=sorted(PRESETS))
    p.add_argument("--data", required=True, help="a byte corpus (e.g. Tiny Shakespeare's input.txt)")
    p.add_argument("--out", required=True, help="checkpoint folder (resumes when it holds resume.pt)")
    p.add_argument("--flops", type=float, required=True, help="training FLOPs budget")
    for name, default in ((f.name, f.default) for f in TrainConfig.__dataclass_fields__.values()
                          if f.name not in ("preset", "data", "out", "flops")):
        p.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default)
    args = p.parse_args(argv)
    cfg = TrainConfig(**vars(args))
    print(json.dumps(train(cfg), indent=2))


if __name__ == "__main__":
    main()
