"""Triton kernels of kvcomp's GPU path, each beside its torch reference (installed as `kvcomp_kernels`).

`for_tensor` picks the Triton kernel for CUDA tensors and the torch reference elsewhere (the CPU build).
Names load on first use, so the pure-torch modules (`attention`, `paged_torch`) import without Triton.
"""

from importlib import import_module

_MODULES = {
    "move_tokens_": "compaction", "move_tokens_reference_": "compaction",
    "paged_decode": "decode", "paged_decode_reference": "decode",
    "window_scores": "scoring", "window_scores_reference": "scoring",
    "warm_up": "warmup",
}
REFERENCES = {"window_scores": "window_scores_reference", "move_tokens_": "move_tokens_reference_",
              "paged_decode": "paged_decode_reference"}


def __getattr__(name: str):
    if name not in _MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{_MODULES[name]}", __name__), name)


def for_tensor(kernel, tensor):
    """`kernel` where `tensor` lives on a CUDA device, else its torch reference."""
    return kernel if tensor.is_cuda else __getattr__(REFERENCES[kernel.__name__])


__all__ = ["for_tensor", *_MODULES]
