"""Which HTTP bodies carry kv_* fields (the route check of `server_http`), without a server."""

from __future__ import annotations

import json

import pytest

from kvcomp_vllm.vllm_integration.server_http import carries_kv_fields


@pytest.mark.parametrize(
    "body,carries",
    [
        ({"model": "m", "prompt": "hi"}, False),
        ({"model": "m", "prompt": "kv_budget"}, False),  # a value, not a field
        ({"kv_budget": 64}, True),
        ({"vllm_xargs": {"kv_policy": "full"}}, True),
        ({"vllm_xargs": "kv_policy"}, False),
        (["kv_budget"], False),
    ],
)
def test_fields_are_found_at_the_top_level_and_in_vllm_xargs(body, carries):
    assert carries_kv_fields(json.dumps(body).encode()) is carries


def test_a_field_name_spelt_with_unicode_escapes_is_still_found():
    assert carries_kv_fields(b'{"\\u006bv_policy": "full"}') is True
    assert carries_kv_fields(b'{"prompt": "caf\\u00e9"}') is False


def test_bodies_that_are_not_json_objects_are_left_to_vllm():
    assert carries_kv_fields(b"kv_policy=full") is False
    assert carries_kv_fields(b"[" * 100000 + b'"kv_x"' + b"]" * 100000) is False
