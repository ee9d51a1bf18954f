"""A hostile client against `vllm serve --kv-policy`: every request is answered 200 or 400, never
500, the server stays healthy, and no route serves `kv_*` fields it would ignore."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvcomp_vllm.config import POLICY_FIELDS
from kvcomp_vllm.testing.server import serve

pytestmark = pytest.mark.vllm

ARGS = ("--kv-policy", "pyramid", "--kv-budget", "0.1", "--max-model-len", "2048", "--enforce-eager")
PROMPT = " ".join(["Ka lo mi the ren of tusa vel."] * 12)
APPLIED = "pyramid beta=20.0 budget=64 pool_size=7 pooling=avg window=32"


@pytest.fixture(scope="module")
def server(tiny_llama_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("hostile") / "serve.log"
    with serve(tiny_llama_dir, *ARGS, log=log) as url:
        yield url, str(tiny_llama_dir), log


def post(url: str, path: str, body) -> tuple[int, dict, str | None]:
    """Status, JSON body and `kvcomp-policy` header of a POST of `body` (bytes as they are)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read()), response.headers.get("kvcomp-policy")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}"), err.headers.get("kvcomp-policy")


def healthy(url: str) -> bool:
    with urllib.request.urlopen(url + "/health", timeout=10) as response:
        return response.status == 200


@pytest.mark.parametrize("path, body", [
    ("/v1/responses", {"input": PROMPT, "max_output_tokens": 4, "kv_policy": "bogus"}),
    ("/v1/messages", {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": 4, "kv_budget": 64}),
    ("/v1/responses", {"input": PROMPT, "max_output_tokens": 4, "vllm_xargs": {"kv_budget": 64}}),
])  # fmt: skip
def test_routes_that_ignore_kv_fields_refuse_them(server, path, body):
    url, model, _ = server
    status, answer, applied = post(url, path, {"model": model, **body})
    assert status == 400 and applied is None
    assert answer["error"]["message"] == (
        f"kvcomp: {path} does not apply kv_* fields; send them to /v1/completions or /v1/chat/completions"
    )


def test_invocations_and_batch_chat_apply_overrides_and_say_so(server):
    url, model, _ = server
    status, answer, applied = post(url, "/invocations", {"model": model, "prompt": PROMPT, "max_tokens": 4, "kv_budget": 64})
    assert status == 200 and answer["usage"]["completion_tokens"] == 4 and applied == APPLIED
    chats = [[{"role": "user", "content": PROMPT}], [{"role": "user", "content": PROMPT[:60]}]]
    status, answer, applied = post(url, "/v1/chat/completions/batch", {"model": model, "messages": chats, "max_tokens": 4, "kv_budget": 64})
    assert status == 200 and len(answer["choices"]) == 2 and applied == APPLIED
    status, answer, applied = post(url, "/invocations", {"model": model, "prompt": PROMPT, "max_tokens": 4, "kv_budget": 8})
    assert status == 400 and applied is None
    assert "kvcomp: invalid settings in request: kv_budget: 8 tokens is less than kv_window (32)" in answer["error"]["message"]


@pytest.mark.parametrize("body", [
    b"[" * 100_000 + b"]" * 100_000,
    b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b', "kv_budget": 64}',
    b'{"kv_budget": 64, "prompt": "' + b"x" * 10 + b'"' + b"}" * 3,
])
def test_pathological_bodies_get_400_and_the_server_stays_up(server, body):
    url, _, _ = server
    status, _, applied = post(url, "/v1/completions", body)
    assert status == 400 and applied is None
    assert healthy(url)


PLAUSIBLE = {  # values a server could serve, so fuzzed requests also reach the engine
    "budget": [48, 64, 0.05, 0.5, 1.0], "window": [8, 16, 32], "pool_size": [1, 5, 7], "kernel": [1, 5, 7], "pooling": ["avg", "max"],
    "beta": [1.0, 5.0], "tiers": [1, 2], "sink": [0, 4], "recent": [16, 64], "group_size": [1, 2, 4],
    "window_size": ["auto", 4, 16], "window_sizes": [[4, 16]], "prefill_chunk": [64, 128],
    "concentration_threshold": [0.3, 0.9],
}  # fmt: skip
HOSTILE = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63),
    st.sampled_from([2**31 + 1, 2**32, 10**18, -1, 0, 2047, 2048, 2049, 10**6]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0.0, 1e-9, 0.001, 1.0000001, 1e308]),
    st.text(max_size=12),
    st.sampled_from(["auto", "snapkv", "64", "0.1", ""]),
    st.booleans(),
    st.none(),
    st.lists(st.integers(-(2**40), 2**40), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)


@st.composite
def overrides(draw):
    """kv_* fields of one request: a policy, then mostly its own fields with plausible or hostile values."""
    policy = draw(st.sampled_from([None, "snapkv", "pyramid", "streaming", "windowkv", "pod", "full"]))
    own = sorted(POLICY_FIELDS[policy or "pyramid"]) or ["budget"]
    names = draw(st.lists(st.sampled_from([*own, *own, "bogus", *sorted(PLAUSIBLE)]), min_size=1, max_size=3, unique=True))
    fields = {"kv_policy": policy} if policy is not None else {}
    for name in names:
        plausible = st.sampled_from(PLAUSIBLE.get(name, [1]))
        fields[f"kv_{name}"] = draw(st.one_of(plausible, plausible, HOSTILE))
    return fields


@settings(max_examples=80, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kv=overrides(), in_xargs=st.booleans())
def test_fuzzed_overrides_get_200_or_400_never_500(server, kv, in_xargs):
    url, model, _ = server
    body = {"model": model, "prompt": PROMPT, "max_tokens": 2, "temperature": 0}
    body.update({"vllm_xargs": kv} if in_xargs else kv)
    status, answer, applied = post(url, "/v1/completions", body)
    assert status in (200, 400), (kv, answer)
    assert (applied is not None) == (status == 200), (kv, applied)
    assert healthy(url), kv


@pytest.mark.parametrize("field", ["kv_pool_size", "kv_kernel"])  # kv_kernel: its deprecated name
def test_the_request_that_killed_the_engine_is_a_400(server, field):
    url, model, log = server
    body = {"model": model, "prompt": PROMPT, "max_tokens": 2, "kv_policy": "snapkv", "kv_budget": 64, field: 2147483649}
    status, answer, _ = post(url, "/v1/completions", body)
    assert status == 400
    assert f"{field}: should be less than or equal to 255 (got 2147483649)" in answer["error"]["message"]
    assert healthy(url) and "Traceback" not in log.read_text()


def test_kv_kernel_is_read_as_kv_pool_size_and_named_as_sent(server):
    url, model, log = server
    base = {"model": model, "prompt": PROMPT, "max_tokens": 2, "kv_budget": 64}
    applied = APPLIED.replace("pool_size=7", "pool_size=5")
    for fields in ({"kv_pool_size": 5}, {"kv_kernel": 5}, {"vllm_xargs": {"kv_kernel": 5}}, {"kv_kernel": 5, "kv_pool_size": 5}):
        assert post(url, "/v1/completions", {**base, **fields})[::2] == (200, applied), fields
    for field in ("kv_pool_size", "kv_kernel"):
        status, answer, _ = post(url, "/v1/completions", {**base, field: 4})
        assert status == 400 and answer["error"]["message"] == (
            f"kvcomp: invalid settings in request: {field}: must be odd so pooling keeps positions centred, got 4")
    status, answer, _ = post(url, "/v1/completions", {**base, "kv_kernel": 5, "kv_pool_size": 7})
    assert status == 400 and answer["error"]["message"] == (
        "kvcomp: invalid settings in request: kv_kernel, kv_pool_size: both given, with different values (5 and 7); "
        "kv_kernel is the deprecated name of kv_pool_size: give kv_pool_size alone")
    assert log.read_text().count("kvcomp: kernel (--kv-kernel, kv_kernel) is deprecated") == 1  # once, in the front end


def test_a_ratio_keeping_fewer_than_the_window_of_this_prompt_is_a_400(server):
    url, model, _ = server
    status, answer, applied = post(url, "/v1/completions", {"model": model, "prompt": PROMPT, "max_tokens": 2, "kv_budget": 0.05})
    assert status == 400 and applied is None
    assert re.fullmatch(r"kvcomp: invalid settings in request: kv_budget: ratio 0\.05 keeps \d+ of \d+ prompt tokens, fewer "
                        r"than kv_window \(32\) for policy 'pyramid'; raise it or give a token count", answer["error"]["message"])
