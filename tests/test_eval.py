"""The evaluation harness: seeded exact-length tasks, the answer check, and a tiny suite through vLLM.

`full` is checked against the oracle generator (kvcomp_vllm/testing/oracle.py), a transformers greedy
loop that shares no code with the harness's engine path: equal completions mean the prompts reach the
engine intact and the per-request override really ran full KV, and float32 on CPU makes it exact
(test_vllm_engine.py asserts the same token equality per policy).
"""

from __future__ import annotations

import csv
import gzip
import json
from argparse import Namespace

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from kvcomp_vllm import KVPolicyConfig
from kvcomp_vllm.eval import check_answer
from kvcomp_vllm.eval.budgets import parse_budget
from kvcomp_vllm.eval.corpus import generated_paragraphs, load_corpus, read_paragraphs
from kvcomp_vllm.eval.main import evaluate, plan
from kvcomp_vllm.eval.scores import summarize
from kvcomp_vllm.eval.runner import Setting, grid
from kvcomp_vllm.eval.tasks import TASKS, PromptBuilder, TooShort, build_suite
from kvcomp_vllm.testing.oracle import generate

LENGTHS = [512, 1024]


@pytest.fixture(scope="module")
def tokenizer(tiny_llama_dir):
    return AutoTokenizer.from_pretrained(tiny_llama_dir)


@pytest.fixture(scope="module")
def builder(tokenizer):
    return PromptBuilder(tokenizer, generated_paragraphs(300, 0))


def test_check_answer_needs_the_value_first_and_whole():
    assert check_answer(" 43936.", "43936")
    assert check_answer("Marigold", "Marigold")
    assert check_answer("\n 1903, in Lyon", "1903")
    assert not check_answer(" 439361", "43936")  # a longer number
    assert not check_answer(" Marigolds", "Marigold")
    assert not check_answer(" it is 43936", "43936")
    assert not check_answer(" marigold", "Marigold")
    assert not check_answer("", "1")


def test_every_task_has_the_exact_length_and_is_seeded(builder, tokenizer):
    suite = build_suite(builder, LENGTHS, 2, depths=(0.0, 1.0), seed=3)
    assert {s.task for s in suite} == set(TASKS)
    assert len(suite) == (len(TASKS) + 1) * len(LENGTHS) * 2  # needle: two depths
    for sample in suite:
        assert len(sample.prompt_ids) == sample.length
        text = tokenizer.decode(sample.prompt_ids)
        if sample.task != "fewshot":
            assert sample.answer in text  # the fact is in the context
    again = build_suite(builder, LENGTHS, 2, depths=(0.0, 1.0), seed=3)
    assert again == suite
    other = build_suite(builder, LENGTHS, 2, depths=(0.0, 1.0), seed=4)
    assert [s.prompt_ids for s in other] != [s.prompt_ids for s in suite]


def test_needle_depth_places_the_fact(builder, tokenizer):
    early, late = build_suite(builder, [1024], 1, ["needle"], depths=(0.0, 1.0))
    def where(sample):
        text = tokenizer.decode(sample.prompt_ids)
        return text.index("By the way") / len(text)

    assert where(early) < 0.1 and where(late) > 0.8


def test_too_short_lengths_are_refused(builder):
    with pytest.raises(TooShort):
        build_suite(builder, [64], 1, ["multidoc"])
    with pytest.raises(ValueError, match="unknown task"):
        build_suite(builder, [512], 1, ["nope"])


def test_corpus_reads_dictzip_paragraphs(tmp_path):
    path = tmp_path / "book.dict.dz"
    path.write_bytes(gzip.compress(b"TITLE\n\nFirst paragraph of the book, {long} enough\nto keep.\n\nx\n"))
    assert read_paragraphs(path) == ["First paragraph of the book, long enough to keep."]
    name, paragraphs = load_corpus(path)
    assert name == "book.dict.dz" and len(paragraphs) == 1
    assert len(set(generated_paragraphs(50, 1))) == 50  # varied, not one sentence repeated


def test_grid_and_budgets():
    assert parse_budget("10%") == 0.1 and parse_budget("0.025") == 0.025 and parse_budget("512") == 512
    labels = [s.label for s in grid(["snapkv", "pod"], [0.1, 128])]
    assert labels == ["full", "snapkv@10%", "snapkv@128tok", "pod@128tok"]
    assert Setting("pod", 128, (("group_size", 2),)).kvcomp() == {"policy": "pod", "recent": 128, "group_size": 2}


def test_grid_params_reach_the_requests_and_are_checked_first():
    settings = grid(["snapkv", "pyramid"], [0.1], {"pyramid": {"pool_size": 15, "beta": 4.0}})
    assert [s.kvcomp() for s in settings] == [
        {"policy": "full"},
        {"policy": "snapkv", "budget": 0.1},
        {"policy": "pyramid", "budget": 0.1, "beta": 4.0, "pool_size": 15},
    ]
    assert grid(["pyramid"], [0.1], {"pyramid": {"kernel": 15, "beta": 4.0}}) == settings[::2]  # its old name
    with pytest.raises(ValueError, match=r"params for windowkv: not among the evaluated policies \(snapkv\)"):
        grid(["snapkv"], [0.1], {"windowkv": {"window_size": 8}})
    with pytest.raises(ValueError, match=r"^snapkv@10%: .*pool_size: must be odd"):
        grid(["snapkv"], [0.1], {"snapkv": {"pool_size": 4}})
    with pytest.raises(ValueError, match=r"^snapkv@10%: .*kernel: must be odd"):  # named as given
        grid(["snapkv"], [0.1], {"snapkv": {"kernel": 4}})
    named = Setting("snapkv", 0.1, (("pool_size", 15),), name="snapkv-wide")
    assert named.label == "snapkv-wide@10%" and named.variant == "snapkv-wide"
    assert named.kvcomp() == {"policy": "snapkv", "budget": 0.1, "pool_size": 15}


def test_summary_scores_relative_to_full():
    rows = [dict(setting=s, policy=s.split("@")[0], budget=None if s == "full" else 0.1, task=t, correct=c)
            for s, t, c in [("full", "a", True), ("full", "a", True), ("full", "b", True), ("full", "b", False),
                            ("snapkv@10%", "a", True), ("snapkv@10%", "a", False), ("snapkv@10%", "b", False),
                            ("snapkv@10%", "b", False)]]
    got = {(r["setting"], r["task"]): (r["score"], r["relative"]) for r in summarize(rows)}
    assert got[("full", "all")] == (0.75, 1.0)
    assert got[("snapkv@10%", "a")] == (0.5, 0.5)
    assert got[("snapkv@10%", "b")] == (0.0, 0.0)
    # The share of full is taken per task, then averaged: (1/2 + 0/1) / 2, not 0.25 / 0.75.
    assert got[("snapkv@10%", "all")] == (0.25, 0.25)


def _args(model_dir, out, **kw):
    base = dict(model=str(model_dir), out=out, policies=["snapkv", "pod"], budgets=[0.25, 64], lengths=[512],
                tasks=["needle", "passkey", "multikey"], samples=1, depths=[0.0, 1.0], seed=0, corpus=None,
                no_chat=False, server=None, concurrency=2, dtype="float32", max_model_len=1024, pod_group_size=2,
                no_plots=False, quiet=True, params={}, variants=[], kv_cache_gib=None, dry_run=False)
    return Namespace(**{**base, **kw})


@pytest.mark.vllm
def test_tiny_suite_full_equals_the_oracle_and_is_deterministic(tiny_llama_dir, tmp_path):
    first = evaluate(_args(tiny_llama_dir, tmp_path / "a"))
    second = evaluate(_args(tiny_llama_dir, tmp_path / "b", no_plots=True))
    assert [r["output"] for r in first["rows"]] == [r["output"] for r in second["rows"]]
    assert first["summary"] == second["summary"]

    # full (and snapkv, through the per-request override) equal the oracle generator's greedy text.
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    suite = json.loads(first["paths"]["json"].read_text())["suite"]
    builder = PromptBuilder(tokenizer, load_corpus(None, 0)[1])
    samples = build_suite(builder, [512], 1, ["needle", "passkey", "multikey"], (0.0, 1.0), 0)
    assert [s.answer for s in samples] == [s["answer"] for s in suite]
    reference_rows = []
    for setting in ("full", "snapkv@25%"):
        config = KVPolicyConfig(policy="full") if setting == "full" else KVPolicyConfig(policy="snapkv", budget=0.25)
        outputs = [r["output"] for r in first["rows"] if r["setting"] == setting]
        for sample, output in zip(samples, outputs, strict=True):
            ref = generate(model, list(sample.prompt_ids), config, sample.max_tokens, tokenizer.eos_token_id)
            text = tokenizer.decode(ref.tokens, skip_special_tokens=True)
            # vLLM's detokenizer holds back a trailing incomplete UTF-8 sequence that decode() shows as U+FFFD.
            assert output == text.removesuffix("\ufffd"), (setting, sample.task)
            reference_rows.append(dict(setting=setting, policy=config.policy, budget=config.budget,
                                       task=sample.task, correct=check_answer(text, sample.answer)))
    assert summarize(reference_rows) == [r for r in first["summary"] if r["setting"] in ("full", "snapkv@25%")]

    paths = first["paths"]
    with paths["csv"].open() as f:
        settings = {row["setting"] for row in csv.DictReader(f)}
    assert settings == {"full", "snapkv@25%", "snapkv@64tok", "pod@64tok"}
    for name in ("score_vs_budget", "share_vs_budget", "needle_full", "needle_snapkv", "needle_pod"):
        assert paths[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| snapkv |" in paths["md"].read_text()


def test_pod_with_selection_sweeps_budgets_as_snapkv_and_groups_come_from_a_file(tmp_path, tiny_llama_dir):
    labels = [s.label for s in grid(["pod"], [0.1, 128], {"pod": {"select": "snapkv", "recent": 64}})]
    assert labels == ["full", "pod@10%", "pod@128tok"]  # a ratio budget: the selection's, not recent
    picked = grid(["pod"], [0.1], {"pod": {"select": "snapkv", "recent": 64}})[1]
    assert picked.kvcomp() == {"policy": "pod", "budget": 0.1, "recent": 64, "select": "snapkv"}
    path = tmp_path / "groups.json"
    path.write_text(json.dumps({"policy": "pod", "groups": [[0, 3], [1, 2]], "calibration": {}}))
    grid_plan, _, params = plan(_args(tiny_llama_dir, tmp_path, policies=["pod"], budgets=[64], pod_groups=str(path)))
    assert params["pod"] == {"groups": [[0, 3], [1, 2]]}
    assert grid_plan.settings[1].kvcomp() == {"policy": "pod", "recent": 64, "groups": [[0, 3], [1, 2]]}


def test_server_requests_never_share_prefix_cache_entries(monkeypatch):
    """--server: each request carries a salt of its own, so no setting is served another's cached (and so
    raw-kept) prefix; its kv_* fields carry the setting."""
    from kvcomp_vllm.eval import runner
    from kvcomp_vllm.eval.tasks.base import Sample

    sent: list[dict] = []

    class Response:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read(self):
            return json.dumps({"choices": [{"text": "ok"}]}).encode()

    def urlopen(request, timeout):
        sent.append(json.loads(request.data))
        return Response()

    monkeypatch.setattr(runner.urllib.request, "urlopen", urlopen)
    engine = runner.ServerEngine("http://127.0.0.1:9", model="m")
    sample = Sample("needle", 3, (5, 6, 7), "x")
    setting = Setting("snapkv", 0.25)
    assert engine.complete(sample, setting) == engine.complete(sample, setting) == "ok"
    assert [{k: v for k, v in body.items() if k != "cache_salt"} for body in sent] == 2 * [
        {"model": "m", "prompt": [5, 6, 7], "max_tokens": sample.max_tokens, "temperature": 0.0,
         "kv_policy": "snapkv", "kv_budget": 0.25}]
    salts = [body["cache_salt"] for body in sent]
    assert len(set(salts)) == 2 and all(isinstance(s, str) and s for s in salts)
