"""Shared system prompt workload: vanilla vLLM with prefix caching, snapkv without it, snapkv with it and the
shared prefix protected (`cache_prefix`), on one KV pool, in this process.

Every request is one shared `--shared`-token system prompt plus `--own` unique tokens, `--max-tokens` out;
a first request warms the cache (as the first sender of a system prompt does), then all the others are
sent at once. Prints output tok/s, peak resident requests and vLLM's prefix-cache hit rate per row.

    python benchmarks/shared_prefix.py --model .cache/tiny-llama          # CPU smoke (tiny local Llama)
    python benchmarks/shared_prefix.py --model MODEL --shared 4096 --own 28000 --max-tokens 1024 \\
        --requests 64 --budget 0.1 --engine '{"gpu_memory_utilization": 0.9}'   # the issue's H200 workload
"""

from __future__ import annotations

import argparse
import gc
import json

CONFIGS = {  # name -> (kvcomp settings or None, prefix caching)
    "vanilla (prefix caching)": (None, True),
    "snapkv (no prefix caching)": ({"policy": "snapkv"}, False),
    "snapkv (prefix caching, shared prefix protected)": ({"policy": "snapkv", "cache_prefix": "shared"}, True),
}


def prompts(vocab: int, shared: int, own: int, requests: int, seed: int = 0) -> list[list[int]]:
    import torch

    g = torch.Generator().manual_seed(seed)
    system = torch.randint(100, vocab - 100, (shared,), generator=g).tolist()
    return [system + torch.randint(100, vocab - 100, (own,), generator=g).tolist() for _ in range(requests)]


def run(args, name: str) -> dict:
    from transformers import AutoConfig
    from vllm import LLM, SamplingParams

    from kvcomp_vllm.testing.engine import count_prefix_cache, drive

    settings, caching = CONFIGS[name]
    extra = {}
    if settings is not None:
        settings = {**settings, "budget": args.budget}
        if settings.get("cache_prefix") == "shared":
            settings["cache_prefix"] = args.shared
        extra["additional_config"] = {"kvcomp": settings}
    llm = LLM(model=args.model, enforce_eager=args.enforce_eager, max_model_len=args.shared + args.own + args.max_tokens,
              enable_prefix_caching=caching, disable_log_stats=False, seed=0, **extra, **json.loads(args.engine))
    batch = prompts(AutoConfig.from_pretrained(args.model).vocab_size, args.shared, args.own, args.requests + 1)
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0, ignore_eos=True)
    drive(llm, batch[:1], params)  # the first sender of the system prompt
    cache = count_prefix_cache(llm)
    timed = drive(llm, batch[1:], params, record_blocks=False)
    queries, hits = cache["queries"], cache["hits"]
    row = {"config": name, "output_tok_s": args.requests * args.max_tokens / timed.seconds, "seconds": timed.seconds,
           "peak_running": timed.peak_running, "hit_rate": hits / queries if queries else 0.0}
    del llm
    gc.collect()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--shared", type=int, default=1024)
    parser.add_argument("--own", type=int, default=512)
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--budget", type=float, default=0.1)
    parser.add_argument("--enforce-eager", action="store_true")
    parser.add_argument("--engine", default="{}", help="more LLM(...) arguments as JSON")
    args = parser.parse_args()
    rows = [run(args, name) for name in CONFIGS]
    print(f"{args.requests} requests x ({args.shared} shared + {args.own} own tokens), {args.max_tokens} out")
    print("| config | output tok/s | seconds | peak running | prefix-cache hit rate |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['config']} | {r['output_tok_s']:.1f} | {r['seconds']:.1f} | {r['peak_running']} | {r['hit_rate']:.1%} |")


if __name__ == "__main__":
    main()
