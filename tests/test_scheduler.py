"""kvcomp's scheduler reaches vLLM through `scheduler_config.scheduler_cls` on compressing engines only,
and vLLM's own scheduler classes stay unpatched."""

from __future__ import annotations

import gc
import inspect

import pytest

from kvcomp_vllm.vllm_integration import compat
from kvcomp_vllm.vllm_integration.scheduler import (
    KVCOMP_SCHEDULERS,
    KVCompAsyncScheduler,
    KVCompScheduler,
    scheduler_class,
)

from test_refusals import SNAPKV, engine_config


def test_scheduler_class_names_resolve_through_vllm_to_the_right_base(tiny_llama_dir):
    config = engine_config(tiny_llama_dir)
    for async_scheduling, cls, base in [(False, KVCompScheduler, compat.Scheduler),
                                        (True, KVCompAsyncScheduler, compat.AsyncScheduler)]:
        config.scheduler_config.scheduler_cls = scheduler_class(async_scheduling)
        assert config.scheduler_config.get_scheduler_cls() is cls and issubclass(cls, base)
    assert KVCOMP_SCHEDULERS == (scheduler_class(False), scheduler_class(True))


def test_a_compressing_engine_config_names_kvcomps_scheduler(tiny_llama_dir):
    config = engine_config(tiny_llama_dir)
    assert config.scheduler_config.scheduler_cls == scheduler_class(compat.async_scheduling(config))


def test_policy_full_and_no_settings_keep_vllms_scheduler(tiny_llama_dir):
    assert engine_config(tiny_llama_dir, settings={"policy": "full"}).scheduler_config.scheduler_cls is None
    mine = "my_package.MyScheduler"
    assert engine_config(tiny_llama_dir, settings={"policy": "full"}, scheduler_cls=mine).scheduler_config.scheduler_cls == mine


def test_kvcomps_own_scheduler_named_by_hand_is_accepted(tiny_llama_dir):
    config = engine_config(tiny_llama_dir, scheduler_cls=KVCompAsyncScheduler)
    assert config.scheduler_config.scheduler_cls == scheduler_class(compat.async_scheduling(config))


def test_vllms_schedulers_are_not_patched():
    from kvcomp_vllm.vllm_integration import plugin

    plugin.register()
    assert not any(target.startswith(("Scheduler.", "AsyncScheduler.")) for target, _, _ in compat.PATCHED_INTERNALS)
    for cls in (compat.Scheduler, compat.AsyncScheduler):
        assert not any(hasattr(value, "_kvcomp") for value in vars(cls).values())


def test_the_chunk_split_override_has_vllms_signature():
    """`ChunkSplitting` overrides a private method of vLLM's scheduler: same parameters, so vLLM's calls reach it."""
    ours = inspect.signature(compat.ChunkSplitting._mamba_block_aligned_split)
    theirs = inspect.signature(compat.Scheduler._mamba_block_aligned_split)
    assert list(ours.parameters) == list(theirs.parameters)
    assert KVCompScheduler._mamba_block_aligned_split is compat.ChunkSplitting._mamba_block_aligned_split


@pytest.mark.vllm
def test_in_process_engines_run_kvcomps_scheduler_only_when_compressing(tiny_llama_dir):
    from test_vllm_engine import make_llm

    llm = make_llm(tiny_llama_dir, SNAPKV)
    scheduler = compat.inproc_scheduler(llm)
    assert isinstance(scheduler, KVCompScheduler) and scheduler.need_mamba_block_aligned_split
    del llm, scheduler
    gc.collect()
    llm = make_llm(tiny_llama_dir, {"policy": "full"})
    assert type(compat.inproc_scheduler(llm)) is compat.Scheduler
    del llm
    gc.collect()
