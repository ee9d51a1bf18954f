"""Where a decode step's time goes: host functions (cProfile) and GPU kernels (torch.profiler).

    python benchmarks/step_profile.py --preset h100-8b-sweep --kv '{"policy": "pyramid", "budget": 0.1, "tiers": 2}'

Fills the engine with `--requests` prompts of the preset, steps until every prompt is processed, then
times `--steps` decode-only steps three ways: plain wall clock, under cProfile (top functions by own
time) and, on CUDA, under torch.profiler (top kernels by GPU time). Compare two settings' tables to
find a per-step cost one configuration pays and another does not.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import time

from policies import PRESETS, make_prompts, start_engine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=PRESETS, default="cpu-tiny")
    parser.add_argument("--kv", help="kvcomp settings as JSON (default: vanilla vLLM)")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--model-root", default=".cache")
    args = parser.parse_args()

    import torch
    from vllm import SamplingParams

    from kvcomp_vllm.testing.engine import scheduler_of

    preset = PRESETS[args.preset]
    if 4 * args.steps >= preset.output_len:  # settle, time, cProfile, torch.profiler
        raise SystemExit(f"--steps {args.steps} needs more than the preset's {preset.output_len} output tokens")
    llm, config, _, _ = start_engine(args.preset, json.loads(args.kv) if args.kv else None, args.model_root,
                                     enable_prefix_caching=False)
    engine, scheduler = llm.llm_engine, scheduler_of(llm)
    params = SamplingParams(max_tokens=preset.output_len, temperature=0, ignore_eos=True)
    for i, prompt in enumerate(make_prompts(preset, args.requests, config.vocab_size)):
        engine.add_request(f"req-{i}", {"prompt_token_ids": prompt}, params)
    while scheduler.waiting or any(r.num_computed_tokens < r.num_prompt_tokens for r in scheduler.running):
        engine.step()
    cuda = torch.cuda.is_available()
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def steps() -> float:
        sync()
        start = time.perf_counter()
        for _ in range(args.steps):
            engine.step()
        sync()
        return (time.perf_counter() - start) / args.steps

    steps()  # settle
    print(f"{args.kv or 'vanilla'}: {len(scheduler.running)} running, {steps() * 1e3:.2f} ms per decode step")
    profile = cProfile.Profile()
    profile.enable()
    steps()
    profile.disable()
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(args.top)
    print(out.getvalue())
    if cuda:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as gpu:
            steps()
        print(gpu.key_averages().table(sort_by="cuda_time_total", row_limit=args.top))


if __name__ == "__main__":
    main()
