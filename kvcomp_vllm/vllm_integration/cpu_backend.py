"""vLLM's CPU attention backend with kvcomp's compaction (see `backend`)."""

from __future__ import annotations

from .backend import CompressingAttention, ShiftedSeqLens
from .compat import CPUAttentionBackend, CPUAttentionBackendImpl, CPUAttentionMetadataBuilder, cpu_kv_views


class CompressedCPUMetadataBuilder(ShiftedSeqLens, CPUAttentionMetadataBuilder):
    """vLLM's CPU metadata with compacted `seq_lens`."""


class CompressedCPUImpl(CompressingAttention, CPUAttentionBackendImpl):
    """vLLM's CPU attention with compaction at prompt end."""

    def kv_views(self, layer, kv_cache):
        return cpu_kv_views(kv_cache, layer.isa)


class CompressedCPUBackend(CPUAttentionBackend):
    """vLLM's CPU attention backend with kvcomp's builder and impl; identical when no policy is on."""

    @staticmethod
    def get_impl_cls():
        return CompressedCPUImpl

    @staticmethod
    def get_builder_cls():
        return CompressedCPUMetadataBuilder
