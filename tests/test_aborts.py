"""Requests aborted mid-prompt in a real vLLM CPU engine: between prefill chunks before the first
compression point, in the step that compacts, and between `prefill_chunk` rounds. Every block goes
back to the pool, no bookkeeping stays behind, requests served alongside and afterwards produce
exactly the oracle's tokens, and the workers' kept/evicted counts include only prompts compacted whole."""

from __future__ import annotations

import gc

import pytest
import torch
from transformers import AutoModelForCausalLM

from kvcomp_vllm import KVPolicyConfig
from kvcomp_vllm.policies import make_policy
from kvcomp_vllm.testing.engine import compacted_counts, drive, scheduler_of, worker_state_of
from kvcomp_vllm.testing.oracle import generate

from test_vllm_engine import greedy, make_llm, prompt_ids

pytestmark = pytest.mark.vllm

SETTINGS = dict(policy="snapkv", budget=96, prefill_chunk=128)
STEP_TOKENS = 96  # scheduler budget per step: chunks of 96 and 32 tokens around each compression point


@pytest.fixture(scope="module")
def hf_llama(tiny_llama_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)


@pytest.fixture(scope="module")
def llm(tiny_llama_dir):
    engine = make_llm(tiny_llama_dir, SETTINGS, max_num_batched_tokens=STEP_TOKENS)
    yield engine
    del engine
    gc.collect()


def computed_tokens(scheduler, req_id: str) -> int:
    """Prompt tokens the scheduler has scheduled for the request added as `req_id`."""
    (request,) = [r for r in scheduler.requests.values() if r.request_id == req_id or r.request_id.startswith(req_id + "-")]
    return request.num_computed_tokens


def assert_nothing_left(scheduler, free_before: int) -> None:
    """Every block is back in the pool and no manager or worker still tracks a request."""
    assert scheduler.kv_cache_manager.block_pool.get_num_free_blocks() == free_before
    for manager in scheduler.kv_cache_manager.coordinator.single_type_managers:
        assert not manager.req_to_blocks and not manager.evicted and not manager.request_policies
        assert not manager.settled


def tracked(llm, req_id: str) -> list[str]:
    """The worker's compression states of the request added as `req_id` (ended ones go at the next step)."""
    return [r for r in worker_state_of(llm).requests if r == req_id or r.startswith(req_id + "-")]


def expected_counts(prompts: list[list[int]]) -> tuple[int, int]:
    """Kept and evicted token-layers of these prompts compacted whole under SETTINGS (4 layers)."""
    policy = make_policy(KVPolicyConfig(**SETTINGS), 4)
    kept = sum(policy.layout.layer_slots(layer, len(p)) for p in prompts for layer in range(4))
    return kept, 4 * sum(map(len, prompts)) - kept


# Steps run before the abort, and where the aborted 900-token prompt then stands.
ABORT_POINTS = {
    "between-chunks-before-compression": (1, 96),  # chunk 0-96 done, the first point is 128
    "in-the-compacting-step": (2, 128),  # the step reaching 128 compacted; blocks not yet cut on the worker
    "between-rounds": (3, 224),  # compacted at 128, the second round (to 256) half read
    "at-the-second-round": (4, 256),
}


@pytest.mark.parametrize("abort", ABORT_POINTS, ids=str)
def test_aborted_prompts_leak_no_blocks_and_other_requests_match_the_oracle(llm, hf_llama, tiny_llama_dir, abort):
    steps, where = ABORT_POINTS[abort]
    engine, scheduler = llm.llm_engine, scheduler_of(llm)
    free_before = scheduler.kv_cache_manager.block_pool.get_num_free_blocks()
    counts_before = compacted_counts(llm, "snapkv")
    victim = prompt_ids(tiny_llama_dir, 60, 70, length=900)
    bystander = prompt_ids(tiny_llama_dir, 40, 71, length=300)  # chunked too, sharing the victim's steps
    engine.add_request("victim", {"prompt_token_ids": victim}, greedy(10))
    engine.add_request("bystander", {"prompt_token_ids": bystander}, greedy(10))
    for _ in range(steps):
        engine.step()
    assert computed_tokens(scheduler, "victim") == where
    engine.abort_request(["victim"])
    finished = {}
    while engine.has_unfinished_requests():
        finished.update((out.request_id, list(out.outputs[0].token_ids)) for out in engine.step() if out.finished)
    config = KVPolicyConfig(**SETTINGS)
    assert finished == {"bystander": generate(hf_llama, bystander, config, 10).tokens}
    assert_nothing_left(scheduler, free_before)
    assert not tracked(llm, "victim")  # the bystander's later steps told the worker
    # Only the bystander's prompt counts: the victim's, aborted before its last point, kept nothing.
    assert [a - b for a, b in zip(compacted_counts(llm, "snapkv"), counts_before)] == list(expected_counts([bystander]))

    later = [prompt_ids(tiny_llama_dir, 60, 72, length=700), prompt_ids(tiny_llama_dir, 10, 73)]
    run = drive(llm, later, greedy(8))
    for req_id, prompt in zip(run.tokens, later):
        assert run.tokens[req_id] == generate(hf_llama, prompt, config, 8).tokens, req_id
    assert run.free_blocks_after == free_before
    assert not tracked(llm, "victim") and not tracked(llm, "bystander")
    assert [a - b for a, b in zip(compacted_counts(llm, "snapkv"), counts_before)] == list(expected_counts([bystander, *later]))


def test_beam_search_on_a_compressing_engine_is_refused(llm):
    from vllm.sampling_params import BeamSearchParams

    with pytest.raises(ValueError, match=r"^kv policy 'snapkv' cannot be combined with beam search: use_beam_search"):
        llm.beam_search([{"prompt_token_ids": [1, 2, 3, 4]}], BeamSearchParams(beam_width=2, max_tokens=4))
    assert not llm.llm_engine.has_unfinished_requests()
