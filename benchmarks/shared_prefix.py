"""Shared-prefix workloads: vanilla vLLM with prefix caching, snapkv without it, snapkv with it (the shared
prefix protected with `cache_prefix`, or `auto`), each in a fresh process on one KV pool.

Every request is one shared `--shared`-token prefix plus `--own` unique tokens, `--max-tokens` out; a first
request warms the cache (as the first sender of a system prompt does), then all the others are sent at
once. Per row: output tok/s, TTFT (p50, p99 over the timed requests, from their submission), peak resident
requests and vLLM's prefix-cache hit rate; written to <out>.json and <out>.md with the command.

    python benchmarks/shared_prefix.py --model .cache/tiny-llama          # CPU smoke (tiny local Llama)
    python benchmarks/shared_prefix.py --model 8b --shared 4096 --own 28000 --max-tokens 1024 \\
        --requests 48 --budget 0.1                                      # issue 18's system-prompt workload (GPU)
    python benchmarks/shared_prefix.py --model 8b --shared 32000 --own 64 --max-tokens 128 --requests 64 \\
        --configs vanilla,snapkv-nopc,snapkv-protected,snapkv-auto      # one document, many short questions

`--model 8b`: the Llama-3.1-8B shape with dummy weights (benchmarks/policies.py's), bfloat16, 0.9 of the GPU.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
from pathlib import Path

from policies import _H100, model_dir, run_isolated
from serve import versions

CONFIGS = {  # key -> (row name, kvcomp settings or None, prefix caching)
    "vanilla": ("vanilla (prefix caching)", None, True),
    "snapkv-nopc": ("snapkv (no prefix caching)", {"policy": "snapkv"}, False),
    "snapkv-protected": ("snapkv (prefix caching, shared prefix protected)", {"policy": "snapkv", "cache_prefix": "shared"}, True),
    "snapkv-auto": ("snapkv (prefix caching, cache_prefix auto)", {"policy": "snapkv"}, True),
}
DEFAULT_CONFIGS = "vanilla,snapkv-nopc,snapkv-protected"


def prompts(vocab: int, shared: int, own: int, requests: int, seed: int = 0) -> list[list[int]]:
    import torch

    g = torch.Generator().manual_seed(seed)
    system = torch.randint(100, vocab - 100, (shared,), generator=g).tolist()
    return [system + torch.randint(100, vocab - 100, (own,), generator=g).tolist() for _ in range(requests)]


def settings_of(key: str, args) -> dict | None:
    """The kvcomp settings of row `key` (None: vanilla vLLM, the plugin not loaded)."""
    settings = CONFIGS[key][1]
    if settings is None:
        return None
    settings = {**settings, "budget": args.budget}
    if settings.get("cache_prefix") == "shared":
        settings["cache_prefix"] = args.shared
    return settings


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(math.ceil(q / 100 * len(ordered)) - 1, 0)]


def run_one(key: str, args) -> dict:
    """One row, in this process (a fresh subprocess of `main`), its engine core in-process too."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from transformers import AutoConfig
    from vllm import LLM, SamplingParams

    from kvcomp_vllm.testing.engine import count_prefix_cache, drive

    name, _, caching = CONFIGS[key]
    settings = settings_of(key, args)
    model = str(model_dir("h100-8b", Path(args.model_root))) if args.model == "8b" else args.model
    engine = {**(_H100 if args.model == "8b" else {}), **({"dtype": "bfloat16"} if args.model == "8b" else {}),
              **json.loads(args.engine)}
    extra = {} if settings is None else {"additional_config": {"kvcomp": settings}}
    llm = LLM(model=model, enforce_eager=args.enforce_eager, max_model_len=args.shared + args.own + args.max_tokens,
              enable_prefix_caching=caching, disable_log_stats=False, seed=0, **extra, **engine)
    batch = prompts(AutoConfig.from_pretrained(model).vocab_size, args.shared, args.own, args.requests + 1)
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0, ignore_eos=True)
    drive(llm, batch[:1], params)  # the first sender of the shared prefix
    cache = count_prefix_cache(llm)
    timed = drive(llm, batch[1:], params, record_blocks=False)
    queries, hits = cache["queries"], cache["hits"]
    ttft = list(timed.first_token_seconds.values())
    return {"config": name, "key": key, "settings": settings, "prefix_caching": caching,
            "output_tok_s": args.requests * args.max_tokens / timed.seconds, "seconds": timed.seconds,
            "ttft_p50_s": percentile(ttft, 50), "ttft_p99_s": percentile(ttft, 99),
            "peak_running": timed.peak_running, "preemptions": timed.preemptions,
            "hit_rate": hits / queries if queries else 0.0}


def table(rows: list[dict]) -> str:
    lines = ["| config | output tok/s | TTFT p50 (s) | TTFT p99 (s) | seconds | peak running | prefix-cache hit rate |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if "refused" in r:
            lines.append(f"| {r['config']} | refused: {r['refused']} | | | | | |")
            continue
        lines.append(f"| {r['config']} | {r['output_tok_s']:.1f} | {r['ttft_p50_s']:.2f} | {r['ttft_p99_s']:.2f} | "
                     f"{r['seconds']:.1f} | {r['peak_running']} | {r['hit_rate']:.1%} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a model folder, or 8b (Llama-3.1-8B shape, dummy weights)")
    parser.add_argument("--model-root", default=".cache", help="where --model 8b writes its config")
    parser.add_argument("--shared", type=int, default=1024)
    parser.add_argument("--own", type=int, default=512)
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--budget", type=float, default=0.1)
    parser.add_argument("--configs", default=DEFAULT_CONFIGS, help="comma-separated subset of " + ",".join(CONFIGS))
    parser.add_argument("--enforce-eager", action="store_true")
    parser.add_argument("--engine", default="{}", help="more LLM(...) arguments as JSON")
    parser.add_argument("--out", help="write <out>.json and <out>.md")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print("RESULT" + json.dumps(run_one(args.one, args)))
        return
    keys = args.configs.split(",")
    unknown = [k for k in keys if k not in CONFIGS]
    if unknown:
        parser.error(f"unknown configs {unknown}: choose from {', '.join(CONFIGS)}")
    command = "python benchmarks/shared_prefix.py " + shlex.join(sys.argv[1:])
    header = (f"{args.requests} requests x ({args.shared} shared + {args.own} own tokens), {args.max_tokens} out, "
              "after one warm-up request")
    rows = []
    for key in keys:  # each row written as it ends, so a run cut short keeps its rows
        rows.append({**run_isolated(__file__, sys.argv[1:], key, settings_of(key, args)), "config": CONFIGS[key][0]})
        text = f"{header}\n\n{table(rows)}\n\nCommand: `{command}`\n"
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out + ".json").write_text(json.dumps({"command": command, "versions": versions(), "rows": rows}, indent=2))
            Path(args.out + ".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
