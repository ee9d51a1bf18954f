"""On a CUDA machine with vLLM 0.26: the plugin registers, `full` serves, CUDA graphs stay on.

Skipped where there is no GPU (CI). Run on the device with ../shared/gpu; results are committed
under benchmarks/results/.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_plugin_registers_against_the_installed_vllm():
    import vllm

    from kvcomp_vllm.vllm_integration import plugin
    from kvcomp_vllm.vllm_integration.compat import EngineArgs, KVCacheSpecRegistry
    from kvcomp_vllm.vllm_integration.kv_spec import CompressedAttentionManager, CompressedAttentionSpec

    plugin.register()
    spec = CompressedAttentionSpec(block_size=16, num_kv_heads=2, head_size=64, dtype=torch.bfloat16)
    assert KVCacheSpecRegistry.get_manager_class(spec) is CompressedAttentionManager
    assert getattr(EngineArgs.create_engine_config, "_kvcomp", False)
    print("vLLM", vllm.__version__)


def test_full_policy_serves_on_gpu(tiny_llama_dir):
    from vllm import LLM, SamplingParams

    llm = LLM(model=str(tiny_llama_dir), dtype="bfloat16", enforce_eager=True, gpu_memory_utilization=0.3,
              max_model_len=2048, additional_config={"kvcomp": {"policy": "full"}})
    out = llm.generate([{"prompt_token_ids": list(range(10, 400))}], SamplingParams(max_tokens=8, temperature=0, ignore_eos=True))
    assert len(out[0].outputs[0].token_ids) == 8


@pytest.mark.parametrize("policy", ["snapkv", "pod"])
def test_cuda_graphs_stay_on_full_and_piecewise(tiny_llama_dir, policy):
    """PoD too: its member layers decode from buffers a full graph captures (`member_decode`)."""
    from vllm import LLM

    from kvcomp_vllm.vllm_integration.scheduler import scheduler_class

    llm = LLM(model=str(tiny_llama_dir), dtype="bfloat16", gpu_memory_utilization=0.05, max_model_len=2048,
              additional_config={"kvcomp": {"policy": "pod", "group_size": 2} if policy == "pod" else {"policy": policy, "budget": 64}})
    assert llm.llm_engine.vllm_config.compilation_config.cudagraph_mode.name == "FULL_AND_PIECEWISE"
    assert llm.llm_engine.vllm_config.scheduler_config.scheduler_cls == scheduler_class(True)  # async stays on
