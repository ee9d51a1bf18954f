"""Every policy served at vLLM's default dtype on CPU (bfloat16: the `amx` packing on AMX hosts).

Both sides run in bfloat16, where vLLM's CPU kernels and the oracle's eager attention round
differently, so the stated tolerance is that of the GPU tests: fed vLLM's tokens, the oracle rates
every one within `LOGPROB_TOLERANCE` of its own best token at that step. The exact check of the
mechanics is the float32 suite; this one proves the bfloat16 cache packing is addressed right
(a misread layout scores and moves garbage, and gaps grow to whole nats).
"""

from __future__ import annotations

import gc

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from kvcomp_vllm import KVPolicyConfig
from kvcomp_vllm.testing.oracle import largest_logprob_gaps
from kvcomp_vllm.testing import synthetic_text
from kvcomp_vllm.testing.engine import drive

pytestmark = pytest.mark.vllm

POLICIES = [
    dict(policy="snapkv", budget=96),
    dict(policy="pyramid", budget=0.12),
    dict(policy="windowkv", budget=100, group_size=2),
    dict(policy="streaming", budget=64),
    dict(policy="pod", recent=48, group_size=2),
]
NEW_TOKENS = 12
# Measured on an AMX host: largest gaps 0.0-0.36 (pyramid's bfloat16 top-k flips near-ties); with the
# amx cache read as if it were the vec packing, 2.6-9.0 for every policy.
LOGPROB_TOLERANCE = 0.5


def test_vllm_picks_the_amx_packing_for_bfloat16_on_amx_hosts():
    from vllm.v1.attention.backends.cpu_attn import _get_attn_isa

    if not torch.cpu._is_amx_tile_supported():
        pytest.skip("this host has no AMX: bfloat16 uses the vec packing, covered below all the same")
    assert _get_attn_isa(torch.bfloat16, 32, 64) == "amx"


@pytest.mark.parametrize("settings", POLICIES, ids=lambda s: s["policy"])
def test_policy_at_default_dtype_matches_the_oracle(tiny_llama_dir, settings):
    from vllm import LLM, SamplingParams

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    prompts = [tokenizer(" ".join(synthetic_text(n, seed))).input_ids for n, seed in [(40, 1), (3, 2), (60, 3)]]
    llm = LLM(model=str(tiny_llama_dir), dtype="bfloat16", enforce_eager=True, max_model_len=4096, block_size=32,
              seed=0, additional_config={"kvcomp": settings})
    run = drive(llm, prompts, SamplingParams(max_tokens=NEW_TOKENS, temperature=0, ignore_eos=True))
    del llm
    gc.collect()  # the next engine in this process needs the first one's distributed state gone
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.bfloat16)
    config = KVPolicyConfig(**settings)
    worst = largest_logprob_gaps(model, prompts, list(run.tokens.values()), config, NEW_TOKENS)
    print(settings["policy"], "largest logprob gap to the oracle's best token, per prompt:", worst)
    assert max(worst) <= LOGPROB_TOLERANCE
    assert run.free_blocks_after == run.free_blocks_before
