"""Load test of `vllm serve --kv-policy pyramid`, prefix caching on: bounded concurrent mixed traffic over the OpenAI API.

Good requests (completions and chat, streamed or not, per-request policies, prompts longer and shorter
than the budget, n = 2) all answer; bad ones (malformed JSON, bad overrides, an oversize prompt) get a
400 naming the problem; clients that hang up mid-stream are dropped. Afterwards the server is still
up, vLLM's gauges are back to idle (no KV block held), kvcomp's counters add up to the admitted
requests, the workers' scoring and compaction histograms are on `/metrics`, and a fixed prompt
decoded under load equals the offline `LLM` path token for token. With `--kv-cache-prefix 128` the first
128 tokens of every compressed prompt stay raw and cached, so repeated prompts hit vLLM's prefix cache.
"""

from __future__ import annotations

import gc
import json
import random
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest

from kvcomp_vllm import KVPolicyConfig
from kvcomp_vllm.config import request_config
from kvcomp_vllm.testing import synthetic_text
from kvcomp_vllm.testing.server import metric_samples, serve

pytestmark = pytest.mark.vllm

MAX_MODEL_LEN = 1024
CACHE_PREFIX = 128
SERVER = KVPolicyConfig(policy="pyramid", budget=0.1, cache_prefix=CACHE_PREFIX)
ARGS = (
    "--kv-policy", "pyramid", "--kv-budget", "0.1", "--kv-overrides", "any", "--dtype", "float32", "--max-model-len", str(MAX_MODEL_LEN),
    "--enforce-eager", "--seed", "0", "--enable-prefix-caching", "--kv-cache-prefix", str(CACHE_PREFIX),
)  # fmt: skip
IN_FLIGHT = 8
COMPLETIONS, CHAT = "/v1/completions", "/v1/chat/completions"
LONG = " ".join(synthetic_text(40, seed=11))  # ~630 tokens: over every budget below
SHORT = "Ka lo mi the ren of tusa vel."  # ~15 tokens: under every token budget below
FIXED = " ".join(synthetic_text(30, seed=12))
FIXED_TOKENS = 16
OVERRIDES = [  # per-request settings as top-level body fields; the last via vllm_xargs
    {},
    {"kv_budget": 96},
    {"kv_policy": "snapkv", "kv_budget": 64},
    {"kv_policy": "streaming", "kv_budget": 48},
    {"kv_policy": "windowkv", "kv_budget": 0.2},
    {"kv_policy": "full"},
    {"kv_policy": "snapkv", "kv_budget": 64, "kv_cache_prefix": 64},
    {"vllm_xargs": {"kv_policy": "snapkv", "kv_window": 16, "kv_budget": 0.25}},
]
BAD = [  # (endpoint, kv fields / raw body / "oversize", text the 400 must contain)
    (COMPLETIONS, b'{"prompt": "Ka lo", "max_tokens": ', "JSON decode error"),
    (COMPLETIONS, {"kv_policy": "lru"}, "kvcomp: invalid settings in request: kv_policy: should be 'full', 'streaming', 'snapkv', 'pyramid', 'windowkv', 'windowkv-per-head' or 'pod' (got 'lru')"),
    (CHAT, {"kv_budget": 1.5}, "kvcomp: invalid settings in request: kv_budget: a ratio must lie in (0, 1], got 1.5"),
    (COMPLETIONS, {"kv_budget": "64"}, "kvcomp: invalid settings in request: kv_budget: should be a valid integer or should be a valid number (got '64')"),
    (COMPLETIONS, {"kv_cache_prefix": -1}, "kvcomp: invalid settings in request: kv_cache_prefix: must be 'auto' or a token count in [0, 16777216], got -1"),
    (CHAT, {"kv_cache_prefix": "64"}, "kvcomp: invalid settings in request: kv_cache_prefix"),
    (COMPLETIONS, {"kv_sink": 4}, "kvcomp: invalid settings in request: kv_sink: not a parameter of policy 'pyramid' (its parameters: kv_beta, kv_budget"),
    (CHAT, {"kv_policy": "pod"}, "policy 'pod' changes the cache layout and is engine-wide only"),
    (COMPLETIONS, "oversize", f"This model's maximum context length is {MAX_MODEL_LEN} tokens"),
]  # fmt: skip


@dataclass
class Reply:
    """What one request got back."""

    status: int
    body: dict = field(default_factory=dict)
    applied: str | None = None
    text: str = ""
    completion_tokens: int = 0
    prompt_tokens: int = 0


def request(url: str, path: str, body: dict | bytes, timeout: float = 120) -> Reply:
    """POST a body (dict as JSON, bytes as is); a streamed answer is read to its end and joined."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            applied = response.headers.get("kvcomp-policy")
            if isinstance(body, dict) and body.get("stream"):
                return _read_stream(response, applied)
            payload = json.loads(response.read())
    except urllib.error.HTTPError as err:
        return Reply(err.code, json.loads(err.read()), err.headers.get("kvcomp-policy"))
    choice = payload["choices"][0]
    text = choice["text"] if "text" in choice else choice["message"]["content"]
    usage = payload["usage"]
    return Reply(response.status, payload, applied, text, usage["completion_tokens"], usage["prompt_tokens"])


def _read_stream(response, applied: str | None) -> Reply:
    reply = Reply(response.status, applied=applied)
    for raw in response:
        line = raw.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        chunk = json.loads(line.removeprefix("data: "))
        if "error" in chunk:  # vLLM reports a failure after the 200 header as an error event
            reply.body = chunk
            continue
        for choice in chunk["choices"]:
            reply.text += choice.get("text") or (choice.get("delta") or {}).get("content") or ""
        if chunk.get("usage"):
            reply.completion_tokens = chunk["usage"]["completion_tokens"]
            reply.prompt_tokens = chunk["usage"]["prompt_tokens"]
    return reply


def hang_up(url: str, path: str, body: dict) -> Reply:
    """Start a streamed request, read its first event and close the connection (the client goes away)."""
    req = urllib.request.Request(url + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as response:
        while not response.readline().startswith(b"data: "):
            pass
        return Reply(response.status, applied=response.headers.get("kvcomp-policy"))


def body_for(model: str, path: str, prompt: str, max_tokens: int, stream: bool, extra: dict) -> dict:
    """A greedy completion or chat body with `extra` fields on top."""
    body = {"model": model, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True, "stream": stream, **extra}
    if stream:
        body["stream_options"] = {"include_usage": True}
    if path == "/v1/completions":
        return {**body, "prompt": prompt}
    return {**body, "messages": [{"role": "user", "content": prompt}]}


def expected_policy(extra: dict) -> KVPolicyConfig:
    """The settings a request with these body fields runs with."""
    fields = {**extra.get("vllm_xargs", {}), **{k: v for k, v in extra.items() if k.startswith("kv_")}}
    return request_config(SERVER, {k.removeprefix("kv_"): v for k, v in fields.items()})


@dataclass
class Job:
    """One request of the load: what kind it is, where it goes, and what it checks."""

    kind: str  # good, bad, fixed or abort
    path: str
    body: dict | bytes
    extra: dict = field(default_factory=dict)  # good: the kv fields it sent
    expect: str = ""  # bad: text its 400 must contain


@dataclass
class Load:
    """The traffic sent and what came back."""

    url: str
    replies: list[tuple[Job, Reply]]

    def of(self, kind: str) -> list[tuple[Job, Reply]]:
        return [(job, reply) for job, reply in self.replies if job.kind == kind]


@pytest.fixture(scope="module")
def server(tiny_llama_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("load")
    with serve(tiny_llama_dir, *ARGS, log=folder / "serve.log") as url:
        yield url, folder / "serve.log"


def jobs_for(model: str) -> list[Job]:
    """Every override on both prompt lengths and endpoints, streamed or not; bad, fixed and aborted ones."""
    jobs = []
    for i, extra in enumerate(OVERRIDES):
        for j, prompt in enumerate((LONG, SHORT)):
            for path in COMPLETIONS, CHAT:
                jobs.append(Job("good", path, body_for(model, path, prompt, 6, (i + j) % 2 == 0, extra), extra))
    jobs.append(Job("good", COMPLETIONS, body_for(model, COMPLETIONS, LONG, 6, False, {"n": 2, "temperature": 0.8, "seed": 1}), {}))
    oversize = " ".join(synthetic_text(200, seed=13))
    for path, extra, text in BAD:
        if extra == "oversize":
            body = body_for(model, path, oversize, 6, False, {})
        else:
            body = extra if isinstance(extra, bytes) else body_for(model, path, LONG, 6, False, extra)
        jobs.append(Job("bad", path, body, expect=text))
    fixed = {"model": model, "prompt": FIXED, "max_tokens": FIXED_TOKENS, "temperature": 0, "ignore_eos": True}
    jobs += [Job("fixed", COMPLETIONS, {**fixed, "return_token_ids": True})] * 3
    snap = {"kv_policy": "snapkv", "kv_budget": 64}
    jobs += [Job("abort", COMPLETIONS, body_for(model, COMPLETIONS, LONG, 500, True, snap), snap)] * 2
    random.Random(0).shuffle(jobs)
    return jobs


def send(url: str, job: Job) -> Reply:
    return hang_up(url, job.path, job.body) if job.kind == "abort" else request(url, job.path, job.body)


@pytest.fixture(scope="module")
def load(server, tiny_llama_dir) -> Load:
    """The jobs, shuffled, at most IN_FLIGHT at a time."""
    url, _ = server
    jobs = jobs_for(str(tiny_llama_dir))
    with ThreadPoolExecutor(IN_FLIGHT) as pool:
        return Load(url, list(zip(jobs, pool.map(lambda job: send(url, job), jobs))))


def test_every_good_request_answers_with_the_settings_it_asked_for(load):
    good = load.of("good")
    assert len(good) == 4 * len(OVERRIDES) + 1
    for job, reply in good:
        n = job.body.get("n", 1)
        assert reply.status == 200 and "error" not in reply.body, (job.extra, reply.body)
        assert reply.completion_tokens == 6 * n and reply.text, (job.extra, reply)
        assert reply.applied == expected_policy(job.extra).describe()


def test_every_bad_request_gets_400_naming_the_problem(load):
    bad = load.of("bad")
    assert len(bad) == len(BAD)
    for job, reply in bad:
        assert reply.status == 400, (job.expect, reply.body)
        assert job.expect in reply.body["error"]["message"], reply.body
        assert reply.applied is None, (job.expect, reply.applied)  # settings are named only where they apply


def total(samples: dict[str, float], name: str, **labels: str) -> float:
    """Sum of a metric's samples whose labels include `labels`."""
    want = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(v for k, v in samples.items() if k.split("{")[0] == name and all(w in k for w in want))


IDLE = ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc")


def idle_samples(url: str, timeout: float = 30.0) -> dict[str, float]:
    """/metrics once vLLM's gauges read idle (they follow the engine's last step), or the last read."""
    deadline = time.monotonic() + timeout
    while True:
        samples = metric_samples(url)
        if all(total(samples, name) == 0 for name in IDLE) or time.monotonic() > deadline:
            return samples
        time.sleep(0.2)


def test_server_stays_up_frees_every_block_and_counts_every_admitted_request(load):
    with urllib.request.urlopen(load.url + "/health", timeout=10) as response:
        assert response.status == 200
    samples = idle_samples(load.url)
    for name in IDLE:
        assert any(k.split("{")[0] == name for k in samples), name
        assert total(samples, name) == 0, name
    prompt_len = {(job.path, json.dumps(job.body.get("prompt"))): r.prompt_tokens for job, r in load.of("good")}
    admitted = []  # (policy, prompt length) of each engine request: a request with n > 1 runs n of them
    for job, reply in load.of("good"):
        n = job.body.get("n", 1)
        admitted += [(expected_policy(job.extra).policy, reply.prompt_tokens)] * n  # usage counts the prompt once
    admitted += [("pyramid", reply.prompt_tokens) for _, reply in load.of("fixed")]
    # hung up after their first streamed token: their prompts were compacted whole, so they count
    admitted += [("snapkv", prompt_len[job.path, json.dumps(job.body["prompt"])]) for job, _ in load.of("abort")]
    for policy in {p for p, _ in admitted}:
        lengths = [n for p, n in admitted if p == policy]
        assert total(samples, "vllm:kvcomp_requests_total", policy=policy) == len(lengths), policy
        # every prompt token-layer is counted once, kept or evicted (4 layers)
        assert total(samples, "vllm:kvcomp_prompt_tokens_total", policy=policy) == 4 * sum(lengths), policy
        # and every prompt token once, protected for the prefix cache or given to the policy
        assert total(samples, "vllm:kvcomp_prefix_tokens_total", policy=policy) == sum(lengths), policy
    assert total(samples, "vllm:kvcomp_requests_total") == len(admitted)
    assert total(samples, "vllm:kvcomp_prompt_tokens_total", policy="full", outcome="evicted") == 0
    # Prefix caching stays on: repeated prompts hit, and compressed prompts kept their first blocks raw.
    assert total(samples, "vllm:prefix_cache_hits_total") > 0
    assert total(samples, "vllm:kvcomp_prefix_tokens_total", policy="pyramid", part="protected") >= CACHE_PREFIX * 4


def test_fixed_prompt_under_load_equals_the_offline_llm(load, tiny_llama_dir):
    from vllm import LLM, SamplingParams

    fixed = [reply for _, reply in load.of("fixed")]
    assert [r.status for r in fixed] == [200] * len(fixed)
    served = [(r.body["choices"][0]["prompt_token_ids"], r.body["choices"][0]["token_ids"], r.text) for r in fixed]
    llm = LLM(
        model=str(tiny_llama_dir), dtype="float32", max_model_len=MAX_MODEL_LEN, enforce_eager=True, seed=0,
        additional_config={"kvcomp": SERVER.model_dump(exclude_unset=True)},
    )  # fmt: skip
    try:
        (out,) = llm.generate([FIXED], SamplingParams(max_tokens=FIXED_TOKENS, temperature=0, ignore_eos=True))
        offline = (list(out.prompt_token_ids), list(out.outputs[0].token_ids), out.outputs[0].text)
    finally:
        del llm
        gc.collect()
    assert len(offline[0]) > 3 * SERVER.window  # long enough to be compressed
    assert served == [offline] * len(served)


def test_scoring_and_compaction_times_reach_metrics_as_histograms(load):
    samples = metric_samples(load.url)  # the scrape pulls the worker's histograms
    for stage in "scoring", "compaction":
        name = f"vllm:kvcomp_{stage}_seconds"
        policies = {k.split('policy="')[1].split('"')[0] for k in samples if k.startswith(name + "_count")}
        for policy in policies:  # one worker: rank 0
            count = samples[f'{name}_count{{policy="{policy}",rank="0"}}']
            assert samples[f'{name}_bucket{{le="+Inf",policy="{policy}",rank="0"}}'] == count
            assert count > 0 and samples[f'{name}_sum{{policy="{policy}",rank="0"}}'] > 0
        assert "snapkv" in policies or stage == "compaction", policies
        assert "pyramid" in policies, policies
