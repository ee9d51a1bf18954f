"""One long-prompt batch through vanilla vLLM and through each policy, on one KV pool; prints a table.

    python benchmarks/policies.py                      # cpu-tiny: tiny Llama on this CPU
    python benchmarks/policies.py --preset h100-8b     # Llama-3.1-8B shape, dummy weights, one GPU
    python benchmarks/policies.py --preset h100-8b-decode --requests 144   # decode-heavy: 32k in, 1024 out
    python benchmarks/policies.py --preset cpu-long    # prompts twice the KV pool, with prefill_chunk

Every configuration runs in a fresh process on a KV pool of the same bytes; vanilla vLLM runs
without the plugin loaded and with its default settings. Reported, from vLLM's own block pool and
scheduler: the pool's capacity in tokens (all layers), the KV memory a request holds after prefill
(blocks of every KV cache group times their bytes) and at its peak, the requests of that size the pool holds (capacity),
peak concurrently running requests in this run, prefill time (a batch of other prompts of the same
length with one output token; presets without a prefill pass report 0), decode time (the rest of the
full run), output tokens per second end to end, and output tokens per second over decode-only steps
(every running request decodes, none prefills: the steady state whose batch size the KV pool limits).
Each timed pass gets prompts no earlier pass has seen (`pass_prompts`), and each row names the
engine's prefix-caching setting: vanilla keeps vLLM's default (on), compressing engines turn it off.
A configuration vLLM refuses to start (a prompt longer than the pool, without `prefill_chunk`) is
reported with vLLM's reason. Results go to benchmarks/results/<preset>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
POLICIES = {
    "vanilla": None,
    "full": {"policy": "full"},
    "streaming": {"policy": "streaming", "budget": 0.1},
    "snapkv": {"policy": "snapkv", "budget": 0.1},
    "pyramid": {"policy": "pyramid", "budget": 0.1},
    "windowkv": {"policy": "windowkv", "budget": 0.1},
    "pod": {"policy": "pod", "recent": 1024, "group_size": 4},
    # PoD with token selection: SnapKV's 10% (proximal tokens counted), the distant ones with shared keys.
    "pod-snapkv": {"policy": "pod", "recent": 1024, "group_size": 4, "select": "snapkv", "budget": 0.1},
}
LLAMA_8B = dict(
    architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=4096, intermediate_size=14336,
    num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=128256,
    max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500000.0, torch_dtype="bfloat16",
    rope_scaling={"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 8192, "rope_type": "llama3"},
)


@dataclass(frozen=True)
class Preset:
    """A workload and the engine settings it runs with."""

    requests: int
    prompt_len: int
    output_len: int
    dtype: str
    engine: dict = field(default_factory=dict)
    pool_requests: float | None = None  # pool sized for this many uncompressed requests (else vLLM's default)
    prefill_pass: bool = True  # time a max_tokens=1 pass first (prefill time); off where prefill is long
    kv_extra: dict = field(default_factory=dict)  # added to every policy that takes these fields
    tiny_layers: int = 4  # cpu presets: layers of the tiny local model


_H100 = {"gpu_memory_utilization": 0.9, "load_format": "dummy", "skip_tokenizer_init": True}
PRESETS = {
    "cpu-tiny": Preset(16, 1536, 32, "float32", {"block_size": 32, "enforce_eager": True}, pool_requests=2),
    "cpu-long": Preset(8, 6144, 32, "float32", {"block_size": 32, "enforce_eager": True}, pool_requests=0.5,
                       kv_extra={"prefill_chunk": 512}),
    # Per-step host work of many tiers, each a KV cache group (pyramid: one per layer): 32 thin layers, where compute is small.
    "cpu-layers": Preset(32, 1024, 64, "float32", {"block_size": 32, "enforce_eager": True}, pool_requests=8,
                         tiny_layers=32),
    "h100-8b": Preset(24, 32000, 256, "bfloat16", _H100),
    "h100-8b-decode": Preset(32, 32000, 1024, "bfloat16", _H100, prefill_pass=False),
    "h100-8b-prefill": Preset(96, 8192, 256, "bfloat16", _H100),
    # Saturation sweep: 4k prompts, so hundreds of requests prefill within a point; the pool holds
    # about 100 uncompressed ones, 190 at a 50% budget, all 256 at 20% and below.
    "h100-8b-sweep": Preset(256, 4096, 256, "bfloat16", _H100),
}


def model_dir(preset: str, root: Path) -> Path:
    """The model folder: the tiny local model, or an 8B-shaped config for dummy weights."""
    if preset.startswith("cpu-"):
        from kvcomp_vllm.testing import build_tiny_model
        from kvcomp_vllm.testing.tiny_model import TinyModelSpec

        layers = PRESETS[preset].tiny_layers
        return build_tiny_model(root / ("tiny-llama" if layers == 4 else f"tiny-llama-{layers}l"), TinyModelSpec(num_layers=layers))
    path = root / "llama-3.1-8b-shape"
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(LLAMA_8B))
    return path


def start_engine(preset_name: str, settings: dict | None, model_root: str, max_model_len: int | None = None, **extra):
    """An in-process LLM for the preset with kvcomp `settings` (None: vanilla); also the model config
    and the KV bytes of one token over all layers. `max_model_len` defaults to the preset's prompt + output;
    `extra` engine arguments override the preset's."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    import torch
    from transformers import AutoConfig
    from vllm import LLM

    preset = PRESETS[preset_name]
    model = model_dir(preset_name, Path(model_root))
    config = AutoConfig.from_pretrained(model)
    dtype_bytes = torch.empty(0, dtype=getattr(torch, preset.dtype)).element_size()
    token_bytes = config.num_hidden_layers * 2 * config.num_key_value_heads * config.head_dim * dtype_bytes
    engine = dict(preset.engine, max_model_len=max_model_len or preset.prompt_len + preset.output_len, **extra)
    if preset.pool_requests:
        engine["kv_cache_memory_bytes"] = int(preset.pool_requests * engine["max_model_len"] * token_bytes)
    llm = LLM(model=str(model), dtype=preset.dtype, seed=0, additional_config={"kvcomp": settings} if settings else {}, **engine)
    return llm, config, token_bytes, engine


def add_engine_option(parser: argparse.ArgumentParser) -> None:
    """`--engine JSON`: vLLM engine arguments over the preset's, for A/B runs of one setting."""
    parser.add_argument("--engine", type=json.loads, default={},
                        help='extra vLLM engine arguments as JSON, e.g. \'{"async_scheduling": false}\'')


def make_prompts(preset: Preset, requests: int, vocab_size: int, length: int | None = None, seed: int = 0) -> list[list[int]]:
    """`requests` random prompts of the preset's length, or `length` (seeded: every configuration gets the same)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    size = (length or preset.prompt_len,)
    return [torch.randint(100, vocab_size - 100, size, generator=g).tolist() for _ in range(requests)]


def pass_prompts(preset: Preset, requests: int, vocab_size: int) -> dict[str, list[list[int]]]:
    """The prompts of each timed pass, `prefill` (where the preset has that pass) and `full`, seeded apart:
    no pass sees an earlier pass's prompts, so no engine's prefix cache (on by default, with compression
    too) can serve the full run from the prefill pass."""
    passes = {"prefill": 1} if preset.prefill_pass else {}
    passes["full"] = 0  # the seed of the full run's prompts before the passes were seeded apart
    return {name: make_prompts(preset, requests, vocab_size, seed=seed) for name, seed in passes.items()}


def policy_settings(name: str, preset: Preset) -> dict | None:
    """kvcomp settings of configuration `name` under `preset` (its `kv_extra` where the policy takes it)."""
    from kvcomp_vllm.config import POLICY_FIELDS

    settings = POLICIES[name]
    if settings is None:
        return None
    return {**settings, **{k: v for k, v in preset.kv_extra.items() if k in POLICY_FIELDS[settings["policy"]]}}


def run_isolated(script: str, argv: list[str], name: str, settings: dict | None) -> dict:
    """Run `script argv --one name` in a fresh process set up for kvcomp `settings` (None: vanilla vLLM,
    plugins off); returns its result, or the reason vLLM gave for not starting."""
    env = dict(os.environ)
    if settings is None:
        env["VLLM_PLUGINS"] = ""
    elif settings["policy"] != "full":
        env["VLLM_USE_V2_MODEL_RUNNER"] = "0"  # kvcomp's hooks live in vLLM's V1 runner
    proc = subprocess.run([sys.executable, script, *argv, "--one", name], env=env, capture_output=True, text=True)
    if proc.returncode:
        refused = [line for line in proc.stderr.splitlines() if "ValueError: To serve at least one request" in line]
        if not refused:
            sys.exit(f"{name} failed:\n{proc.stderr[-3000:]}")
        print(f"{name}: vLLM refuses to start", file=sys.stderr)
        reason = refused[-1].split("ValueError: ")[-1].split(" Based on")[0]  # vLLM's first two sentences
        return {"config": name, "settings": settings, "refused": reason}
    print(f"{name}: done", file=sys.stderr)
    return json.loads(proc.stdout.split("RESULT")[-1])


def run_one(name: str, args: argparse.Namespace) -> dict:
    """Run one configuration in this process (called in a fresh subprocess)."""
    from statistics import mean

    from vllm import SamplingParams

    from kvcomp_vllm.testing.engine import drive, scheduler_of

    preset = PRESETS[args.preset]
    settings = policy_settings(name, preset)
    llm, config, token_bytes, engine = start_engine(args.preset, settings, args.model_root, **args.engine)
    requests = args.requests or preset.requests
    prompts = pass_prompts(preset, requests, config.vocab_size)
    greedy = dict(temperature=0, ignore_eos=True)
    prefill_s = 0.0
    if preset.prefill_pass:
        prefill_s = drive(llm, prompts["prefill"], SamplingParams(max_tokens=1, **greedy), progress=args.progress).seconds
    full = drive(llm, prompts["full"], SamplingParams(max_tokens=preset.output_len, **greedy), progress=args.progress)
    scheduler = scheduler_of(llm)
    groups = scheduler.kv_cache_config.kv_cache_groups
    layers = [len(g.layer_names) for g in groups]
    block_size = groups[0].kv_cache_spec.block_size
    layer_token_bytes = token_bytes // config.num_hidden_layers
    kib = [sum(n * block_size * k * layer_token_bytes for n, k in zip(b, layers)) / 1024 for b in full.first_decode_blocks.values()]
    peak_kib = max(full.peak_blocks.values()) * block_size * layers[0] * layer_token_bytes / 1024  # groups: equal layers
    pool_tokens = scheduler.kv_cache_config.num_blocks * block_size * layers[0] // config.num_hidden_layers
    out_tokens = sum(len(t) for t in full.tokens.values())
    return {
        "config": name,
        "settings": settings,
        "engine": {k: v for k, v in engine.items() if k not in ("load_format", "skip_tokenizer_init")},
        "prefix_caching": llm.llm_engine.vllm_config.cache_config.enable_prefix_caching,  # as the engine runs
        "pool_tokens": pool_tokens,
        "kv_kib_per_request": mean(kib),
        "peak_kv_kib_per_request": peak_kib,
        "capacity_requests": pool_tokens * token_bytes / 1024 / mean(kib),
        "peak_running": full.peak_running,
        "requests": requests,
        "prefill_s": prefill_s,
        "decode_s": full.seconds - prefill_s,
        "total_s": full.seconds,
        "output_tok_s": out_tokens / full.seconds,
        "decode_only_tok_s": full.decode_tok_s,
        "decode_only_batch": full.decode_tokens / max(full.decode_steps, 1),
        "preemptions": full.preemptions,
        "blocks_leaked": full.free_blocks_before - full.free_blocks_after,
    }


def table(rows: list[dict]) -> str:
    head = (
        "| config | prefix caching | pool tokens | KV MiB / request (peak) | capacity (requests) | peak running | prefill s "
        "| decode s | output tok/s | decode-only tok/s (mean batch) | preemptions |"
    )
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        if "refused" in r:
            lines.append(f"| {r['config']} | | does not start: {r['refused']} |" + " |" * 8)
            continue
        caching = {True: "on", False: "off"}.get(r.get("prefix_caching"), "?")
        lines.append(
            f"| {r['config']} | {caching} | {r['pool_tokens']} | {r['kv_kib_per_request'] / 1024:.1f} "
            f"({r.get('peak_kv_kib_per_request', 0) / 1024:.1f}) | "
            f"{r['capacity_requests']:.1f} | {r['peak_running']} | "
            f"{r['prefill_s']:.2f} | {r['decode_s']:.2f} | {r['output_tok_s']:.1f} | "
            f"{r['decode_only_tok_s']:.1f} ({r['decode_only_batch']:.1f}) | {r['preemptions']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=PRESETS, default="cpu-tiny")
    parser.add_argument("--configs", default=",".join(POLICIES), help="comma-separated subset of " + ",".join(POLICIES))
    parser.add_argument("--model-root", default=".cache")
    parser.add_argument("--out", default=str(RESULTS), help="folder for <preset>.json and <preset>.md")
    parser.add_argument("--progress", action="store_true", help="show a progress bar per run")
    parser.add_argument("--requests", type=int, help="requests in the batch (default: the preset's)")
    add_engine_option(parser)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print("RESULT" + json.dumps(run_one(args.one, args)))
        return
    preset = PRESETS[args.preset]
    rows = [run_isolated(__file__, sys.argv[1:], name, policy_settings(name, preset)) for name in args.configs.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/policies.py " + " ".join(sys.argv[1:])
    (out / f"{args.preset}.json").write_text(json.dumps({"command": command.strip(), "rows": rows}, indent=2))
    text = (
        f"{table(rows)}\n\nCommand: `{command.strip()}`; {args.requests or preset.requests} requests x "
        f"({preset.prompt_len} in, {preset.output_len} out), {preset.dtype}.\n"
    )
    (out / f"{args.preset}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
