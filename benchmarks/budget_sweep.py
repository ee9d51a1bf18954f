"""Output throughput vs KV budget, one line per policy, vanilla vLLM as the reference; table and PNG.

    python benchmarks/budget_sweep.py --preset h100-8b-prefill --budgets 0.05,0.1,0.2,0.5

Budgets change per request (SamplingParams extra_args), so one engine per KV layout serves a whole
line: a snapkv engine (one KV group) serves snapkv, windowkv and streaming at every budget; pyramid
(one group per layer) gets its own. Each point is one batch of the preset's workload; both end-to-end
output tok/s and decode-only tok/s (steps where every running request decodes) are recorded.
Results go to benchmarks/results/<preset>-budgets.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from policies import PRESETS, RESULTS, make_prompts, run_isolated, start_engine

ENGINES = {"vanilla": None, "snapkv": ["snapkv", "windowkv", "streaming"], "pyramid": ["pyramid"]}


def run_engine(name: str, args: argparse.Namespace) -> dict:
    """Every (policy, budget) point one engine serves, in this process."""
    from vllm import SamplingParams

    from kvcomp_vllm.testing.engine import drive

    preset = PRESETS[args.preset]
    budgets = [float(b) for b in args.budgets.split(",")]
    settings = None if name == "vanilla" else {"policy": name, "budget": budgets[0]}
    llm, config, _, _ = start_engine(args.preset, settings, args.model_root)
    prompts = make_prompts(preset, args.requests or preset.requests, config.vocab_size)
    points = []
    for policy in ENGINES[name] or ["vanilla"]:
        for budget in budgets if ENGINES[name] else [1.0]:
            extra = {} if policy == "vanilla" else {"extra_args": {"kvcomp": {"policy": policy, "budget": budget}}}
            params = SamplingParams(max_tokens=preset.output_len, temperature=0, ignore_eos=True, **extra)
            drive(llm, prompts[:2], SamplingParams(max_tokens=2, temperature=0, ignore_eos=True, **extra))  # warm-up: JIT
            run = drive(llm, prompts, params)
            out_tokens = sum(len(t) for t in run.tokens.values())
            points.append({"policy": policy, "budget": budget, "output_tok_s": out_tokens / run.seconds,
                           "decode_only_tok_s": run.decode_tok_s, "peak_running": run.peak_running,
                           "seconds": run.seconds})
            print(f"{policy} {budget}: {out_tokens / run.seconds:.1f} tok/s", file=sys.stderr)
            if policy == "vanilla":
                break
    return {"engine": name, "points": points}


def plot(points: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label in zip(axes, ("output_tok_s", "decode_only_tok_s"), ("end-to-end output tok/s", "decode-only tok/s")):
        for policy in dict.fromkeys(p["policy"] for p in points):
            mine = sorted((p["budget"] * 100, p[key]) for p in points if p["policy"] == policy)
            if policy == "vanilla":
                ax.axhline(mine[0][1], color="black", linestyle="--", label="vanilla vLLM")
            else:
                ax.plot(*zip(*mine), marker="o", label=policy)
        ax.set_xscale("log")
        ticks = sorted({p["budget"] * 100 for p in points if p["policy"] != "vanilla"})
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("KV budget (% of the prompt)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=PRESETS, default="cpu-tiny")
    parser.add_argument("--budgets", default="0.05,0.1,0.2,0.5")
    parser.add_argument("--engines", default=",".join(ENGINES), help="comma-separated subset of " + ",".join(ENGINES))
    parser.add_argument("--requests", type=int, help="requests per batch (default: the preset's)")
    parser.add_argument("--model-root", default=".cache")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print("RESULT" + json.dumps(run_engine(args.one, args)))
        return
    points = []
    for name in args.engines.split(","):
        settings = None if name == "vanilla" else {"policy": name}
        points += run_isolated(__file__, sys.argv[1:], name, settings)["points"]
    p = PRESETS[args.preset]
    workload = f"{args.requests or p.requests} requests x ({p.prompt_len} in, {p.output_len} out), {p.dtype}"
    command = "python benchmarks/budget_sweep.py " + " ".join(sys.argv[1:])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.preset}-budgets.json").write_text(json.dumps({"command": command, "points": points}, indent=2))
    plot(points, out / f"{args.preset}-budgets.png", f"{args.preset}: {workload}")
    lines = ["| policy | budget | output tok/s | decode-only tok/s | peak running |", "|---|---|---|---|---|"]
    lines += [f"| {q['policy']} | {q['budget']:g} | {q['output_tok_s']:.1f} | {q['decode_only_tok_s']:.1f} | {q['peak_running']} |"
              for q in points]
    text = "\n".join(lines) + f"\n\nCommand: `{command}`; {workload}.\n"
    (out / f"{args.preset}-budgets.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
