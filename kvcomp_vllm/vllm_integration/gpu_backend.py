"""vLLM's FlashAttention backend with kvcomp's compaction (see `backend`), for CUDA builds."""

from __future__ import annotations

from .backend import CompressingAttention, ShiftedSeqLens
from .compat import flash_attention_classes

_Backend, _Builder, _Impl = flash_attention_classes()


class CompressedFlashAttentionMetadataBuilder(ShiftedSeqLens, _Builder):
    """vLLM's FlashAttention metadata with compacted `seq_lens`."""


class CompressedFlashAttentionImpl(CompressingAttention, _Impl):
    """vLLM's FlashAttention with compaction at prompt end."""

    def kv_views(self, layer, kv_cache):
        # Logical cache shape (blocks, kv_heads, block_size, 2 * head_dim): K then V in the last dim.
        return kv_cache[..., : self.head_size], kv_cache[..., self.head_size :]


class CompressedFlashAttentionBackend(_Backend):
    """vLLM's FlashAttention backend with kvcomp's builder and impl; identical when no policy is on."""

    @staticmethod
    def get_impl_cls():
        return CompressedFlashAttentionImpl

    @staticmethod
    def get_builder_cls():
        return CompressedFlashAttentionMetadataBuilder
