"""Kernel microbenchmarks on one GPU: decode bandwidth vs copy bandwidth, scoring and compaction.

    python benchmarks/kernels.py [--out benchmarks/results]

Shapes are Llama-3.1-8B's (32 query heads, 8 KV heads, head_dim 128, bf16, block size 16) with
32k-token prompts compressed to 10% (3,200 kept tokens). Reported:
- copy: device-to-device copy bandwidth of the card (bytes read + written per second), the ceiling;
- decode: `paged_decode` over compacted caches, bytes of KV read per step / step time, for a batch
  of requests; and the same for PoD members (distant keys from the owner cache);
- scoring: `window_scores` for one 32k prompt and window 32 vs the torch reference, time and the
  peak extra memory each allocates;
- compaction: `move_tokens_` moving 3,200 of 32k tokens for a batch of requests, bytes moved / time.

    python benchmarks/kernels.py --tiles      # sweep the decode kernel's launch shape (`Tile`) instead

writes <device>-decode-tiles.{json,md}: GB/s per tile and batch, each tile's output checked against
the default tile's.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import torch
from triton.testing import do_bench

from kvcomp_kernels import move_tokens_, paged_decode, window_scores, window_scores_reference
from kvcomp_kernels.decode import TILE, Tile

RESULTS = Path(__file__).resolve().parent / "results"
HEADS, KV_HEADS, DIM, BLOCK, DTYPE = 32, 8, 128, 16, torch.bfloat16
ELEM = torch.finfo(DTYPE).bits // 8


def paged_cache(tokens_per_request: int, requests: int):
    """K/V views over one FlashAttention-layout cache and a shuffled block table per request."""
    blocks_each = -(-tokens_per_request // BLOCK)
    raw = torch.randn(requests * blocks_each, BLOCK, KV_HEADS, 2 * DIM, device="cuda", dtype=DTYPE)
    tables = torch.randperm(requests * blocks_each, device="cuda", dtype=torch.int32).view(requests, blocks_each)
    return raw[..., :DIM].transpose(1, 2), raw[..., DIM:].transpose(1, 2), tables


def copy_bandwidth() -> float:
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src))
    return 2 * src.numel() / ms / 1e6  # GB/s


def decode_bandwidth(requests: int, kept: int, pod: bool = False, tile: Tile = TILE, check: bool = False):
    """(GB/s, ms) of one decode step over `requests` caches of `kept` tokens; with `check`, also the
    largest relative difference of `tile`'s output from the default tile's."""
    k, v, tables = paged_cache(kept, requests)
    query = torch.randn(requests, HEADS, DIM, device="cuda", dtype=DTYPE)
    if pod:  # proximal 1,028 own tokens; the rest distant: keys from the owner, values packed two per slot
        prox, dist = 1028, 2 * (kept - 1028)
        layout = torch.tensor([[prox + dist, prox, 4, dist]] * requests, dtype=torch.int32, device="cuda")
        owner_k, _, owner_tables = paged_cache(4 + dist + 1024, requests)
        bytes_read = requests * KV_HEADS * DIM * ELEM * (2 * prox + dist + dist)
        kwargs = dict(owner_key_cache=owner_k, owner_block_tables=owner_tables)
        length = prox + dist
    else:
        layout = torch.tensor([[kept, kept, 0, 0]] * requests, dtype=torch.int32, device="cuda")
        bytes_read, kwargs, length = requests * kept * KV_HEADS * DIM * ELEM * 2, {}, kept
    step = lambda t: paged_decode(query, k, v, tables, layout, length, DIM**-0.5, tile=t, **kwargs)  # noqa: E731
    ms = do_bench(lambda: step(tile), return_mode="median")
    if not check:
        return bytes_read / ms / 1e6, ms
    want = step(TILE).float()
    return bytes_read / ms / 1e6, ms, ((step(tile).float() - want).abs().max() / want.abs().max()).item()


def tile_sweep(copy: float, batches=(64, 138)) -> list[dict]:
    """Every tile of a small grid at each batch: KV read GB/s, share of copy bandwidth, error vs the default."""
    rows = []
    for block_n, warps, stages, target in itertools.product((32, 64, 128), (4, 8), (2, 3, 4), (264, 1056)):
        tile = Tile(block_n, warps, stages, target)
        for requests in batches:
            try:
                gbs, ms, err = decode_bandwidth(requests, 3200, tile=tile, check=True)
            except Exception as exc:  # noqa: BLE001 - a shape Triton cannot build (shared memory) is a result too
                rows.append({"tile": tile._asdict(), "requests": requests, "error": str(exc).splitlines()[0][:120]})
                continue
            rows.append({"tile": tile._asdict(), "requests": requests, "GB_s": gbs, "ms": ms, "of_copy": gbs / copy,
                         "max_rel_diff": err})
    return rows


def tile_table(rows: list[dict]) -> str:
    lines = ["| block_n | warps | stages | target programs | batch | step ms | KV read GB/s | of copy | max rel. diff |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["requests"], -r.get("GB_s", 0))):
        t = r["tile"]
        head = f"| {t['block_n']} | {t['num_warps']} | {t['num_stages']} | {t['target_programs']} | {r['requests']} |"
        lines.append(head + (f" failed: {r['error']} | | | |" if "error" in r else
                             f" {r['ms']:.3f} | {r['GB_s']:.0f} | {100 * r['of_copy']:.0f}% | {r['max_rel_diff']:.1e} |"))
    return "\n".join(lines)


def scoring(prompt_len: int = 32000, window: int = 32) -> dict:
    k, _, tables = paged_cache(prompt_len, 1)
    query = torch.randn(HEADS, window, DIM, device="cuda", dtype=DTYPE)
    out = {}
    for name, fn in (("triton", window_scores), ("torch", window_scores_reference)):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn(query, k, tables[0], prompt_len, DIM**-0.5)
        torch.cuda.synchronize()
        extra = (torch.cuda.max_memory_allocated() - base) / 2**20  # before do_bench, which allocates its own
        out[name] = {"ms": do_bench(lambda: fn(query, k, tables[0], prompt_len, DIM**-0.5)), "extra_MiB": extra}
    return out


def compaction(requests: int = 8, prompt_len: int = 32000, kept: int = 3200) -> dict:
    k, v, tables = paged_cache(prompt_len, requests)
    g = torch.Generator(device="cuda").manual_seed(0)
    keep = torch.rand(requests, KV_HEADS, prompt_len, device="cuda", generator=g).topk(kept, dim=-1).indices.sort(-1).values
    sources = torch.stack([2 * keep, 2 * keep + 1], dim=1).int()
    lengths = torch.full((requests,), kept, dtype=torch.int32, device="cuda")
    ms = do_bench(lambda: move_tokens_(k, v, tables, sources, lengths))
    moved = requests * 2 * KV_HEADS * kept * DIM * ELEM
    return {"ms": ms, "GB_s": 4 * moved / ms / 1e6}  # traffic: sources read, scratch written and read, slots written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--tiles", action="store_true", help="sweep the decode kernel's launch shape")
    args = parser.parse_args()
    copy = copy_bandwidth()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name()
    if args.tiles:
        rows = tile_sweep(copy)
        stem = device.split()[1].lower() if len(device.split()) > 1 else "gpu"
        (out / f"{stem}-decode-tiles.json").write_text(json.dumps({"device": device, "copy_GB_s": copy, "rows": rows}, indent=2))
        text = (f"Device: {device}; copy bandwidth {copy:.0f} GB/s (read + write); default tile {tuple(TILE)}.\n\n"
                f"{tile_table(rows)}\n\nCommand: `python benchmarks/kernels.py --tiles`\n")
        (out / f"{stem}-decode-tiles.md").write_text(text)
        print(text)
        return
    rows = []
    for requests in (16, 64, 138):
        for pod in (False, True):
            gbs, ms = decode_bandwidth(requests, 3200, pod)
            rows.append({"requests": requests, "layout": "pod member" if pod else "compacted", "GB_s": gbs, "ms": ms,
                         "of_copy": gbs / copy})
    result = {"device": device, "copy_GB_s": copy, "decode": rows,
              "scoring": scoring(), "compaction": compaction()}
    lines = [f"Device: {result['device']}; copy bandwidth {copy:.0f} GB/s (read + write).", "",
             "| decode batch | layout | step ms (one layer) | KV read GB/s | of copy bandwidth |", "|---|---|---|---|---|"]
    lines += [f"| {r['requests']} | {r['layout']} | {r['ms']:.3f} | {r['GB_s']:.0f} | {100 * r['of_copy']:.0f}% |" for r in rows]
    s = result["scoring"]
    lines += ["", "| scoring (32k prompt, window 32, one layer) | ms | extra memory MiB |", "|---|---|---|"]
    lines += [f"| {name} | {s[name]['ms']:.3f} | {s[name]['extra_MiB']:.1f} |" for name in ("triton", "torch")]
    c = result["compaction"]
    lines += ["", f"Compaction, 8 requests x 3,200 of 32,000 tokens, one layer: {c['ms']:.3f} ms ({c['GB_s']:.0f} GB/s of traffic)."]
    text = "\n".join(lines) + "\n\nCommand: `python benchmarks/kernels.py`\n"
    (out / "h100-kernels.json").write_text(json.dumps(result, indent=2))
    (out / "h100-kernels.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
