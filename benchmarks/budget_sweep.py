"""Throughput vs KV budget at saturation, one line per policy, and each policy's prefill overhead; table and PNG.

    python benchmarks/budget_sweep.py --preset h100-8b-sweep \
        --points "vanilla;snapkv=0.1,0.2,0.5;pyramid=0.1,0.2,0.5;streaming=0.1;windowkv=0.1"
    python benchmarks/budget_sweep.py --combine a.json b.json --out DIR    # one table and plot from several runs

Budgets change per request (SamplingParams extra_args), so one engine per KV layout serves a whole
line: a snapkv engine (one tier) serves snapkv, windowkv-per-head and streaming; pyramid (one tier
per layer) and windowkv (one per layer group) get their own; vanilla vLLM runs without the plugin. Each engine, in its own process:
1. per policy it serves, a prefill pass first thing after start (the prefill prompts, max_tokens=1,
   at the first budget), then a second identical pass: the first shows that nothing is compiled
   on the first requests, the second is the steady state the overhead is taken from;
2. per budget (of the policies `--sweep` names; default all), one batch of the preset's workload,
   sized so that the KV pool, not the request count, limits the batch at the larger budgets:
   end-to-end output tok/s and decode-only tok/s (steps where every running request decodes)
   with its mean batch.
Results go to <out>/<preset>-budgets[-<engines>].{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from policies import PRESETS, RESULTS, add_engine_option, make_prompts, run_isolated, start_engine

ENGINE_OF = {"vanilla": "vanilla", "snapkv": "snapkv", "windowkv-per-head": "snapkv", "streaming": "snapkv",
             "pyramid": "pyramid", "windowkv": "windowkv"}


def parse_points(text: str) -> dict[str, list[float]]:
    """'vanilla;snapkv=0.1,0.2;pyramid=0.1' -> {'vanilla': [1.0], 'snapkv': [0.1, 0.2], 'pyramid': [0.1]}."""
    points = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        policy, _, budgets = part.partition("=")
        if policy not in ENGINE_OF:
            raise SystemExit(f"unknown policy {policy!r}; known: {', '.join(ENGINE_OF)}")
        points[policy] = [1.0] if policy == "vanilla" else [float(b) for b in budgets.split(",")]
    return points


def engine_params(policy: str, args: argparse.Namespace) -> dict:
    """Engine-wide parameters a policy's line runs with (requests inherit them from the engine)."""
    return {"tiers": args.pyramid_tiers} if policy == "pyramid" and args.pyramid_tiers else {}


def run_engine(engine: str, args: argparse.Namespace) -> dict:
    """Prefill passes and budget points of every policy `engine` serves, in this process."""
    from vllm import SamplingParams

    from kvcomp_vllm.testing.engine import drive

    preset = PRESETS[args.preset]
    points = {p: b for p, b in parse_points(args.points).items() if ENGINE_OF[p] == engine}
    first = next(iter(points))
    settings = None if engine == "vanilla" else {"policy": engine, "budget": points[first][0], **engine_params(engine, args)}
    prefill_count, prefill_len = (int(x) for x in args.prefill.split("x"))
    # Prompts repeat across passes and points: a prefix cache would skip their prefill, so it is off here.
    engine_args = {"enable_prefix_caching": False,
                   "max_model_len": max(prefill_len + 1, preset.prompt_len + preset.output_len), **args.engine}
    llm, config, _, _ = start_engine(args.preset, settings, args.model_root, **engine_args)
    prompts = make_prompts(preset, args.requests or preset.requests, config.vocab_size)
    prefill_prompts = make_prompts(preset, prefill_count, config.vocab_size, length=prefill_len)
    greedy = dict(temperature=0, ignore_eos=True)

    def params(policy: str, budget: float, max_tokens: int):
        extra = {} if policy == "vanilla" else {"extra_args": {"kvcomp": {"policy": policy, "budget": budget}}}
        return SamplingParams(max_tokens=max_tokens, **greedy, **extra)

    label = lambda policy: policy + "".join(f" {k}={v}" for k, v in engine_params(policy, args).items())  # noqa: E731
    prefill, rows = [], []
    for policy, budgets in points.items():
        passes = [drive(llm, prefill_prompts, params(policy, budgets[0], 1), record_blocks=False).seconds
                  for _ in range(2)]
        prefill.append({"policy": label(policy), "budget": budgets[0], "prompts": args.prefill,
                        "first_s": passes[0], "second_s": passes[1]})
        print(f"{policy} prefill passes: {passes[0]:.2f} s, {passes[1]:.2f} s", file=sys.stderr)
    for policy, budgets in points.items():
        for budget in budgets if args.sweep is None or policy in args.sweep.split(",") else ():
            run = drive(llm, prompts, params(policy, budget, preset.output_len), record_blocks=False)
            out_tokens = sum(len(t) for t in run.tokens.values())
            rows.append({"policy": label(policy), "budget": budget, "requests": len(prompts), "seconds": run.seconds,
                         "output_tok_s": out_tokens / run.seconds, "decode_only_tok_s": run.decode_tok_s,
                         "decode_only_batch": run.decode_tokens / max(run.decode_steps, 1),
                         "peak_running": run.peak_running, "preemptions": run.preemptions})
            print(f"{policy} {budget}: {rows[-1]['output_tok_s']:.1f} tok/s", file=sys.stderr)
    return {"engine": engine, "prefill": prefill, "points": rows}


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
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def report(runs: list[dict], out: Path, stem: str, title: str, commands: list[str]) -> str:
    """Write <stem>.json/.md/.png from engine results; returns the markdown."""
    points = [p for r in runs for p in r["points"]]
    prefill = [p for r in runs for p in r["prefill"]]
    (out / f"{stem}.json").write_text(json.dumps({"commands": commands, "title": title, "runs": runs}, indent=2))
    plot(points, out / f"{stem}.png", title)
    vanilla = {p["policy"]: p for p in points}.get("vanilla")
    base = {p["prompts"]: p for p in prefill if p["policy"] == "vanilla"}  # overhead only against the same prompts
    lines = ["| policy | budget | requests | peak running | output tok/s | decode-only tok/s (mean batch) | preemptions |",
             "|---|---|---|---|---|---|---|"]
    for q in points:
        ratio = "" if vanilla is None or q is vanilla else f" ({q['output_tok_s'] / vanilla['output_tok_s']:.2f}x)"
        d_ratio = "" if vanilla is None or q is vanilla else f" ({q['decode_only_tok_s'] / vanilla['decode_only_tok_s']:.2f}x)"
        lines.append(f"| {q['policy']} | {q['budget']:g} | {q['requests']} | {q['peak_running']} | {q['output_tok_s']:.1f}{ratio} | "
                     f"{q['decode_only_tok_s']:.1f} ({q['decode_only_batch']:.1f}){d_ratio} | {q['preemptions']} |")
    lines += ["", "| policy | budget | prompts | prefill pass 1 s | prefill pass 2 s | overhead vs vanilla (pass 2) |",
              "|---|---|---|---|---|---|"]
    for q in prefill:
        ref = base.get(q["prompts"])
        over = "" if ref is None or q is ref else f"{100 * (q['second_s'] / ref['second_s'] - 1):+.1f}%"
        lines.append(f"| {q['policy']} | {q['budget']:g} | {q['prompts']} | {q['first_s']:.2f} | {q['second_s']:.2f} | {over} |")
    text = "\n".join(lines) + "\n\nCommands:\n\n" + "\n".join(f"    {c}" for c in commands) + f"\n\n{title}\n"
    (out / f"{stem}.md").write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=PRESETS, default="cpu-tiny")
    parser.add_argument("--points", default="vanilla;snapkv=0.1,0.2,0.5;pyramid=0.1,0.2,0.5",
                        help="policy=budget,... separated by ';' (vanilla takes none)")
    parser.add_argument("--prefill", default="4x1024", help="prefill-pass prompts, COUNTxLENGTH")
    parser.add_argument("--sweep", help="comma list of the policies whose budget points run (default: all; "
                                         "the others get their prefill passes only)")
    parser.add_argument("--pyramid-tiers", type=int, help="pyramid's tiers (layers sharing a budget, one KV cache group each); default one per layer")
    parser.add_argument("--requests", type=int, help="requests per point (default: the preset's)")
    parser.add_argument("--model-root", default=".cache")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--combine", nargs="+", type=Path, help="JSON files of earlier runs to report together")
    add_engine_option(parser)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.one:
        print("RESULT" + json.dumps(run_engine(args.one, args)))
        return
    p = PRESETS[args.preset]
    title = (f"{args.preset}: {args.requests or p.requests} requests x ({p.prompt_len} in, {p.output_len} out) per point, "
             f"{p.dtype}; prefill passes {args.prefill}")
    if args.combine:
        parts = [json.loads(path.read_text()) for path in args.combine]
        for part in parts:  # runs from before prefill entries named their prompts: the title does
            for entry in (e for r in part["runs"] for e in r["prefill"]):
                entry.setdefault("prompts", part["title"].rsplit("prefill passes ", 1)[1])
        runs = [r for part in parts for r in part["runs"]]
        print(report(runs, out, f"{args.preset}-budgets", parts[0]["title"], [c for part in parts for c in part["commands"]]))
        return
    engines = list(dict.fromkeys(ENGINE_OF[policy] for policy in parse_points(args.points)))
    runs = [run_isolated(__file__, sys.argv[1:], e, None if e == "vanilla" else {"policy": e}) for e in engines]
    command = "python benchmarks/budget_sweep.py " + " ".join(sys.argv[1:])
    print(report(runs, out, f"{args.preset}-budgets-{'-'.join(engines)}", title, [command]))


if __name__ == "__main__":
    main()
