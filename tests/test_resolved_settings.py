"""A request's settings are resolved once, at admission, into its sampling params; later stages read only that."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from kvcomp_vllm.vllm_integration.admission import check_request
from kvcomp_vllm.vllm_integration.settings import RESOLVED_KEY, request_policy, server_policy


def engine_config(**kvcomp):
    model = SimpleNamespace(hf_text_config=SimpleNamespace(num_hidden_layers=4), max_model_len=4096)
    return SimpleNamespace(additional_config={"kvcomp": kvcomp}, model_config=model)


def params(extra=None):
    return SimpleNamespace(extra_args=extra, max_tokens=8, n=1)


def test_an_override_is_resolved_into_the_params_and_read_back_without_merging():
    config = engine_config(policy="snapkv", budget=96)
    request = params({"kv_budget": 64})
    resolved = check_request(config, request)
    assert json.loads(request.extra_args[RESOLVED_KEY]) == {"policy": "snapkv", "budget": 64}
    request.extra_args["kv_budget"] = 32  # what a later stage sees is what admission resolved
    assert request_policy(server_policy(config), request).config == resolved


def test_requests_without_overrides_carry_nothing_and_run_the_servers_policy():
    config = engine_config(policy="snapkv", budget=96)
    request = params()
    assert check_request(config, request) == server_policy(config).config
    assert not request.extra_args
    assert request_policy(server_policy(config), request) is server_policy(config)


@pytest.mark.parametrize("extra", [{RESOLVED_KEY: '{"policy": "full"}'}, {RESOLVED_KEY: "{", "kv_budget": 64}])
def test_a_resolution_sent_by_a_client_is_replaced_by_admissions_own(extra):
    config = engine_config(policy="snapkv", budget=96)
    request = params(dict(extra))
    check_request(config, request)
    policy = request_policy(server_policy(config), request)
    assert policy.name == "snapkv" and policy.config.budget == (64 if "kv_budget" in extra else 96)
