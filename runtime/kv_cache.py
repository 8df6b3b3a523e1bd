"""The KV cache: one pre-allocated K and V buffer per layer, sized once by the budget, never grown.

Buffers are (1, num_kv_heads, capacity, head_dim). ONNX Runtime's GroupQueryAttention reads past
keys from, and appends new ones into, the same buffer (past and present are bound to one OrtValue),
so a decode step copies no KV. Slot `s` holds the token at true position `positions[s]`; after
eviction compacts the buffer, positions are no longer `0..length-1`, which is why the graph takes
position ids as an input.
"""
from __future__ import annotations

import re

import numpy as np
import onnxruntime as ort

from slm.errors import SlmError
from slm.package import Manifest

_UNITS = {"": 1, "b": 1, "kb": 1000, "mb": 1000 ** 2, "gb": 1000 ** 3,
          "kib": 1024, "mib": 1024 ** 2, "gib": 1024 ** 3}


def parse_budget(text: str | int | None, manifest: Manifest) -> int | None:
    """A KV budget as tokens: "2048" or "2048tok" are tokens, "16MiB"/"64MB"/"1000000B" are bytes."""
    if text is None:
        return None
    if isinstance(text, int):
        tokens = text
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(tok|tokens|[kmg]i?b|b)?\s*", str(text).lower())
        if not m:
            raise SlmError(f"KV budget {text!r} is not understood; give tokens (2048) or bytes (16MiB, 64MB, 1GiB)")
        value, unit = float(m.group(1)), m.group(2) or "tok"
        if unit in ("tok", "tokens"):
            tokens = int(value)
        else:
            per_token = manifest.kv.bytes_per_token(manifest.dims)
            tokens = int(value * _UNITS[unit]) // per_token
    if tokens < 16:
        per_token = manifest.kv.bytes_per_token(manifest.dims)
        raise SlmError(f"KV budget {text!r} holds {tokens} tokens; at least 16 are needed "
                       f"({16 * per_token} bytes for this model, {per_token} bytes per token)")
    return tokens


class KVCache:
    def __init__(self, manifest: Manifest, capacity: int, device: str = "cpu"):
        d = manifest.dims
        dtype = np.float16 if manifest.kv.dtype == "float16" else np.float32
        shape = (1, d.num_kv_heads, capacity, d.head_dim)
        self.capacity = capacity
        if device == "cpu":      # numpy owns the memory, OrtValues view it: eviction compacts in numpy
            self.keys = [np.zeros(shape, dtype) for _ in range(d.num_layers)]
            self.values = [np.zeros(shape, dtype) for _ in range(d.num_layers)]
            self.key_ort = [ort.OrtValue.ortvalue_from_numpy(a) for a in self.keys]
            self.value_ort = [ort.OrtValue.ortvalue_from_numpy(a) for a in self.values]
        else:
            self.keys = self.values = None
            self.key_ort = [ort.OrtValue.ortvalue_from_shape_and_type(shape, dtype, device, 0) for _ in range(d.num_layers)]
            self.value_ort = [ort.OrtValue.ortvalue_from_shape_and_type(shape, dtype, device, 0) for _ in range(d.num_layers)]
        self.nbytes = 2 * d.num_layers * int(np.prod(shape)) * np.dtype(dtype).itemsize
        self.positions = np.zeros(capacity, np.int64)   # true position of the token in each slot
        self.decode_binding = None                      # the engine's fixed one-token binding, made on first use
        self.reset()

    def reset(self) -> None:
        self.length = 0             # slots in use
        self.next_position = 0      # true position of the next token
        self.history: list[int] = []  # every token fed, in order (the logical conversation)
        self.evicted = 0

    def append(self, n: int) -> None:
        """Record that the graph appended n tokens at slots [length, length+n)."""
        self.positions[self.length:self.length + n] = np.arange(self.next_position, self.next_position + n)
        self.length += n
        self.next_position += n

    def truncate(self, length: int) -> None:
        """Forget slots from `length` on (only valid before any eviction)."""
        self.length = length
        self.next_position = length
        self.history = self.history[:length]
