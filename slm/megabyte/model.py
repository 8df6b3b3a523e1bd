"""MEGABYTE (Yu et al. 2023, "MEGABYTE: Predicting Million-byte Sequences with Multiscale
Transformers", arXiv:2305.07185), one file read top to bottom; and the flat byte-level
transformer it is compared against, built from the same blocks.

    bytes (B, T) ──► patches (B, K, P)          T = K * P
        global input = [pad patch, patch 0, ..., patch K-2]        (shifted by one patch)
        ─► patch embedding: P byte embeddings (one table per slot) concatenated ─► (B, K, P*e)
        ─► global decoder: causal over the K patches ─► (B, K, P*e) ─► split into P pieces of e
        ─► w_GL: each piece e ─► d_local: the context of byte p of patch k
    local input (k, p) = context (k, p) + embedding of byte (k, p-1)    (a pad byte at p = 0)
        ─► local decoder: causal over the P bytes of each patch, patches independent
        ─► byte head ─► logits (B, T, 256)

Byte (k, p) thus sees every byte of the patches before k (through the global decoder, which runs
once per patch) and the bytes before p in its own patch (through the local decoder).

The blocks are Llama's (RMSNorm, rotary attention, SwiGLU MLP, no biases), named like Hugging Face's
so the flat baseline exports as a plain llama package and the MEGABYTE graphs share their ops
(slm/export/megabyte.py). Rotary is rotate-half, as ONNX Runtime's GroupQueryAttention applies it.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

BYTES = 256             # the vocabulary: byte values 0..255
PAD = 256               # input-only id: the pad patch (global) and the start of a patch (local)
FORMAT_VERSION = 1      # of the checkpoint folder's config.json


@dataclass(frozen=True)
class Decoder:
    """One causal transformer stack."""
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    mlp_dim: int
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.dim % self.n_heads or self.n_heads % self.n_kv_heads or (self.dim // self.n_heads) % 16:
            raise ValueError(f"{self}: dim must split into n_heads heads of a multiple of 16 (ONNX Runtime's "
                             f"GroupQueryAttention), shared by n_kv_heads")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


@dataclass(frozen=True)
class MegabyteConfig:
    patch_size: int          # P
    max_patches: int         # global context in patches (the rotary table's length)
    glob: Decoder            # dim = P * e: each byte of a patch brings e = dim / P features
    local: Decoder
    architecture: str = "megabyte"
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.glob.dim % self.patch_size:
            raise ValueError(f"global dim {self.glob.dim} must be a multiple of patch_size {self.patch_size}")

    @property
    def max_bytes(self) -> int:
        return self.patch_size * self.max_patches


@dataclass(frozen=True)
class FlatConfig:
    """The flat byte-level transformer baseline: one decoder over bytes."""
    max_bytes: int
    decoder: Decoder
    architecture: str = "flat"
    format_version: int = FORMAT_VERSION


def config_to_dict(config: MegabyteConfig | FlatConfig) -> dict:
    return asdict(config)


def config_from_dict(d: dict) -> MegabyteConfig | FlatConfig:
    if d.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"checkpoint config format_version {d.get('format_version')!r} is not {FORMAT_VERSION}")
    if d.get("architecture") == "megabyte":
        return MegabyteConfig(**{**d, "glob": Decoder(**d["glob"]), "local": Decoder(**d["local"])})
    if d.get("architecture") == "flat":
        return FlatConfig(**{**d, "decoder": Decoder(**d["decoder"])})
    raise ValueError(f"checkpoint architecture {d.get('architecture')!r} is unknown; accepted: megabyte, flat")


# --- blocks ----------------------------------------------------------------------------------------
def rope_tables(cfg: Decoder, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (n, head_dim/2) at positions 0..n-1."""
    inv_freq = 1.0 / cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float64) / cfg.head_dim)
    angles = torch.arange(n, dtype=torch.float64)[:, None] * inv_freq[None]
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half rotary on x (B, nh, T, hd) with cos, sin (T, hd/2)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: Decoder):
        super().__init__()
        self.cfg = cfg
        hd = cfg.head_dim
        self.q_proj = nn.Linear(cfg.dim, cfg.n_heads * hd, bias=False)
        self.k_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * hd, bias=False)
        self.v_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * hd, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * hd, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        nh, nkv, hd = self.cfg.n_heads, self.cfg.n_kv_heads, self.cfg.head_dim
        q = self.q_proj(x).view(B, T, nh, hd).transpose(1, 2)      # (B, nh, T, hd)
        k = self.k_proj(x).view(B, T, nkv, hd).transpose(1, 2)     # (B, nkv, T, hd)
        v = self.v_proj(x).view(B, T, nkv, hd).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=nh != nkv)   # (B, nh, T, hd)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, nh * hd))


class MLP(nn.Module):
    def __init__(self, cfg: Decoder):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.dim, cfg.mlp_dim, bias=False)
        self.up_proj = nn.Linear(cfg.dim, cfg.mlp_dim, bias=False)
        self.down_proj = nn.Linear(cfg.mlp_dim, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: Decoder):
        super().__init__()
        self.input_layernorm = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class Stack(nn.Module):
    """Blocks and a final norm; positions 0..T-1."""

    def __init__(self, cfg: Decoder, max_positions: int):
        super().__init__()
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps)
        cos, sin = rope_tables(cfg, max_positions)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = x.shape[1]
        for layer in self.layers:
            x = layer(x, self.cos[:T], self.sin[:T])
        return self.norm(x)


# --- MEGABYTE --------------------------------------------------------------------------------------
class Megabyte(nn.Module):
    def __init__(self, cfg: MegabyteConfig):
        super().__init__()
        self.cfg = cfg
        P, e = cfg.patch_size, cfg.glob.dim // cfg.patch_size
        # slot p of a patch reads row p * 257 + byte: each slot has its own byte table, so the
        # concatenation knows where in the patch each byte sits, and the pad patch is P learned vectors
        self.patch_embed = nn.Embedding(P * (BYTES + 1), e)
        self.register_buffer("slot_offset", torch.arange(P) * (BYTES + 1), persistent=False)
        self.glob = Stack(cfg.glob, cfg.max_patches)
        self.global_to_local = nn.Linear(e, cfg.local.dim, bias=False)      # the paper's w_GL
        self.local_embed = nn.Embedding(BYTES + 1, cfg.local.dim)
        self.local = Stack(cfg.local, P)
        self.lm_head = nn.Linear(cfg.local.dim, BYTES, bias=False)
        self.apply(_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T) bytes, T a multiple of P -> logits (B, T, 256); logits[:, t] predict x[:, t]."""
        B, T = x.shape
        P, D = self.cfg.patch_size, self.cfg.local.dim
        K = T // P
        patches = x.view(B, K, P)                                                  # (B, K, P)
        pad_patch = torch.full((B, 1, P), PAD, dtype=x.dtype, device=x.device)
        g = torch.cat([pad_patch, patches[:, :-1]], dim=1)                         # (B, K, P): shifted one patch
        g = self.patch_embed(g + self.slot_offset).view(B, K, -1)                  # (B, K, P*e)
        g = self.glob(g).view(B, K, P, -1)                                         # (B, K, P, e)
        context = self.global_to_local(g)                                          # (B, K, P, D)
        start = torch.full((B, K, 1), PAD, dtype=x.dtype, device=x.device)
        prev = torch.cat([start, patches[..., :-1]], dim=-1)                       # (B, K, P): shifted one byte
        h = context + self.local_embed(prev)                                       # (B, K, P, D)
        h = self.local(h.view(B * K, P, D))                                        # (B*K, P, D): patches independent
        return self.lm_head(h).view(B, T, BYTES)


# --- the flat baseline -----------------------------------------------------------------------------
class FlatByteLM(nn.Module):
    """A decoder over bytes, the same blocks; its weights are named like a Hugging Face Llama's."""

    def __init__(self, cfg: FlatConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(BYTES, cfg.decoder.dim)
        self.model = Stack(cfg.decoder, cfg.max_bytes)
        self.lm_head = nn.Linear(cfg.decoder.dim, BYTES, bias=False)
        self.apply(_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T) bytes -> logits (B, T, 256); logits[:, t] predict x[:, t + 1]."""
        return self.lm_head(self.model(self.embed_tokens(x)))


def _init(m: nn.Module) -> None:
    if isinstance(m, (nn.Linear, nn.Embedding)):
        nn.init.normal_(m.weight, std=0.02)


def build(cfg: MegabyteConfig | FlatConfig) -> nn.Module:
    return Megabyte(cfg) if isinstance(cfg, MegabyteConfig) else FlatByteLM(cfg)


def loss_bits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy in bits per predicted byte. MEGABYTE predicts every byte of x (the pad
    patch stands before the first); the flat model every byte after the first."""
    logits = model(x)
    if isinstance(model, FlatByteLM):
        logits, x = logits[:, :-1], x[:, 1:]
    return F.cross_entropy(logits.reshape(-1, BYTES).float(), x.reshape(-1)) / math.log(2)


# --- compute ---------------------------------------------------------------------------------------
def _decoder_flops(cfg: Decoder, context: int) -> float:
    """Forward FLOPs per position: 2 per weight of the matmuls, plus attention over `context`
    positions on average (QK^T and AV, 2 * 2 * dim each)."""
    hd = cfg.head_dim
    weights = cfg.dim * hd * (2 * cfg.n_heads + 2 * cfg.n_kv_heads) + 3 * cfg.dim * cfg.mlp_dim
    return cfg.n_layers * (2 * weights + 4 * cfg.n_heads * hd * context)


def train_flops_per_byte(cfg: MegabyteConfig | FlatConfig, seq_bytes: int) -> float:
    """Training FLOPs per byte (3x forward: forward + backward) for sequences of `seq_bytes`, with the
    heads; causal attention sees half the sequence on average."""
    if isinstance(cfg, MegabyteConfig):
        P = cfg.patch_size
        glob = _decoder_flops(cfg.glob, seq_bytes // P / 2) / P
        local = _decoder_flops(cfg.local, P / 2) + 2 * cfg.glob.dim // P * cfg.local.dim + 2 * cfg.local.dim * BYTES
        return 3 * (glob + local)
    return 3 * (_decoder_flops(cfg.decoder, seq_bytes / 2) + 2 * cfg.decoder.dim * BYTES)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
