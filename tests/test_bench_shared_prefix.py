"""benchmarks/shared_prefix.py on the tiny Llama (CPU smoke): every row runs, the files are written, and the
prefix-cache hit rates are exactly what each row's setting allows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.vllm

SCRIPT = Path(__file__).parent.parent / "benchmarks" / "shared_prefix.py"


def test_rows_hit_the_shared_prefix_only_with_prefix_caching(tmp_path, tiny_llama_dir):
    out = tmp_path / "sp"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    subprocess.run([sys.executable, str(SCRIPT), "--model", str(tiny_llama_dir), "--shared", "256", "--own", "256",
                    "--requests", "4", "--max-tokens", "8", "--enforce-eager", "--out", str(out),
                    "--engine", '{"dtype": "float32", "block_size": 32}',
                    "--configs", "vanilla,snapkv-nopc,snapkv-protected"], check=True, env=env, capture_output=True)
    result = json.loads(out.with_suffix(".json").read_text())
    rows = {r["key"]: r for r in result["rows"]}
    # Each timed request is 256 shared + 256 own tokens: a hit of the shared half, or nothing without caching.
    assert {k: r["hit_rate"] for k, r in rows.items()} == {"vanilla": 0.5, "snapkv-nopc": 0.0, "snapkv-protected": 0.5}
    assert rows["snapkv-protected"]["settings"] == {"policy": "snapkv", "budget": 0.1, "cache_prefix": 256}
    assert all(r["ttft_p99_s"] >= r["ttft_p50_s"] > 0 and r["peak_running"] == 4 for r in rows.values())
    assert "| snapkv (prefix caching, shared prefix protected) |" in out.with_suffix(".md").read_text()
    assert result["command"].startswith("python benchmarks/shared_prefix.py --model ")
