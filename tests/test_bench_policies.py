"""benchmarks/policies.py: each timed pass gets prompts no earlier pass saw; rows name the prefix-caching setting."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import policies  # noqa: E402

BLOCK = 16  # vLLM's smallest KV block: prompts differing within it share no cached block


@pytest.mark.parametrize("name", sorted(policies.PRESETS))
@pytest.mark.parametrize("vocab_size", [1024, 128256])  # the tiny model's and Llama-3.1-8B's
def test_passes_share_no_prompt_prefix(name, vocab_size):
    preset = policies.PRESETS[name]
    passes = policies.pass_prompts(preset, preset.requests, vocab_size)
    assert list(passes) == (["prefill", "full"] if preset.prefill_pass else ["full"])
    heads = [tuple(p[:BLOCK]) for prompts in passes.values() for p in prompts]
    assert len(set(heads)) == len(heads)  # across passes and within each one
    for prompts in passes.values():
        assert len(prompts) == preset.requests and {len(p) for p in prompts} == {preset.prompt_len}
        assert all(100 <= t < vocab_size - 100 for p in prompts[:4] for t in p)


def test_pass_prompts_are_seeded_and_the_full_run_keeps_its_earlier_prompts():
    preset = policies.PRESETS["cpu-tiny"]
    first = policies.pass_prompts(preset, 4, 1024)
    assert first == policies.pass_prompts(preset, 4, 1024)  # every configuration gets the same
    assert first["full"] == policies.make_prompts(preset, 4, 1024)  # seed 0, as before the passes were seeded apart


def test_table_names_each_rows_prefix_caching():
    row = dict(config="vanilla", prefix_caching=True, pool_tokens=3136, kv_kib_per_request=6246.0,
               peak_kv_kib_per_request=6246.0, capacity_requests=2.0, peak_running=2, prefill_s=2.5, decode_s=2.0,
               output_tok_s=114.9, decode_only_tok_s=300.0, decode_only_batch=2.0, preemptions=0)
    lines = policies.table([row, {**row, "config": "snapkv", "prefix_caching": False},
                            {"config": "pod", "refused": "too long"}]).splitlines()
    assert lines[0].startswith("| config | prefix caching | pool tokens |")
    assert lines[2].startswith("| vanilla | on | 3136 |") and lines[3].startswith("| snapkv | off | 3136 |")
    assert lines[4].startswith("| pod | | does not start: too long |")
    assert {line.count("|") for line in lines} == {12}
