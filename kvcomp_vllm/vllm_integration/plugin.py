"""vLLM general-plugin entry point: loaded by vLLM in every process (API server, engine, workers)."""

from __future__ import annotations

_registered = False


def register() -> None:
    """Register kvcomp's KV spec, attention backend and hooks with vLLM (once per process)."""
    global _registered
    if _registered:
        return
    from .admission import install_admission_hooks
    from .compat import AttentionBackendEnum, platform_name, register_backend, register_kv_spec
    from .engine_args import install_engine_args_hooks
    from .kv_spec import CompressedAttentionManager, CompressedAttentionSpec
    from .metrics import install_metrics_hooks
    from .prefix_cache import install_prefix_cache_hooks
    from .refusals import install_beam_search_hooks
    from .server_http import install_http_hooks
    from .worker import install_runner_hooks

    register_kv_spec(CompressedAttentionSpec, CompressedAttentionManager)
    if platform_name() == "cuda":
        register_backend(AttentionBackendEnum.FLASH_ATTN, f"{__package__}.gpu_backend.CompressedFlashAttentionBackend")
    else:
        register_backend(AttentionBackendEnum.CPU_ATTN, f"{__package__}.cpu_backend.CompressedCPUBackend")
    install_runner_hooks()
    install_prefix_cache_hooks()  # kvcomp's scheduler is set per engine at start-up (engine_args)
    install_engine_args_hooks()
    install_admission_hooks()
    install_beam_search_hooks()
    install_http_hooks()
    install_metrics_hooks()
    _registered = True
