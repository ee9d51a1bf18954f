"""`vllm serve --kv-policy`: flags in --help, OpenAI endpoints answer, bad values stop start-up."""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request

import pytest

from kvcomp_vllm.testing.server import metric_samples, serve, vllm_command

pytestmark = pytest.mark.vllm


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


@pytest.mark.parametrize("option", ["--help=all", "--help=kvcomp"])
def test_help_lists_the_kv_flags(option):
    text = subprocess.run([*vllm_command(), "serve", option], capture_output=True, text=True, timeout=300).stdout
    for flag in ("--kv-policy {full,streaming,snapkv,pyramid,windowkv,windowkv-per-head,pod}", "--kv-budget", "--kv-window", "--kv-pool-size", "--kv-config"):
        assert flag in text


def test_plain_help_names_the_kvcomp_section():
    text = subprocess.run([*vllm_command(), "serve", "--help"], capture_output=True, text=True, timeout=300).stdout
    assert "KV cache compression (kvcomp-vllm): `vllm serve" in text


def test_pyramid_server_answers_completions_and_chat(tiny_llama_dir, tmp_path):
    log = tmp_path / "serve.log"
    args = ("--kv-policy", "pyramid", "--kv-budget", "0.1", "--max-model-len", "2048", "--enforce-eager")
    with serve(tiny_llama_dir, *args, log=log) as url:
        model = str(tiny_llama_dir)
        prompt = " ".join(["Ka lo mi the ren of tusa vel."] * 40)
        completion = post(url + "/v1/completions", {"model": model, "prompt": prompt, "max_tokens": 8, "temperature": 0})
        assert completion["usage"]["completion_tokens"] == 8 and completion["choices"][0]["text"]
        messages = [{"role": "user", "content": prompt}]
        chat = post(url + "/v1/chat/completions", {"model": model, "messages": messages, "max_tokens": 8, "temperature": 0})
        assert chat["usage"]["completion_tokens"] == 8 and chat["choices"][0]["message"]["content"]
    assert "kvcomp: pyramid beta=20.0 budget=0.1" in log.read_text()


@pytest.mark.parametrize("flags, message", [
    (("--kv-budget", "1.5"), "invalid kvcomp settings: budget: a ratio must lie in (0, 1], got 1.5; give an integer for a token count"),
    (("--kv-budget", "-5"), "invalid kvcomp settings: budget: must be positive (a token count, or a ratio in (0, 1]), got -5"),
    (("--kv-budget", "99999"), "budget: 99999 tokens is larger than the model's context (8192 tokens)"),
    (("--kv-budget", "0.1", "--kv-kernel", "5", "--kv-pool-size", "7"), "invalid kvcomp settings: kernel, pool_size: both "
     "given, with different values (5 and 7); kernel is the deprecated name of pool_size: give pool_size alone"),
])
def test_bad_flag_value_stops_start_up_with_one_line(tiny_llama_dir, flags, message):
    proc = subprocess.run(
        [*vllm_command(), "serve", str(tiny_llama_dir), "--kv-policy", "pyramid", *flags],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 1
    assert proc.stderr.rstrip().splitlines()[-1] == f"vllm serve: error: {message}"
    assert "Traceback" not in proc.stderr


def test_a_server_that_dies_names_its_log_and_shows_its_tail(tiny_llama_dir, tmp_path):
    log = tmp_path / "serve.log"
    with pytest.raises(RuntimeError) as err:
        with serve(tiny_llama_dir, "--kv-policy", "snapkv", "--kv-budget", "0", log=log):
            pass
    assert f"last lines of {log}:" in str(err.value)
    assert "budget: must be positive" in str(err.value)


def post_status(url: str, body: dict) -> tuple[int, dict, str | None]:
    """Status, JSON body and `kvcomp-policy` header of a POST."""
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read()), response.headers.get("kvcomp-policy")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read()), err.headers.get("kvcomp-policy")


def test_requests_override_the_policy_in_the_body_and_bad_overrides_get_400(tiny_llama_dir):
    args = ("--kv-policy", "pyramid", "--kv-budget", "0.1", "--kv-overrides", "any", "--max-model-len", "2048", "--enforce-eager")
    prompt = " ".join(["Ka lo mi the ren of tusa vel."] * 40)
    with serve(tiny_llama_dir, *args) as url:
        base = {"model": str(tiny_llama_dir), "prompt": prompt, "max_tokens": 4, "temperature": 0}
        ok, body, applied = post_status(url + "/v1/completions", {**base, "kv_policy": "snapkv", "kv_budget": 64})
        assert ok == 200 and body["usage"]["completion_tokens"] == 4
        assert applied == "snapkv budget=64 pool_size=7 pooling=avg window=32"
        prompt_len = body["usage"]["prompt_tokens"]
        ok, _, applied = post_status(url + "/v1/completions", {**base, "vllm_xargs": {"kv_budget": 128}})
        assert ok == 200 and applied == "pyramid beta=20.0 budget=128 pool_size=7 pooling=avg window=32"
        status, body, _ = post_status(url + "/v1/completions", {**base, "kv_budget": 2.5})
        assert status == 400 and "kvcomp: invalid settings in request: kv_budget: a ratio must lie in (0, 1], got 2.5" in body["error"]["message"]
        status, body, _ = post_status(url + "/v1/completions", {**base, "kv_policy": "pod"})
        assert status == 400 and "policy 'pod' changes the cache layout and is engine-wide only" in body["error"]["message"]
        status, body, _ = post_status(url + "/v1/completions", {**base, "use_beam_search": True, "n": 2})
        assert status == 400 and "kv policy 'pyramid' cannot be combined with beam search" in body["error"]["message"]
        chat = {"model": base["model"], "messages": [{"role": "user", "content": prompt}], "max_tokens": 4}
        ok, _, applied = post_status(url + "/v1/chat/completions", chat)  # no override: the server's settings
        assert ok == 200 and applied == "pyramid beta=20.0 budget=0.1 pool_size=7 pooling=avg window=32"
        metrics = metric_samples(url)
    assert metrics['vllm:kvcomp_requests_total{policy="snapkv"}'] == 1
    assert metrics['vllm:kvcomp_requests_total{policy="pyramid"}'] == 2
    snap_kept = metrics['vllm:kvcomp_prompt_tokens_total{outcome="kept",policy="snapkv"}']
    snap_evicted = metrics['vllm:kvcomp_prompt_tokens_total{outcome="evicted",policy="snapkv"}']
    assert snap_kept == 4 * 64 and snap_kept + snap_evicted == 4 * prompt_len
    assert metrics['vllm:kvcomp_kv_blocks_saved_total{policy="snapkv"}'] > 0


def test_server_with_prefill_chunk_serves_prompts_longer_than_its_kv_pool(tiny_llama_dir):
    # 24 usable blocks of 32 tokens: 768 per layer, against a max_model_len of 4096.
    args = ("--kv-policy", "snapkv", "--kv-budget", "64", "--kv-prefill-chunk", "96",
            "--max-model-len", "4096", "--num-gpu-blocks-override", "25", "--block-size", "32", "--enforce-eager")
    prompt = [5 + (i * 7919) % 900 for i in range(3000)]
    with serve(tiny_llama_dir, *args) as url:
        base = {"model": str(tiny_llama_dir), "prompt": prompt, "temperature": 0}
        status, body, _ = post_status(url + "/v1/completions", {**base, "max_tokens": 8})
        assert status == 200 and body["usage"] == {**body["usage"], "prompt_tokens": 3000, "completion_tokens": 8}
        status, body, _ = post_status(url + "/v1/completions", {**base, "max_tokens": 800})
        assert status == 400 and "needs 27 KV cache blocks at its peak" in body["error"]["message"]
        chat = {"model": base["model"], "messages": [{"role": "user", "content": "hi " * 300}], "temperature": 0}
        status, body, _ = post_status(url + "/v1/chat/completions", chat)  # default max_tokens: the rest of the context
        assert status == 400 and "more than the 24 blocks of the KV pool" in body["error"]["message"]
