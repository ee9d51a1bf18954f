"""`kvcomp-vllm eval`: build the suite, print the plan, run the policy x budget grid, write scores and plots.

    kvcomp-vllm eval --model MODEL_DIR --out results/eval \
        [--policies streaming,snapkv,pyramid,windowkv,windowkv-per-head,pod] [--budgets ratios,pyramidkv]
        [--lengths 4000,8000,16000] [--tasks needle,passkey,...] [--samples 4 | --samples auto --target-ci 0.1]
        [--server URL] [--params '{"pyramid": {"pool_size": 15}}'] [--variants 'snapkv-k15=snapkv:pool_size=15;...']
        [--dry-run]
    kvcomp-vllm eval report RESULTS_DIR[=MODEL]... --out benchmarks/results/quality   (eval/page.py)
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from .corpus import CORPORA, load_corpus
from .plan import HEADROOM, REFERENCE_RATE, Plan, engine_context, fitting_lengths, model_context
from .budgets import BUDGET_SETS, parse_budgets
from .runner import OfflineEngine, ServerEngine, grid
from .sizing import observed_full, samples_needed, sizing_lines
from .tasks import DEFAULT_DEPTHS, TASKS, PromptBuilder, build_suite, prompts_per_sample
from .tasks.base import ANSWER_TOKENS
from .variants import parse_variants

POLICIES = "streaming,snapkv,pyramid,windowkv,windowkv-per-head,pod"
BUDGETS = "ratios,pyramidkv"
LENGTHS = "4000,8000,16000"  # 4k/8k/16k, each with its answer within 8192 and 16384 contexts
CPU_KV_CACHE_GIB = 2.0  # the CPU results' VLLM_CPU_KVCACHE_SPACE; five 8k prompts of SmolLM2 in float32


def _list(kind):
    return lambda text: [kind(x) for x in text.split(",") if x.strip()]


def _budgets(text: str):
    try:
        return parse_budgets(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _samples(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: a number of prompts, or auto (with --target-ci)") from None


def _variants(text: str):
    try:
        return parse_variants(text)
    except ValueError as err:  # argparse shows an ArgumentTypeError's message, not a ValueError's
        raise argparse.ArgumentTypeError(str(err)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("--model", required=True, help="model folder (or name) with its tokenizer")
    a("--out", type=Path, default=Path("results/eval"), help="folder for results.json, summary.csv/.md, plots")
    a("--policies", type=_list(str), default=None,
      help=f"comma list (default {POLICIES}, or none when --variants is given)")
    a("--variants", type=_variants, default=[],
      help="named policy variants, each a row of the grid over --budgets (budget=B pins one): "
           "'snapkv-k7=snapkv:pool_size=7;snapkv-k15=snapkv:pool_size=15'")
    sets = "; ".join(f"{name} = {','.join(map(str, values))}" for name, values in BUDGET_SETS.items())
    a("--budgets", type=_budgets, default=parse_budgets(BUDGETS),
      help=f"ratios (0.1 or 10%%), token counts and named sets ({sets}); default {BUDGETS}; pod uses the "
           "token counts as `recent`")
    a("--lengths", type=_list(int), default=_list(int)(LENGTHS),
      help=f"prompt lengths in model tokens (default {LENGTHS}); lengths whose prompt and answer do not fit the "
           "context are skipped, with the reason printed")
    a("--tasks", type=_list(str), default=list(TASKS), help=f"comma list of {', '.join(TASKS)}")
    a("--samples", type=_samples, default=4,
      help="prompts per task and length (needle: per length and depth), or auto: the fewest that give every "
           "cell a 95%% interval within --target-ci")
    a("--target-ci", type=float, default=None,
      help="a 95%% half-width (0.1: +-10 points): the plan prints the prompts per cell and --samples it needs")
    a("--sizing-from", type=Path, default=None,
      help="a results.json whose full-KV shares per task the sizing also uses (with --target-ci)")
    a("--rate", type=float, default=REFERENCE_RATE,
      help="prompt tokens per second for the plan's time estimate (default: the SmolLM2 grid's on one H200)")
    a("--depths", type=_list(float), default=list(DEFAULT_DEPTHS), help="needle depths in [0, 1]")
    a("--seed", type=int, default=0)
    a("--corpus", default="generated",
      help=f"filler: {' or '.join(CORPORA)} (Debian's dict-devil), or a text file (.txt/.gz/.dz); "
           "default generated, as the committed H100 grids")
    a("--no-chat", action="store_true", help="plain prompts even if the tokenizer has a chat template")
    a("--server", default=None, help="base URL of a running `vllm serve --kv-policy ...` instead of in-process")
    a("--concurrency", type=int, default=8, help="server mode: requests in flight")
    a("--dtype", default=None,
      help="default bfloat16 with a GPU (the committed H100 grids), float32 on CPU (the CPU results; vLLM CPU's "
           "bfloat16 path needs AVX-512 BF16 or AMX and does not yet serve kvcomp on AMX hosts)")
    a("--max-model-len", type=int, default=None,
      help=f"default: the longest prompt plus {HEADROOM}, within the model's context")
    a("--kv-cache-gib", type=float, default=None,
      help="fixed KV cache size (vLLM's kv_cache_memory_bytes) instead of a memory share; on CPU this also "
           "skips vLLM's start-up check that 92%% of RAM is free, which fails on a shared machine, so there "
           f"it defaults to {CPU_KV_CACHE_GIB:g} unless VLLM_CPU_KVCACHE_SPACE is set")
    a("--pod-group-size", type=int, default=2, help="pod: layers sharing one key (must divide the layer count)")
    a("--pod-groups", default=None,
      help="pod: layer groups from a `kvcomp-vllm pod-calibrate` file (its groups; instead of --pod-group-size)")
    a("--params", type=json.loads, default={},
      help='per-policy parameters on top of the defaults, JSON: \'{"snapkv": {"pool_size": 15}, "pyramid": {"pool_size": 15}}\'')
    a("--dry-run", action="store_true", help="print the plan (prompts, settings, generations, engines) and stop")
    a("--no-plots", action="store_true")
    a("--quiet", action="store_true", help="no progress bars")


def default_dtype() -> str:
    """bfloat16 on a GPU, float32 on CPU (see --dtype)."""
    import torch

    return "bfloat16" if torch.cuda.is_available() else "float32"


def pod_groups(path: str) -> list[list[int]]:
    """The `groups` of a pod grouping file (`pod-calibrate`'s JSON, or any pod preset)."""
    from ..config import load_preset

    groups = load_preset(path).groups
    if groups is None:
        raise ValueError(f"--pod-groups {path}: the file names no groups")
    return [list(g) for g in groups]


def default_kv_cache_gib() -> float | None:
    """A fixed KV cache on CPU, unless VLLM_CPU_KVCACHE_SPACE sizes it (see --kv-cache-gib)."""
    import torch

    return None if torch.cuda.is_available() or "VLLM_CPU_KVCACHE_SPACE" in os.environ else CPU_KV_CACHE_GIB


def plan(args: argparse.Namespace) -> tuple[Plan, PromptBuilder, dict]:
    """Prompts, settings and engine context from `args`, all checked; no engine starts here."""
    from transformers import AutoTokenizer

    variants = getattr(args, "variants", [])  # callers may build the Namespace themselves
    policies = args.policies if args.policies is not None else ([] if variants else _list(str)(POLICIES))
    params = {**getattr(args, "params", {})}
    if "pod" in policies:
        groups = getattr(args, "pod_groups", None)
        own = {"groups": pod_groups(groups)} if groups else {"group_size": args.pod_group_size}
        params["pod"] = {**own, **params.get("pod", {})}
    settings = grid(policies, args.budgets, params, variants)
    allowed = model_context(args.model)
    lengths, skipped = fitting_lengths(args.lengths, ANSWER_TOKENS, allowed, args.max_model_len)
    count, notes = sample_count(args, lengths)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    corpus_name, paragraphs = load_corpus(args.corpus, args.seed)
    builder = PromptBuilder(tokenizer, paragraphs, chat=False if args.no_chat else None)
    samples = build_suite(builder, lengths, count, args.tasks, tuple(args.depths), args.seed)
    max_len = engine_context(lengths, max(s.max_tokens for s in samples), allowed, args.max_model_len)
    dtype = args.dtype or default_dtype()
    gib = getattr(args, "kv_cache_gib", None)  # callers may build the Namespace themselves
    gib = None if args.server else gib if gib is not None else default_kv_cache_gib()
    rate = getattr(args, "rate", REFERENCE_RATE)
    return Plan(samples, settings, dtype, max_len, allowed, corpus_name, args.server, gib,
                skipped=tuple(skipped), notes=tuple(notes), rate=rate, sample_count=count), builder, params


def sample_count(args: argparse.Namespace, lengths: list[int]) -> tuple[int, list[str]]:
    """--samples (auto: sized by --target-ci) and the sizing lines the plan prints."""
    target, source = getattr(args, "target_ci", None), getattr(args, "sizing_from", None)
    if target is None:
        if args.samples == "auto" or source is not None:
            raise ValueError("--samples auto and --sizing-from size the grid for --target-ci: give it")
        return args.samples, []
    per_sample = prompts_per_sample(args.tasks, lengths, tuple(args.depths))
    shares = observed_full(source) if source is not None else None
    count = samples_needed(target, per_sample) if args.samples == "auto" else args.samples
    return count, sizing_lines(target, per_sample, count, shares, source and str(source))


def evaluate(args: argparse.Namespace) -> dict:
    """Run the evaluation `args` describe; returns the run info, summary and the written paths."""
    from . import plots, report, scores

    started = time.time()
    grid_plan, builder, params = plan(args)
    print(grid_plan.describe(), flush=True)
    samples, settings = grid_plan.samples, grid_plan.settings
    info = dict(model=str(args.model), server=args.server, corpus=grid_plan.corpus, chat=builder.chat,
                dtype=None if args.server else grid_plan.dtype, max_model_len=grid_plan.max_model_len,
                kv_cache_gib=grid_plan.kv_cache_gib,
                lengths=sorted({s.length for s in samples}), tasks=args.tasks,
                samples=grid_plan.sample_count, skipped=list(grid_plan.skipped), depths=args.depths, seed=args.seed,
                params=params, variants=[v.model_dump() for v in getattr(args, "variants", [])],
                settings=[s.label for s in settings], generations=grid_plan.generations)
    if getattr(args, "dry_run", False):
        return dict(run=info, summary=[], rows=[], paths={})
    if args.server:
        engine = ServerEngine(args.server, concurrency=args.concurrency)
    else:
        gib = grid_plan.kv_cache_gib
        extra = {} if gib is None else {"kv_cache_memory_bytes": int(gib * 2**30)}
        engine = OfflineEngine(args.model, dtype=grid_plan.dtype, max_model_len=grid_plan.max_model_len, **extra)
    texts = engine.run(samples, settings, progress=not args.quiet,
                       on_first=lambda seconds, sample: print(grid_plan.estimate(seconds, sample), flush=True))
    rows = report.records(samples, settings, texts)
    summary = scores.summarize(rows)
    info["seconds"] = round(time.time() - started, 1)
    paths = report.write(args.out, info, samples, rows, summary)
    if not args.no_plots:
        paths["score_vs_budget"] = plots.score_vs_budget(summary, args.out / "score_vs_budget.png")
        paths["share_vs_budget"] = plots.score_vs_budget(summary, args.out / "share_vs_budget.png", metric="relative")
        for path in plots.needle_heatmaps(rows, args.out):
            paths[path.stem] = path
    return dict(run=info, summary=summary, rows=rows, paths=paths)


def show(result: dict) -> None:
    """Print the summary table and the written files (nothing after a dry run)."""
    if "md" in result["paths"]:
        print(result["paths"]["md"].read_text())
        print("wrote", ", ".join(str(p) for p in result["paths"].values()))


def main(argv: list[str] | None = None) -> int:
    import sys

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["report"]:
        from .page import main as report

        return report(argv[1:])
    parser = argparse.ArgumentParser(prog="kvcomp-vllm eval", description=__doc__.split("\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        show(evaluate(args))
    except ValueError as err:
        parser.exit(2, f"kvcomp-vllm eval: {err}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
