"""Shared fixtures: tiny local models (built once per session) and vLLM CPU settings."""

from __future__ import annotations

import gc
import os

import pytest

# vLLM runs in-process in tests, on a small CPU KV pool.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")  # CUDA: kvcomp's hooks live in vLLM's V1 runner

import torch  # noqa: E402

if not torch.cuda.is_available():  # Triton kernels run in Triton's interpreter (before triton is imported)
    os.environ.setdefault("TRITON_INTERPRET", "1")

from kvcomp_vllm.testing import TinyModelSpec, build_tiny_model, tiny_gemma3_spec  # noqa: E402


@pytest.fixture(scope="session", params=["llama", "qwen2"])
def tiny_model_dir(request, tmp_path_factory):
    """A tiny model folder of each architecture."""
    return build_tiny_model(tmp_path_factory.getbasetemp() / f"tiny-{request.param}", TinyModelSpec(arch=request.param))


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    """The tiny Llama-style model folder."""
    return build_tiny_model(tmp_path_factory.getbasetemp() / "tiny-llama", TinyModelSpec(arch="llama"))


@pytest.fixture(scope="session")
def tiny_gemma3_dir(tmp_path_factory):
    """A tiny hybrid model: Gemma 3's architecture, sliding-window (64) and full-attention layers interleaved."""
    return build_tiny_model(tmp_path_factory.getbasetemp() / "tiny-gemma3", tiny_gemma3_spec())


@pytest.fixture(scope="session")
def tiny_llama_kv4_dir(tmp_path_factory):
    """A tiny Llama with 4 KV heads (8 query heads), so TP=2 gives each rank two."""
    spec = TinyModelSpec(arch="llama", num_heads=8, num_kv_heads=4, head_dim=32)
    return build_tiny_model(tmp_path_factory.getbasetemp() / "tiny-llama-kv4", spec)


@pytest.fixture
def release():
    """Engines made in a test are dropped after it, so the next one gets the memory back."""
    yield
    gc.collect()


@pytest.fixture(autouse=True)
def release_gpu_memory():
    """After each test, free what its engines and models held on the GPU, so the next engine's memory
    profiling does not see memory released under it."""
    yield
    if torch.cuda.is_available():
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        cleanup_dist_env_and_memory()  # drops vLLM's process-wide references, then collects and empties the cache
