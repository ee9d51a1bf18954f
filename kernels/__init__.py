"""Triton kernels of kvcomp's GPU path, each beside its torch reference (installed as `kvcomp_kernels`).

`for_tensor` picks the Triton kernel for CUDA tensors and the torch reference elsewhere (the CPU build).
"""

from .compaction import move_tokens_, move_tokens_reference_
from .decode import paged_decode, paged_decode_reference
from .scoring import window_scores, window_scores_reference
from .warmup import warm_up

REFERENCES = {
    window_scores: window_scores_reference,
    move_tokens_: move_tokens_reference_,
    paged_decode: paged_decode_reference,
}


def for_tensor(kernel, tensor):
    """`kernel` where `tensor` lives on a CUDA device, else its torch reference."""
    return kernel if tensor.is_cuda else REFERENCES[kernel]


__all__ = ["for_tensor", "move_tokens_", "paged_decode", "warm_up", "window_scores", *(f.__name__ for f in REFERENCES.values())]
