"""Data parallelism: `vllm serve --data-parallel-size 2` runs two engines that each compress their own
requests (outputs equal the oracle's, as one engine's do), and `/metrics` counts every request once."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from kvcomp_vllm import KVPolicyConfig
from kvcomp_vllm.policies import make_policy
from kvcomp_vllm.testing import synthetic_text
from kvcomp_vllm.testing.oracle import generate
from kvcomp_vllm.testing.server import metric_samples, serve

pytestmark = pytest.mark.vllm

SETTINGS = dict(policy="snapkv", budget=64)


def post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_two_engines_compress_their_own_requests_and_metrics_count_each_once(tiny_llama_kv4_dir, tmp_path):
    model = str(tiny_llama_kv4_dir)
    tokenizer = AutoTokenizer.from_pretrained(model)
    prompts = [tokenizer(" ".join(synthetic_text(30, s))).input_ids for s in range(4)]
    args = ("--kv-policy", "snapkv", "--kv-budget", "64", "--max-model-len", "1024", "--enforce-eager",
            "--dtype", "float32", "--block-size", "32", "--data-parallel-size", "2")
    body = {"model": model, "max_tokens": 8, "temperature": 0, "ignore_eos": True, "return_token_ids": True}
    with serve(model, *args, log=tmp_path / "serve.log", timeout=400) as url:
        with ThreadPoolExecutor(len(prompts)) as pool:  # concurrent: the front ends spread them over both engines
            answers = list(pool.map(lambda p: post(url + "/v1/completions", {**body, "prompt": p}), prompts))
        # The API server processes vLLM spawns see the server's settings: a pod override is refused there.
        refused, error = post(url + "/v1/completions", {**body, "prompt": prompts[0], "kv_policy": "pod"})
        samples = metric_samples(url)
    assert refused == 400 and "engine-wide only" in json.dumps(error)
    hf = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    config = KVPolicyConfig(**SETTINGS)
    for (status, answer), prompt in zip(answers, prompts):
        assert status == 200
        assert answer["choices"][0]["token_ids"] == generate(hf, prompt, config, 8).tokens
    policy = make_policy(config, 4)
    kept = sum(policy.layout.layer_slots(layer, len(p)) for p in prompts for layer in range(4))
    assert samples['vllm:kvcomp_requests_total{policy="snapkv"}'] == len(prompts)
    assert samples['vllm:kvcomp_prompt_tokens_total{outcome="kept",policy="snapkv"}'] == kept
    assert samples['vllm:kvcomp_prompt_tokens_total{outcome="evicted",policy="snapkv"}'] == 4 * sum(map(len, prompts)) - kept
    scored = {rank: samples.get(f'vllm:kvcomp_scoring_seconds_count{{policy="snapkv",rank="{rank}"}}', 0) for rank in (0, 1)}
    assert all(scored.values()) and sum(scored.values()) == 4 * len(prompts)  # both engines, four layers a prompt
