"""kvcomp's compaction stays inside the memory vLLM planned at the configured utilisation (CUDA).

vLLM sizes the KV pool from the peak of a profiling forward; kvcomp holds its compaction scratch
bound through that forward (`vllm_integration.scratch`). Here the caching allocator is capped at the
configured utilisation, so any allocation vLLM did not plan for fails: one layer's move of a
108000-token prompt needs about 1.8 GB, far more than the slack vLLM leaves (its non-torch memory).
The engine runs in a fresh process: in the suite's own, earlier tests' memory would count against the cap.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

MAX_LEN = 131072
SLACK = 0.004  # of the device's memory above the utilisation: 0.56 GB on an H200

SCRIPT = r"""
import json, sys
import torch
from vllm import LLM, SamplingParams
from kvcomp_vllm.testing.engine import drive

model_dir, utilisation, slack = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
torch.cuda.set_per_process_memory_fraction(utilisation + slack)
llm = LLM(model=model_dir, load_format="dummy", skip_tokenizer_init=True, dtype="bfloat16", enforce_eager=True,
          gpu_memory_utilization=utilisation, max_model_len=131072, max_num_batched_tokens=8192,
          additional_config={"kvcomp": dict(policy="snapkv", budget=0.9)})
generator = torch.Generator().manual_seed(0)
prompts = [torch.randint(3, 2048, (120000,), generator=generator).tolist() for _ in range(2)]
run = drive(llm, prompts, SamplingParams(max_tokens=4, temperature=0, ignore_eos=True, detokenize=False))
print("RESULT " + json.dumps(dict(finish=sorted(set(run.finish_reasons.values())), freed=run.free_blocks_after == run.free_blocks_before,
                                  peak_reserved=torch.cuda.max_memory_reserved(), total=torch.cuda.get_device_properties(0).total_memory)))
"""


def wide_llama(path):
    """A 2-layer Llama with 32 KV heads of 128 (dummy weights): a large cache per token, small weights."""
    path.mkdir(parents=True, exist_ok=True)
    config = dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=4096, intermediate_size=1024,
                  num_hidden_layers=2, num_attention_heads=32, num_key_value_heads=32, head_dim=128,
                  vocab_size=2048, max_position_embeddings=MAX_LEN, rms_norm_eps=1e-5, rope_theta=500000.0,
                  torch_dtype="bfloat16", bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    (path / "config.json").write_text(json.dumps(config))
    return path


def test_compaction_of_the_longest_prompts_fits_the_memory_vllm_planned(tmp_path):
    free, total = torch.cuda.mem_get_info()
    utilisation = min(0.9, int((free / total - 0.02) * 100) / 100)  # what other processes left (vLLM checks it)
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(wide_llama(tmp_path / "wide")), str(utilisation), str(SLACK)],
                          capture_output=True, text=True, timeout=900)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-4000:]
    result = json.loads(lines[-1].removeprefix("RESULT "))
    print(f"utilisation {utilisation}: peak reserved {result['peak_reserved'] / 2**30:.2f} of {result['total'] / 2**30:.2f} GiB")
    assert result["finish"] == ["length"]  # an out-of-memory compaction finishes its request as "error"
    assert result["freed"]
