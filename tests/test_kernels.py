"""Triton kernels against their torch references: fresh random inputs, poisoned outputs.

On CUDA they run compiled (bf16/fp16/fp32); without a GPU, conftest sets TRITON_INTERPRET=1 and they
run in Triton's interpreter (fp16/fp32; numpy has no bf16), which checks the same indexing and math.
"""

from __future__ import annotations

import pytest
import torch

from kvcomp_kernels import (
    move_tokens_,
    move_tokens_reference_,
    paged_decode,
    paged_decode_reference,
    warm_up,
    window_scores,
    window_scores_reference,
)
from kvcomp_kernels.decode import Tile

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
DTYPES = [torch.float32, torch.float16, torch.bfloat16] if CUDA else [torch.float32, torch.float16]
TOLERANCE = {torch.float32: 1e-4, torch.float16: 3e-3, torch.bfloat16: 2e-2}  # relative, of the output scale
BLOCK_SIZE = 16


def flash_layout_cache(num_blocks: int, kv_heads: int, head_dim: int, dtype, g):
    """Random K and V views `[blocks, kv_heads, block_size, dim]` over one token-major tensor, as in
    vLLM's FlashAttention cache (K and V halves of the last dim)."""
    raw = torch.randn(num_blocks, BLOCK_SIZE, kv_heads, 2 * head_dim, generator=g).to(DEVICE, dtype)
    views = raw[..., :head_dim].transpose(1, 2), raw[..., head_dim:].transpose(1, 2)
    return raw, views


def block_tables(rows: int, blocks_each: int, num_blocks: int, g) -> torch.Tensor:
    """Disjoint, shuffled block ids per row."""
    ids = torch.randperm(num_blocks, generator=g)[: rows * blocks_each]
    return ids.view(rows, blocks_each).to(DEVICE, torch.int32)


def assert_close(got, want, dtype):
    assert not got.isnan().any()
    err = (got.float() - want.float()).abs().max() / want.float().abs().max().clamp_min(1e-6)
    assert err <= TOLERANCE[dtype], f"relative error {err:.2e}"


def poison_allocator():
    """Fill freed CUDA memory with NaN so a kernel output it never writes cannot look right."""
    if CUDA:
        torch.full((64 << 20,), float("nan"), device=DEVICE)
        torch.cuda.synchronize()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("head_dim,heads,kv_heads", [(64, 8, 2), (128, 4, 4)])
@pytest.mark.parametrize("prompt_len,window", [(203, 24), (80, 16), (24, 24)])
def test_window_scores_match_reference(dtype, head_dim, heads, kv_heads, prompt_len, window):
    g = torch.Generator().manual_seed(prompt_len + head_dim)
    _, (keys, _) = flash_layout_cache(40, kv_heads, head_dim, dtype, g)
    table = block_tables(1, 16, 40, g)[0]
    query = torch.randn(heads, window, head_dim, generator=g).to(DEVICE, dtype)
    scale = head_dim**-0.5
    poison_allocator()
    got = window_scores(query, keys, table, prompt_len, scale)
    want = window_scores_reference(query, keys, table, prompt_len, scale)
    assert got.shape == (kv_heads, prompt_len - window)
    if prompt_len > window:
        assert_close(got, want, dtype)


def pod_sources(prox: torch.Tensor, distant: torch.Tensor, later: torch.Tensor) -> torch.Tensor:
    """PoD member packing as move codes `[2, L]`: keys then values (see kvcomp_vllm.cache_layout)."""
    keys = torch.cat([2 * prox, 2 * distant[0::2] + 1, 2 * later])
    odd = torch.cat([2 * distant[1::2] + 1, torch.tensor([-1] * (distant.numel() % 2))])
    return torch.stack([keys, torch.cat([2 * prox + 1, odd, 2 * later + 1])])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_move_tokens_matches_reference_for_a_batch_of_layouts(dtype):
    g = torch.Generator().manual_seed(7)
    kv_heads, head_dim, width = 2, 64, 60
    raw, (k, v) = flash_layout_cache(48, kv_heads, head_dim, dtype, g)
    tables = block_tables(3, 8, 48, g)
    sources = torch.full((3, 2, kv_heads, width), -1, dtype=torch.int32)
    keep = torch.stack([torch.randperm(120, generator=g)[:width].sort().values for _ in range(kv_heads)])
    sources[0] = torch.stack([2 * keep, 2 * keep + 1])  # plain compaction, per-head positions
    pod = pod_sources(torch.cat([torch.arange(4), torch.arange(100, 110)]), torch.arange(4, 61), torch.arange(110, 113))
    sources[1, :, :, : pod.shape[1]] = pod[:, None]  # PoD member packing, odd distant count
    lengths = torch.tensor([width, pod.shape[1], 0], dtype=torch.int32)
    want_raw = raw.clone()
    want = want_raw[..., :head_dim].transpose(1, 2), want_raw[..., head_dim:].transpose(1, 2)
    move_tokens_reference_(*want, tables, sources.to(DEVICE), lengths)
    move_tokens_(k, v, tables, sources.to(DEVICE), lengths.to(DEVICE))
    assert torch.equal(raw, want_raw)  # a pure move: bit-exact, untouched positions untouched


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("head_dim,heads,kv_heads", [(64, 8, 2), (128, 8, 1), (64, 4, 4)])
def test_paged_decode_matches_reference_for_mixed_rows(dtype, head_dim, heads, kv_heads):
    g = torch.Generator().manual_seed(head_dim + heads)
    _, (k, v) = flash_layout_cache(64, kv_heads, head_dim, dtype, g)
    _, (owner_k, _) = flash_layout_cache(64, kv_heads, head_dim, dtype, g)
    tables, owner_tables = block_tables(4, 16, 64, g), block_tables(4, 16, 64, g)
    # Rows: a long uncompressed row, a short compacted row, two PoD members (odd and even distant).
    layout = torch.tensor([[250, 250, 0, 0], [17, 17, 0, 0], [6 + 101 + 3, 6, 2, 101], [4 + 40 + 1, 4, 2, 40]], dtype=torch.int32)
    query = torch.randn(4, heads, head_dim, generator=g).to(DEVICE, dtype)
    args = (query, k, v, tables, layout.to(DEVICE), 250, head_dim**-0.5)
    poison_allocator()
    got = paged_decode(*args, owner_key_cache=owner_k, owner_block_tables=owner_tables)
    want = paged_decode_reference(*args, owner_key_cache=owner_k, owner_block_tables=owner_tables)
    assert_close(got, want, dtype)
    for splits in (1, 3):  # the split-K merge does not change the result
        assert_close(paged_decode(*args, owner_key_cache=owner_k, owner_block_tables=owner_tables, splits=splits), want, dtype)
    for tile in (Tile(32, 2, 1, 64), Tile(128, 8, 1, 2048)):  # launch shapes the tile sweep tries (one stage: fp32 fits)
        assert_close(paged_decode(*args, owner_key_cache=owner_k, owner_block_tables=owner_tables, tile=tile), want, dtype)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_paged_decode_replays_in_a_cuda_graph_with_new_inputs():
    g = torch.Generator().manual_seed(3)
    _, (k, v) = flash_layout_cache(64, 2, 128, torch.bfloat16, g)
    tables = block_tables(3, 16, 64, g)
    query = torch.randn(3, 8, 128, generator=g).to(DEVICE, torch.bfloat16)
    layout = torch.tensor([[200, 200, 0, 0], [30, 30, 0, 0], [90, 90, 0, 0]], dtype=torch.int32, device=DEVICE)
    paged_decode(query, k, v, tables, layout, 256, 0.1)  # compile before capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = paged_decode(query, k, v, tables, layout, 256, 0.1)
    query.copy_(torch.randn(3, 8, 128, generator=g).to(DEVICE, torch.bfloat16))
    layout[:, :2] = torch.tensor([[256, 256], [5, 5], [131, 131]], device=DEVICE)
    graph.replay()
    assert_close(out, paged_decode_reference(query, k, v, tables, layout, 256, 0.1), torch.bfloat16)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_warm_up_leaves_the_cache_unchanged(dtype):
    g = torch.Generator().manual_seed(5)
    raw, (k, v) = flash_layout_cache(8, 2, 64, dtype, g)
    before = raw.clone()
    warm_up(k, v, 8, 0.125)
    assert torch.equal(raw, before)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_after_warm_up_requests_of_any_length_compile_nothing():
    """Prompt lengths, windows, move widths, block-table rows and strides vary per request: none may
    trigger a new Triton specialisation (each costs about a second inside a prefill)."""
    from kvcomp_kernels.warmup import compiled_variants, kernels

    g = torch.Generator().manual_seed(6)
    heads, kv_heads, head_dim = 8, 2, 128
    _, (k, v) = flash_layout_cache(256, kv_heads, head_dim, torch.bfloat16, g)
    warm_up(k, v, heads, head_dim**-0.5)
    compiled = [compiled_variants(kernel) for kernel in kernels()]
    assert min(compiled) >= 1
    tables = block_tables(5, 51, 256, g)  # rows of 51 ids: 204 bytes apart, most rows not 16-byte aligned
    for row, (prompt_len, window) in enumerate([(333, 32), (512, 16), (800, 7), (97, 8), (640, 64)]):
        query = torch.randn(heads, window, head_dim, generator=g).to(DEVICE, torch.bfloat16)
        window_scores(query, k, tables[row], prompt_len, head_dim**-0.5)
        keep = torch.arange(0, prompt_len, 3, device=DEVICE, dtype=torch.int32)[None, None].expand(1, kv_heads, -1)
        move_tokens_(k, v, tables[row : row + 1], torch.stack([2 * keep, 2 * keep + 1], 1),
                     torch.tensor([keep.shape[-1]], dtype=torch.int32, device=DEVICE))
        layout = torch.tensor([[prompt_len, prompt_len, 0, 0]] * (row + 1), dtype=torch.int32, device=DEVICE)
        paged_decode(torch.randn(row + 1, heads, head_dim, generator=g).to(DEVICE, torch.bfloat16), k, v,
                     tables[: row + 1], layout, prompt_len, head_dim**-0.5)
    torch.cuda.synchronize()
    assert [compiled_variants(kernel) for kernel in kernels()] == compiled
