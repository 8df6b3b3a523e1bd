"""bench/longctx_bytes.py's table: every cell against the fp32 full cache, and the best cell within each byte share."""
import json

import pytest

from bench.longctx_bytes import points, table


def _results(folder, cells):
    folder.mkdir(parents=True)
    rows = lambda score, kib: [{"task": "t", "score": score, "kv_bytes": kib * 1024}] * 2
    folder.joinpath("results.json").write_text(json.dumps(
        {"package": "/p/smollm2", "cells": [{"policy": p, "budget": b, "rows": rows(s, k)} for p, b, s, k in cells]}))


def test_best_cell_within_each_byte_share(tmp_path):
    _results(tmp_path / "fp32", [("full", 1.0, 0.8, 4096), ("snapkv", 0.25, 0.2, 1000)])
    _results(tmp_path / "int8", [("full", 1.0, 0.76, 1030), ("snapkv", 0.9, 0.74, 930)])
    text = table(points(tmp_path, ["fp32", "int8"]), [0.25])
    assert "| int8 | full cache | 0.760 | 1.0 | 25.1% | 95.0% |" in text
    # int8's full cache is 25.1% (its scales): over the share, so the best within 25% is int8 snapkv @ 90%
    assert "| 25.0% | int8 snapkv @ 90% (0.9 MiB) | 92.5% |" in text


def test_the_fp32_full_cache_is_required(tmp_path):
    _results(tmp_path / "int8", [("full", 1.0, 0.76, 1030)])
    with pytest.raises(SystemExit, match="fp32"):
        table(points(tmp_path, ["int8"]), [0.25])
