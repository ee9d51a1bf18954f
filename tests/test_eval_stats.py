"""The eval's statistics: Wilson intervals against hand-computed values, the seeded bootstrap, shares of full KV
taken per task before averaging, and the sizing arithmetic behind --target-ci (no engine, no model)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvcomp_vllm.eval.report import markdown_table
from kvcomp_vllm.eval.scores import summarize
from kvcomp_vllm.eval.sizing import observed_full, samples_needed, sizing_lines
from kvcomp_vllm.eval.stats import Z, percentile_interval, prompts_for, resample_indices, wilson, wilson_half_width
from kvcomp_vllm.eval.tasks import prompts_per_sample


def test_wilson_matches_hand_computed_values():
    assert Z == pytest.approx(1.959964, abs=1e-6)
    z2 = Z * Z
    # 0 of n: [0, z^2 / (n + z^2)]; n of n: [n / (n + z^2), 1]; 2 of 4: centred on 1/2.
    assert wilson(0, 4) == pytest.approx((0.0, z2 / (4 + z2)))
    assert wilson(0, 4)[1] == pytest.approx(0.489891, abs=1e-6)
    assert wilson(12, 12) == pytest.approx((12 / (12 + z2), 1.0))
    assert wilson(12, 12)[0] == pytest.approx(0.757506, abs=1e-6)
    lo, hi = wilson(2, 4)
    assert (lo, hi) == pytest.approx((0.150039, 0.849961), abs=1e-6)
    assert wilson(45, 60) == pytest.approx((0.627679, 0.842235), abs=1e-6)
    for k, n in [(-1, 4), (5, 4), (0, 0)]:
        with pytest.raises(ValueError):
            wilson(k, n)


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 500), data=st.data())
def test_wilson_holds_the_share_and_shrinks_with_n(n, data):
    k = data.draw(st.integers(0, n))
    lo, hi = wilson(k, n)
    assert 0.0 <= lo <= k / n <= hi <= 1.0
    lo4, hi4 = wilson(4 * k, 4 * n)
    assert hi4 - lo4 < hi - lo  # the same share from four times the prompts is narrower


def test_sizing_arithmetic():
    # +-10 points at p = 0.5: 93 prompts (92 give a half-width just over 0.1).
    assert wilson_half_width(0.5, 93) <= 0.1 < wilson_half_width(0.5, 92)
    assert prompts_for(0.10) == 93
    assert prompts_for(0.05) == 381
    assert prompts_for(0.10, p=0.9) == 37 and wilson_half_width(0.9, 37) <= 0.1 < wilson_half_width(0.9, 36)
    assert prompts_for(0.10, p=0.0) == 16  # Wilson's interval at 0 of 16 is [0, 0.19]
    with pytest.raises(ValueError):
        prompts_for(0.5)
    per_sample = prompts_per_sample(["needle", "passkey"], [4000, 8000], (0.0, 0.5, 1.0))
    assert per_sample == {"needle": 6, "passkey": 2}
    assert samples_needed(0.10, per_sample) == 47  # passkey: 93 / 2 lengths; needle 16 x 6 = 96 is plenty
    assert samples_needed(0.10, per_sample, {"passkey": 0.9, "needle": 0.5}) == 19  # 37 / 2; 93 / 6 -> 16
    assert sizing_lines(0.1, per_sample, 4) == [
        "sizing: a 95% Wilson half-width <= 0.1 needs 93 prompts per cell at p = 0.5 (the worst case): "
        "--samples 47; cells now: needle 24, passkey 8 (--samples 4)"]


def test_observed_full_reads_full_kv_shares(tmp_path):
    rows = [dict(setting="full", task="a", correct=c) for c in (True, False, True, True)]
    rows += [dict(setting="snapkv@10%", task="a", correct=False), dict(setting="full", task="b", correct=False)]
    (tmp_path / "results.json").write_text(json.dumps({"records": rows}))
    assert observed_full(tmp_path / "results.json") == {"a": 0.75, "b": 0.0}


def test_resampling_is_seeded():
    first = resample_indices(12, "0:needle", 50)
    assert first.shape == (50, 12) and first.min() >= 0 and first.max() < 12
    assert np.array_equal(first, resample_indices(12, "0:needle", 50))
    assert not np.array_equal(first, resample_indices(12, "1:needle", 50))
    assert percentile_interval(np.array([np.nan, np.nan])) is None
    assert percentile_interval(np.arange(101.0)) == pytest.approx((2.5, 97.5))


def _rows(table):
    """Records from {setting: {task: [0/1 per prompt]}}, prompts numbered per task."""
    return [dict(setting=s, policy=s.split("@")[0], budget=None if s == "full" else 0.1, task=t, index=i,
                 correct=bool(c)) for s, tasks in table.items() for t, column in tasks.items()
            for i, c in enumerate(column)]


TABLE = {"full": {"a": [1, 1, 0, 1], "b": [1, 0, 0, 0], "c": [0, 0, 0, 0]},
         "snapkv@10%": {"a": [1, 0, 0, 1], "b": [1, 0, 0, 0], "c": [1, 0, 0, 0]}}


def test_shares_are_per_task_before_the_average():
    got = {(r["setting"], r["task"]): r for r in summarize(_rows(TABLE))}
    snap, full = got[("snapkv@10%", "all")], got[("full", "all")]
    # Mean of task scores: (2/4 + 1/4 + 1/4) / 3; the share of full: task a 2/3, b 1/1, c has no full answer.
    assert snap["score"] == pytest.approx(1 / 3) and full["score"] == pytest.approx(1 / 3)
    assert snap["relative"] == pytest.approx((2 / 3 + 1) / 2)  # not the ratio of the means, which is 1
    assert snap["relative_tasks"] == "a,b" and snap["n"] == 12 and snap["interval"] == "bootstrap"
    assert got[("snapkv@10%", "a")]["relative"] == pytest.approx(2 / 3)
    assert got[("snapkv@10%", "c")]["relative"] is None  # full KV answers none of c
    assert (got[("snapkv@10%", "a")]["lo"], got[("snapkv@10%", "a")]["hi"]) == pytest.approx(wilson(2, 4))
    assert got[("full", "a")]["rel_lo"] == got[("full", "a")]["rel_hi"] == 1.0
    assert snap["lo"] <= snap["score"] <= snap["hi"] and snap["rel_lo"] <= snap["relative"] <= snap["rel_hi"]
    # In every replicate task b's share is 1 (where defined: b's one full-KV answer is snapkv's); task a's is
    # at most 1 (snapkv's answers are a subset of full KV's), so the share's interval never passes 1.
    assert snap["rel_hi"] <= 1.0


def test_bootstrap_is_deterministic_and_paired():
    rng = np.random.default_rng(7)
    wide = {"full": {t: list(rng.integers(0, 2, 40)) for t in "ab"}}
    wide["snapkv@10%"] = {t: [c * int(rng.random() < 0.7) for c in column] for t, column in wide["full"].items()}
    rows = _rows(wide)
    first = summarize(rows)
    assert first == summarize(rows)
    other = summarize(rows, seed=1)
    assert [r["score"] for r in other] == [r["score"] for r in first]
    bounds = lambda summary: [(r["lo"], r["hi"], r["rel_lo"], r["rel_hi"]) for r in summary if r["task"] == "all"]
    assert bounds(other) != bounds(first)  # another seed, other draws
    # A setting that answers exactly as full KV has a share of [1, 1] only if the draws are paired.
    same = _rows({"full": TABLE["full"], "copy@10%": TABLE["full"]})
    copy = next(r for r in summarize(same) if r["setting"] == "copy@10%" and r["task"] == "all")
    assert (copy["relative"], copy["rel_lo"], copy["rel_hi"]) == (1.0, 1.0, 1.0)


def test_settings_must_share_their_prompts():
    rows = _rows(TABLE)
    rows[-1] = dict(rows[-1], index=9)
    with pytest.raises(ValueError, match="its c prompts are not those of the other settings"):
        summarize(rows)


def test_tables_show_intervals_and_shares():
    table = markdown_table(summarize(_rows(TABLE)))
    snap = next(r for r in summarize(_rows(TABLE)) if r["setting"] == "snapkv@10%" and r["task"] == "all")
    assert table.splitlines()[2].startswith("| full | 0.333 [") and "(reference, every budget)" in table
    assert table.splitlines()[3] == (f"| snapkv | 0.333 [{snap['lo']:.2f}, {snap['hi']:.2f}] · 83% "
                                     f"[{snap['rel_lo'] * 100:.0f}, {snap['rel_hi'] * 100:.0f}] |")
