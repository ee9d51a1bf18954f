"""CPU benchmark: one long-prompt batch through vanilla vLLM and through each policy, on one KV pool.

    python benchmarks/cpu_policies.py [--requests 16] [--prompt-len 1536] [--output-len 32]

Every configuration runs in a fresh process on a KV pool of the same bytes (room for
`--pool-requests` uncompressed requests; block counts differ where per-layer groups make a block
hold one layer instead of all); vanilla vLLM runs without the plugin loaded. The table reports peak concurrently running requests (vLLM's own
scheduler), KV memory a request holds after prefill (blocks of every KV group times their bytes),
prefill time (the batch with one output token), decode time (the rest of the full
run) and output tokens per second. Results go to benchmarks/results/cpu_policies.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
CONFIGS = {
    "vanilla": None,
    "full": {"policy": "full"},
    "streaming": {"policy": "streaming", "budget": 0.1},
    "snapkv": {"policy": "snapkv", "budget": 0.1},
    "pyramid": {"policy": "pyramid", "budget": 0.1},
    "windowkv": {"policy": "windowkv", "budget": 0.1},
}
BLOCK = 32


def run_one(name: str, args: argparse.Namespace) -> dict:
    """Run one configuration in this process (called in a fresh subprocess)."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from statistics import mean

    from transformers import AutoConfig, AutoTokenizer
    from vllm import LLM, SamplingParams

    from kvcomp_vllm.testing import build_tiny_model, synthetic_text
    from kvcomp_vllm.testing.engine import drive, scheduler_of

    model = build_tiny_model(args.model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model)
    text = " ".join(synthetic_text(40 * args.requests + 400, seed=11)).split(". ")
    prompts = [tokenizer(". ".join(text[i * 40:])).input_ids[: args.prompt_len] for i in range(args.requests)]
    config = AutoConfig.from_pretrained(model)
    token_bytes = config.num_hidden_layers * 2 * config.num_key_value_heads * config.head_dim * 4  # K+V, fp32
    pool_blocks = args.pool_requests * -(-(args.prompt_len + args.output_len) // BLOCK)
    settings = CONFIGS[name]
    llm = LLM(
        model=str(model), dtype="float32", enforce_eager=True, seed=0, block_size=BLOCK,
        max_model_len=args.prompt_len + args.output_len,
        kv_cache_memory_bytes=pool_blocks * BLOCK * token_bytes,  # same bytes for every config
        additional_config={"kvcomp": settings} if settings else {},
    )
    greedy = dict(temperature=0, ignore_eos=True)
    prefill = drive(llm, prompts, SamplingParams(max_tokens=1, **greedy))
    full = drive(llm, prompts, SamplingParams(max_tokens=args.output_len, **greedy))
    layers_per_group = [len(g.layer_names) for g in scheduler_of(llm).kv_cache_config.kv_cache_groups]
    layer_token_bytes = token_bytes // config.num_hidden_layers
    kib = [
        sum(n * BLOCK * layers * layer_token_bytes for n, layers in zip(blocks, layers_per_group)) / 1024
        for blocks in full.first_decode_blocks.values()
    ]
    out_tokens = sum(len(t) for t in full.tokens.values())
    return {
        "config": name,
        "settings": settings,
        "kv_kib_per_request": mean(kib),
        "peak_running": full.peak_running,
        "prefill_s": prefill.seconds,
        "decode_s": full.seconds - prefill.seconds,
        "total_s": full.seconds,
        "output_tok_s": out_tokens / full.seconds,
        "preemptions": full.preemptions,
        "blocks_leaked": full.free_blocks_before - full.free_blocks_after,
    }


def table(rows: list[dict]) -> str:
    head = "| config | KV KiB / request | peak running | prefill s | decode s | output tok/s | preemptions |"
    lines = [head, "|" + "---|" * 7]
    for r in rows:
        lines.append(
            f"| {r['config']} | {r['kv_kib_per_request']:.0f} | {r['peak_running']} | {r['prefill_s']:.2f} | "
            f"{r['decode_s']:.2f} | {r['output_tok_s']:.1f} | {r['preemptions']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--prompt-len", type=int, default=1536)
    parser.add_argument("--output-len", type=int, default=32)
    parser.add_argument("--pool-requests", type=int, default=2, help="KV pool size in uncompressed requests")
    parser.add_argument("--model-dir", default=".cache/tiny-llama")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print("RESULT" + json.dumps(run_one(args.one, args)))
        return
    rows = []
    for name in args.configs.split(","):
        env = {**os.environ, "VLLM_PLUGINS": ""} if name == "vanilla" else dict(os.environ)
        proc = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--one", name], env=env, capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"{name} failed:\n{proc.stderr[-3000:]}")
        rows.append(json.loads(proc.stdout.split("RESULT")[-1]))
        print(f"{name}: done", file=sys.stderr)
    RESULTS.mkdir(exist_ok=True)
    command = "python benchmarks/cpu_policies.py " + " ".join(sys.argv[1:])
    (RESULTS / "cpu_policies.json").write_text(json.dumps({"command": command, "rows": rows}, indent=2))
    text = f"{table(rows)}\n\nCommand: `{command.strip()}`; tiny Llama (4 layers, GQA 4/2, head_dim 64), float32, CPU.\n"
    (RESULTS / "cpu_policies.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
