"""kvcomp's views of vLLM's CPU KV cache against vLLM's own writer, for every packing it picks.

vLLM 0.32 packs a CPU block per ISA: `vec`/`vec16` (keys dim-major), `amx` (bfloat16 on AMX CPUs:
keys as 16-token rows of dimension pairs, values as 16-dimension rows of token pairs). vLLM builds
the `amx` writer only for hosts with AMX, so there it is checked against vLLM's own writes; on every
host, the offsets it wrote on an AMX host (Sapphire Rapids, vLLM 0.32) are checked below as a table.
`amx` serving is tested in test_cpu_bf16 where the host has AMX.
"""

import pytest
import torch

from kvcomp_kernels.paged_torch import gather, scatter_, span
from kvcomp_vllm.vllm_integration.compat import _tiling_from_probe, cpu_kv_views

pytestmark = pytest.mark.vllm

CASES = [
    (isa, dtype, block_size, head_dim)
    for isa in ("vec", "vec16", "amx")
    for dtype in (torch.float32, torch.bfloat16)
    for block_size, head_dim in ((32, 64), (64, 32), (32, 128))
]


def vllm_write(isa, dtype, keys, values, slots, num_blocks, block_size):
    """A zeroed layer cache `[blocks, kv_heads, block_size, 2 * head_dim]` written by vLLM's CPU op."""
    from vllm import _custom_ops as ops

    _, heads, head_dim = keys.shape
    kv_cache = torch.zeros(num_blocks, heads, block_size, 2 * head_dim, dtype=dtype)
    key_cache, value_cache = kv_cache.view(num_blocks, heads, 2 * block_size, head_dim).chunk(2, dim=2)
    try:
        ops.cpu_attn_reshape_and_cache(keys, values, key_cache, value_cache, slots, isa, k_scale=1.0, v_scale=1.0,
                                       kv_cache_dtype="auto")
    except RuntimeError as err:  # an ISA this vLLM build or host does not pack
        pytest.skip(f"vLLM cannot pack ISA {isa} here: {err}")
    return kv_cache


@pytest.mark.parametrize("isa,dtype,block_size,head_dim", CASES, ids=str)
def test_views_read_and_write_exactly_what_vllm_packs(isa, dtype, block_size, head_dim):
    g = torch.Generator().manual_seed(block_size + head_dim)
    heads, num_blocks, tokens = 2, 6, 3 * block_size + 5
    keys = torch.randn(tokens, heads, head_dim, generator=g).to(dtype)
    values = torch.randn(tokens, heads, head_dim, generator=g).to(dtype)
    blocks = torch.tensor([4, 0, 5, 2])  # the request's block table: position p in blocks[p // block_size]
    positions = torch.arange(tokens)
    slots = blocks[positions // block_size] * block_size + positions % block_size
    written = vllm_write(isa, dtype, keys, values, slots, num_blocks, block_size)

    key_view, value_view = cpu_kv_views(written, isa)
    where = span(0, tokens, heads)
    assert torch.equal(gather(key_view, blocks, where), keys.transpose(0, 1))
    assert torch.equal(gather(value_view, blocks, where), values.transpose(0, 1))

    ours = torch.zeros_like(written)
    key_view, value_view = cpu_kv_views(ours, isa)
    scatter_(key_view, blocks, where, keys.transpose(0, 1))
    scatter_(value_view, blocks, where, values.transpose(0, 1))
    assert torch.equal(ours, written)  # byte for byte where vLLM's kernels will read them


def amx_offsets(block_size: int, head_dim: int, part: str) -> torch.Tensor:
    """Element offset of (token, dim) in one block and head as vLLM 0.32's `amx` writer placed them on
    an AMX host: keys in 16-token rows of dimension pairs, values in 16-dimension rows of token pairs."""
    t, d = torch.arange(block_size)[:, None], torch.arange(head_dim)[None, :]
    if part == "key":
        return (t // 16) * 16 * head_dim + (d // 2) * 32 + (t % 16) * 2 + d % 2
    return (d // 16) * 16 * block_size + (t // 2) * 32 + (d % 16) * 2 + t % 2


@pytest.mark.parametrize("block_size,head_dim", [(32, 64), (64, 32), (32, 128), (128, 128)])
def test_the_amx_packing_is_addressed_on_any_host(block_size, head_dim):
    measured = {  # (tile, pack, strides) probed on the AMX host for 32-token blocks of 64 dims
        (32, 64, "key"): (16, 2, (1024, 2, 32, 1)),
        (32, 64, "value"): (2, 16, (32, 1, 512, 2)),
    }
    for part in ("key", "value"):
        offsets = amx_offsets(block_size, head_dim, part)
        tile, pack, strides = _tiling_from_probe(offsets, "amx", torch.bfloat16)
        assert measured.get((block_size, head_dim, part), (tile, pack, strides)) == (tile, pack, strides)
        storage = torch.full((block_size * head_dim,), float("nan"))
        storage[offsets.flatten()] = torch.arange(block_size * head_dim, dtype=torch.float32)  # token-major ids
        view = storage.as_strided((1, 1, block_size // tile, tile, head_dim // pack, pack), (0, 0, *strides))
        read = gather(view, torch.tensor([0]), span(0, block_size, 1))
        assert torch.equal(read[0], torch.arange(block_size * head_dim, dtype=torch.float32).view(block_size, head_dim))


def test_a_packing_no_tiling_describes_is_refused_with_the_workaround():
    offsets = torch.randperm(32 * 64, generator=torch.Generator().manual_seed(0)).view(32, 64)
    with pytest.raises(ValueError) as err:
        _tiling_from_probe(offsets, "amx", torch.bfloat16)
    assert str(err.value) == (
        "kvcomp: vLLM's CPU KV cache packing for ISA 'amx' at bfloat16 is not one kvcomp can address; "
        "serve with another --dtype (float32 is packed strided on x86)"
    )


def test_an_unaddressable_packing_stops_start_up_not_a_request(tiny_llama_dir, monkeypatch):
    from vllm.engine.arg_utils import EngineArgs

    from kvcomp_vllm.vllm_integration import engine_args

    def refuse(isa, dtype, block_size, head_dim):
        return _tiling_from_probe(torch.randperm(block_size * head_dim).view(block_size, head_dim), isa, dtype)

    monkeypatch.setattr(engine_args, "cpu_block_tilings", refuse)
    args = EngineArgs(model=str(tiny_llama_dir), dtype="bfloat16", max_model_len=2048,
                      additional_config={"kvcomp": {"policy": "snapkv", "budget": 64}})
    with pytest.raises(engine_args.KVSettingsError, match=r"packing for ISA '\w+' at bfloat16 is not one kvcomp can address; "
                       r"serve with another --dtype \(float32 is packed strided on x86\)"):
        args.create_engine_config()
