"""The operator's rules for per-request KV settings: what a client may override, refused with 400
naming the rule, counted by reason, and never holding more KV than the server planned."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from pydantic import ValidationError

from kvcomp_vllm import KVPolicyConfig
from kvcomp_vllm.overrides import OverrideRules


def test_default_rules_allow_lower_and_bounds_are_validated():
    assert OverrideRules().allow == "lower"
    assert OverrideRules(policies=["snapkv"]).policies == ("snapkv",)
    for bad in (dict(allow="some"), dict(max_budget=0), dict(max_budget=1.5), dict(policies=["lru"]), dict(max_budget="0.2")):
        with pytest.raises(ValidationError):
            OverrideRules(**bad)


def test_rules_name_what_a_request_may_not_ask_for():
    request = KVPolicyConfig(policy="streaming", budget=0.5)
    asked = {"policy": "streaming", "budget": 0.5}
    assert OverrideRules(allow="none").refusal(request, asked, 1000)[0] == "not_allowed"
    reason, message = OverrideRules(policies=("snapkv", "pyramid")).refusal(request, asked, 1000, prefix="kv_")
    assert (reason, message) == ("policy", "kv_policy: 'streaming' is not one this server allows per request (snapkv, pyramid)")
    reason, message = OverrideRules(max_budget=0.2).refusal(request, asked, 1000, prefix="kv_")
    assert (reason, message) == ("budget", "kv_budget: 0.5 is more than this server allows per request (0.2, 200 tokens of this prompt)")
    assert OverrideRules(max_budget=0.2).refusal(KVPolicyConfig(policy="snapkv", budget=200), {"budget": 200}, 1000) is None
    assert OverrideRules(allow="any").refusal(request, asked, 1000) is None


def test_an_engine_built_in_python_takes_its_own_overrides_unless_given_rules(tiny_llama_dir):
    from vllm import SamplingParams

    from test_vllm_engine import make_llm

    llm = make_llm(tiny_llama_dir, {"policy": "snapkv", "budget": 64})
    full = SamplingParams(max_tokens=2, extra_args={"kvcomp": {"policy": "full"}})
    prompt = {"prompt_token_ids": list(range(5, 400))}
    assert len(llm.generate([prompt], full)[0].outputs[0].token_ids) == 2  # allow: any without rules
    llm.llm_engine.vllm_config.additional_config["kvcomp_overrides"] = {"allow": "lower"}
    with pytest.raises(ValueError, match=r"kvcomp: these settings would hold 13 KV cache blocks through this request's decode, "
                       r"more than the server's own settings \(3\)"):
        llm.generate([prompt], full)
    assert len(llm.generate([prompt], SamplingParams(max_tokens=2, extra_args={"kv_budget": 48}))[0].outputs[0].token_ids) == 2


test_an_engine_built_in_python_takes_its_own_overrides_unless_given_rules = pytest.mark.vllm(
    test_an_engine_built_in_python_takes_its_own_overrides_unless_given_rules
)


def post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url + "/v1/completions", json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


FORBIDDEN = [  # (kv fields, reason, message)
    ({"kv_policy": "full"}, "policy", "kvcomp: kv_policy: 'full' is not one this server allows per request (snapkv, pyramid)"),
    ({"kv_budget": 0.99}, "budget", "kvcomp: kv_budget: 0.99 is more than this server allows per request (0.2"),
    ({"kv_policy": "streaming", "kv_budget": 64}, "policy", "kv_policy: 'streaming' is not one this server allows"),
    ({"vllm_xargs": {"kv_budget": 2000}}, "budget", "kvcomp: kv_budget: 2000 is more than this server allows per request"),
    ({"kv_budget": 0.2, "kv_window": 8}, "footprint", "more than the server's own settings"),
]  # fmt: skip


@pytest.mark.vllm
def test_a_client_trying_every_forbidden_override_gets_400s_and_takes_no_capacity(tiny_llama_dir):
    from kvcomp_vllm.testing.server import metric_samples, serve

    args = ("--kv-policy", "pyramid", "--kv-budget", "0.1", "--kv-override-policies", "snapkv,pyramid",
            "--kv-override-max-budget", "0.2", "--max-model-len", "2048", "--block-size", "32", "--enforce-eager")
    prompt = [5 + (i * 7919) % 900 for i in range(1200)]
    with serve(tiny_llama_dir, *args) as url:
        base = {"model": str(tiny_llama_dir), "prompt": prompt, "max_tokens": 4, "temperature": 0}
        good = [{**base}, {**base, "kv_budget": 0.05}, {**base, "kv_policy": "snapkv", "kv_budget": 64}]
        with ThreadPoolExecutor(8) as pool:
            bad = list(pool.map(lambda case: post(url, {**base, **case[0]}), FORBIDDEN * 2))
            ok = list(pool.map(lambda body: post(url, body), good))
        for (fields, _, message), (status, answer) in zip(FORBIDDEN * 2, bad):
            assert status == 400 and message in answer["error"]["message"], (fields, answer)
        assert [status for status, _ in ok] == [200, 200, 200]
        metrics = metric_samples(url)
    for reason in ("policy", "budget", "footprint"):
        sent = 2 * sum(r == reason for _, r, _ in FORBIDDEN)
        assert metrics[f'vllm:kvcomp_refused_overrides_total{{reason="{reason}"}}'] == sent
    admitted = sum(v for k, v in metrics.items() if k.startswith("vllm:kvcomp_requests_total"))
    assert admitted == 3  # refused requests never reached the engine, so they held no KV
