"""An exception in kvcomp's work for one request finishes that request as an error; the engine, its
other requests and its block pool go on as if the request had never come."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
import torch
from transformers import AutoModelForCausalLM

from kvcomp_vllm.policies import RequestCompressor
from kvcomp_vllm.testing.engine import drive
from kvcomp_vllm.testing.oracle import generate
from kvcomp_vllm.testing.server import serve
from kvcomp_vllm import KVPolicyConfig

from test_vllm_engine import greedy, make_llm, prompt_ids

pytestmark = pytest.mark.vllm

SETTINGS = dict(policy="snapkv", budget=64)
POISON_LEN = 301  # requests whose prompt has this many tokens fail in scoring


def failing_plan(original):
    def plan(self, layer, view, *args, **kwargs):
        if view.context_len == POISON_LEN and layer == 1:  # after layer 0 compacted: a half-compacted cache
            raise RuntimeError("injected scoring fault")
        return original(self, layer, view, *args, **kwargs)

    return plan


@pytest.fixture(scope="module")
def hf_llama(tiny_llama_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)


@pytest.mark.parametrize("prefill_chunk", [None, 128])
def test_a_scoring_fault_fails_only_its_request(tiny_llama_dir, hf_llama, monkeypatch, prefill_chunk):
    settings = {**SETTINGS, **({"prefill_chunk": prefill_chunk} if prefill_chunk else {})}
    monkeypatch.setattr(RequestCompressor, "plan", failing_plan(RequestCompressor.plan))
    llm = make_llm(tiny_llama_dir, settings, max_num_batched_tokens=256)
    poison = prompt_ids(tiny_llama_dir, 60, seed=1, length=POISON_LEN)
    good = [prompt_ids(tiny_llama_dir, 60, seed=s, length=n) for s, n in ((2, 280), (3, 330))]
    run = drive(llm, [good[0], poison, good[1]], greedy(6))
    assert run.finish_reasons == {"req-0": "length", "req-1": "error", "req-2": "length"}
    assert run.tokens["req-1"] == []
    assert run.free_blocks_after == run.free_blocks_before
    config = KVPolicyConfig(**settings)
    for i, prompt in ((0, good[0]), (2, good[1])):
        assert run.tokens[f"req-{i}"] == generate(hf_llama, prompt, config, 6).tokens
    later = drive(llm, [good[1]], greedy(6))  # the engine serves on
    assert later.tokens["req-0"] == run.tokens["req-2"] and later.free_blocks_after == later.free_blocks_before


SITECUSTOMIZE = f'''
from kvcomp_vllm.policies import RequestCompressor
_plan = RequestCompressor.plan
def plan(self, layer, view, *args, **kwargs):
    if view.context_len == {POISON_LEN}:
        raise RuntimeError("injected scoring fault")
    return _plan(self, layer, view, *args, **kwargs)
RequestCompressor.plan = plan
'''


def test_server_answers_a_failed_request_with_an_error_and_stays_healthy(tiny_llama_dir, tmp_path):
    (tmp_path / "sitecustomize.py").write_text(SITECUSTOMIZE)  # injected into the server's processes
    poison = prompt_ids(tiny_llama_dir, 60, seed=1, length=POISON_LEN)  # token ids: sent as they are
    args = ("--kv-policy", "snapkv", "--kv-budget", "64", "--max-model-len", "2048", "--enforce-eager")
    log = tmp_path / "serve.log"
    with serve(tiny_llama_dir, *args, log=log, env={"PYTHONPATH": str(tmp_path)}) as url:
        body = {"model": str(tiny_llama_dir), "max_tokens": 4, "temperature": 0}

        def post(prompt):
            data = json.dumps({**body, "prompt": prompt}).encode()
            request = urllib.request.Request(url + "/v1/completions", data, {"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=120) as response:
                    return response.status, json.loads(response.read())
            except urllib.error.HTTPError as err:
                return err.code, json.loads(err.read())

        status, answer = post(poison)
        assert status == 500, answer
        status, answer = post(prompt_ids(tiny_llama_dir, 60, seed=2, length=280))
        assert status == 200 and answer["usage"]["completion_tokens"] == 4
        with urllib.request.urlopen(url + "/health", timeout=10) as response:
            assert response.status == 200
    assert "kvcomp: scoring layer 0 failed for request" in log.read_text()
    assert "injected scoring fault" in log.read_text()
    assert "with an error: their KV compression failed on a worker" in log.read_text()  # the scheduler heard
