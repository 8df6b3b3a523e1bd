"""NAMM: a learned eviction policy (Cetin et al. 2024, "An Evolved Universal Transformer Memory").

Each cached token gets a feature vector built from how it has been attended to; a tiny network
shared by every layer and KV head turns the features into a keep-score; CMA-ES evolves its
parameters (`slm/evolve/`), and the result ships inside the package (`namm.npz`, manifest `namm_file`).

What we keep from the paper, and what we give up:
- NAMM's features are an STFT spectrogram of each token's attention over the last queries, reduced
  by an EMA over time. The exported graph gives per-step attention mass per KV head only (never a
  per-query history), so the spectrum is approximated by a bank of EMAs of that mass at several
  half-lives (`last`, 4, 16 = `recent`, 64, 256 queries): low-pass filters at different cut-offs
  instead of band-passes, and no phase. Plus the mean mass per query since the token arrived
  (cumulative / age), and a recency embedding (log age, sinusoids of age, log position).
- NAMM's backward-attention memory (BAM): each token attends only to tokens newer than itself in
  the same (layer, head), so it can tell "still attended by what came after me" from "superseded".
  Single head, then a small MLP, plus a linear skip from the features (a prior the evolution starts
  from). About a thousand parameters.
- One statistic NAMM does not have: `opening`, the share of attention a token's step gave to the
  conversation's opening (system prompt, first instruction; positions OPENING). It is query-aware at
  arrival, when the question opens the prompt: measured on the training probes, the needle sentence
  survives a streamed prefill at a 25% budget about twice as often ranked by it as by any attention-
  received statistic (docs/NAMM.md, seventh run). It is per prefill chunk (32 tokens), not per token.
- NAMM evicts every token with a negative score (a variable count per head); here the cache evicts
  a fixed count per (layer, head), so only the ranking matters.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from slm.runtime.eviction.base import CUMULATIVE, LAST, RECENT, CacheView, Policy, Statistic
from slm.core.errors import PackageError

SPECTRUM_HALF_LIVES = (4.0, 64.0, 256.0)   # queries: NAMM's bank of attention-mass EMAs (`spectrum`)
OPENING = (4, 68)       # true positions: the conversation's opening after the 4 sinks (system prompt, first instruction)

AGE_PERIODS = (8.0, 64.0, 512.0)                # tokens: the recency embedding's sinusoid periods
FEATURES = ("log_mass_last", "log_mass_ema4", "log_mass_ema16", "log_mass_ema64", "log_mass_ema256",
            "log_mass_per_query", "log_age") + tuple(f"{f}_age_{int(p)}" for p in AGE_PERIODS for f in ("sin", "cos")) \
           + ("log_position", "log_opening")
D_MODEL, D_ATTN, D_HIDDEN = 16, 8, 16
FORMAT = "namm-bam/2"
FORMATS_READ = {"namm-bam/1": FEATURES[:-1], FORMAT: FEATURES}   # a /1 scorer reads log_opening with weight 0


def _fold_spectrum(value, mass, n_queries, positions):
    decays = 0.5 ** (n_queries / np.asarray(SPECTRUM_HALF_LIVES, np.float32))
    value *= decays[:, None, None, None]
    value += mass / n_queries


def _fold_opening(value, mass, n_queries, positions):
    """What the step's queries read in the opening: the step's tokens' own (query-aware) statistic;
    slots hold increasing positions, so the opening's tokens sit in the first OPENING[1] slots."""
    n = mass.shape[-1]
    head = min(n, OPENING[1])
    pos = positions[:, :, :head]
    read = np.where((pos >= OPENING[0]) & (pos < OPENING[1]), mass[..., :head], 0).sum(-1)
    value[:, :, n - n_queries:n] = (read / n_queries)[..., None]


# float32 (S, L, H, n): EMAs of the mass at SPECTRUM_HALF_LIVES
SPECTRUM = Statistic("spectrum", _fold_spectrum, bank=len(SPECTRUM_HALF_LIVES))
# float32 (L, H, n): share of its step's attention each token's step gave to the opening (positions OPENING), per query
OPENING_READ = Statistic("opening", _fold_opening)


def namm_features(view: CacheView) -> np.ndarray:
    """(L, H, n, F) features of every cached token, in the order of FEATURES."""
    n = view.positions.shape[-1]
    age = np.maximum(view.next_position - view.positions, 1).astype(np.float32)          # (L, H, n)
    spectrum = view.stats.get("spectrum")
    spectrum = spectrum if spectrum is not None else np.zeros((len(SPECTRUM_HALF_LIVES),) + age.shape, np.float32)
    masses = [view.last, spectrum[0], view.recent, spectrum[1], spectrum[2], view.cumulative / age]
    # n * mass: 1 is "as much as a uniform query gives" whatever the cache length
    feats = [np.log(1e-4 + n * m) / 4 for m in masses] + [np.log1p(age) / 8]
    for period in AGE_PERIODS:
        feats += [np.sin(2 * np.pi * age / period), np.cos(2 * np.pi * age / period)]
    feats.append(np.log1p(view.positions.astype(np.float32)) / 8)
    opening = view.stats.get("opening")
    opening = opening if opening is not None else np.zeros(age.shape, np.float32)
    feats.append(np.log(1e-4 + opening) / 4)
    return np.stack(feats, axis=-1).astype(np.float32)


@dataclass(frozen=True)
class BackwardAttentionMemory:
    """The scorer: embed the features, one backward-masked attention head, an MLP, a linear skip.

        x = tanh(f We + be)                          (B, n, D)   B = layers * KV heads
        x = x + softmax_{j >= i}(q_i . k_j / sqrt(A)) v_j Wo      each token looks only at newer ones
        s = relu(x W1 + b1) . w2 + f . w_skip        (B, n)      higher = keep
    """
    We: np.ndarray          # (F, D)
    be: np.ndarray          # (D,)
    Wq: np.ndarray          # (D, A)
    Wk: np.ndarray          # (D, A)
    Wv: np.ndarray          # (D, A)
    Wo: np.ndarray          # (A, D)
    W1: np.ndarray          # (D, Hd)
    b1: np.ndarray          # (Hd,)
    w2: np.ndarray          # (Hd,)
    w_skip: np.ndarray      # (F,)

    SHAPES = {"We": (len(FEATURES), D_MODEL), "be": (D_MODEL,), "Wq": (D_MODEL, D_ATTN), "Wk": (D_MODEL, D_ATTN),
              "Wv": (D_MODEL, D_ATTN), "Wo": (D_ATTN, D_MODEL), "W1": (D_MODEL, D_HIDDEN), "b1": (D_HIDDEN,),
              "w2": (D_HIDDEN,), "w_skip": (len(FEATURES),)}

    @classmethod
    def size(cls) -> int:
        return sum(int(np.prod(s)) for s in cls.SHAPES.values())

    @classmethod
    def from_vector(cls, theta: np.ndarray) -> "BackwardAttentionMemory":
        """The flat parameter vector CMA-ES searches over, cut into the named arrays."""
        theta = np.asarray(theta, np.float32)
        if theta.shape != (cls.size(),):
            raise ValueError(f"expected {cls.size()} parameters, got shape {theta.shape}")
        parts, i = {}, 0
        for name, shape in cls.SHAPES.items():
            k = int(np.prod(shape))
            parts[name] = theta[i:i + k].reshape(shape)
            i += k
        return cls(**parts)

    def to_vector(self) -> np.ndarray:
        return np.concatenate([getattr(self, name).ravel() for name in self.SHAPES]).astype(np.float32)

    def forward(self, f: np.ndarray, tile: int = 64) -> np.ndarray:
        """f: (B, n, F) features, slots in position order -> (B, n) scores.

        The backward attention runs in row tiles: rows [r0, r1) only need columns from r0 on, so half
        of the (n, n) square is never computed and memory stays at (B, tile, n)."""
        B, n, _ = f.shape
        if not self.w2.any():                       # a linear scorer (`slm evolve --search skip`): the
            return f @ self.w_skip                  # network's output is multiplied by 0, skip computing it
        x = np.tanh(f @ self.We + self.be)                                   # (B, n, D)
        q = (x @ self.Wq) / np.float32(np.sqrt(D_ATTN))                      # (B, n, A)
        k, v = x @ self.Wk, x @ self.Wv                                      # (B, n, A)
        kT = k.transpose(0, 2, 1)                                            # (B, A, n)
        # |q.k| <= |q||k|: below ~80, exp cannot overflow float32 and the usual max-subtraction is skipped
        bounded = float(np.linalg.norm(q, axis=-1).max() * np.linalg.norm(k, axis=-1).max()) < 60
        older = np.tril(np.full((tile, tile), -np.inf, np.float32), -1)     # [i, j]: j < i, masked
        out = np.empty_like(v)
        for r0 in range(0, n, tile):
            r1 = min(n, r0 + tile)
            logits = q[:, r0:r1] @ kT[:, :, r0:]                             # (B, t, n - r0)
            logits[:, :, :r1 - r0] += older[:r1 - r0, :r1 - r0]
            if not bounded:
                logits -= logits.max(-1, keepdims=True)
            np.exp(logits, out=logits)
            out[:, r0:r1] = (logits @ v[:, r0:]) / logits.sum(-1, keepdims=True)
        x = x + out @ self.Wo                                                # (B, n, D)
        h = np.maximum(x @ self.W1 + self.b1, 0)                             # (B, n, Hd)
        return h @ self.w2 + f @ self.w_skip                                 # (B, n)


@dataclass(frozen=True)
class NAMM(Policy):
    """Neural Attention Memory Model (Cetin et al. 2024): an evolved backward-attention scorer over
    per-token attention statistics; higher = keep."""
    name = "namm"
    statistics = (LAST, RECENT, CUMULATIVE, SPECTRUM, OPENING_READ)
    scorer: BackwardAttentionMemory = field(repr=False)

    @classmethod
    def from_package(cls, package: str | Path) -> "NAMM":
        from slm.runtime.eviction.namm_file import load_scorer
        from slm.core.package import read_manifest
        m = read_manifest(package)
        if not m.namm_file:
            raise PackageError(f"--kv-policy namm needs an evolved scorer, but package {str(package)!r} has none; "
                               f"make one with `slm evolve --model {package}` (or choose h2o, tova, snapkv)")
        return cls(load_scorer(Path(package) / m.namm_file)[0])

    def score(self, view: CacheView) -> np.ndarray:
        f = namm_features(view)                                             # (L, H, n, F)
        L, H, n, F = f.shape
        return self.scorer.forward(f.reshape(L * H, n, F)).reshape(L, H, n)
