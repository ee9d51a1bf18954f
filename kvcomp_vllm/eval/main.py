"""`kvcomp-vllm eval`: build the suite, print the plan, run the policy x budget grid, write scores and plots.

    kvcomp-vllm eval --model MODEL_DIR --out results/eval \
        [--policies streaming,snapkv,pyramid,windowkv,pod] [--budgets 0.025,0.05,0.1,0.2,0.5,128,512,2048]
        [--lengths 2048,4096,8000] [--tasks needle,passkey,...] [--samples 4] [--server URL]
        [--params '{"pyramid": {"pool_size": 15}}'] [--variants 'snapkv-k15=snapkv:pool_size=15;...'] [--dry-run]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from .corpus import CORPORA, load_corpus
from .plan import HEADROOM, Plan, engine_context, model_context
from .budgets import parse_budget
from .runner import OfflineEngine, ServerEngine, grid
from .tasks import DEFAULT_DEPTHS, TASKS, PromptBuilder, build_suite
from .variants import parse_variants

POLICIES = "streaming,snapkv,pyramid,windowkv,pod"
BUDGETS = "0.025,0.05,0.1,0.2,0.5,128,512,2048"
CPU_KV_CACHE_GIB = 2.0  # the CPU results' VLLM_CPU_KVCACHE_SPACE; five 8k prompts of SmolLM2 in float32


def _list(kind):
    return lambda text: [kind(x) for x in text.split(",") if x.strip()]


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
    a("--budgets", type=_list(parse_budget), default=_list(parse_budget)(BUDGETS),
      help=f"ratios (0.1 or 10%%) and token counts (default {BUDGETS}); pod uses the token counts as `recent`")
    a("--lengths", type=_list(int), default=[2048, 4096, 8000],
      help="prompt lengths in model tokens; the longest plus its answer must fit the model's context")
    a("--tasks", type=_list(str), default=list(TASKS), help=f"comma list of {', '.join(TASKS)}")
    a("--samples", type=int, default=4, help="prompts per task and length (needle: per length and depth)")
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
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    corpus_name, paragraphs = load_corpus(args.corpus, args.seed)
    builder = PromptBuilder(tokenizer, paragraphs, chat=False if args.no_chat else None)
    samples = build_suite(builder, args.lengths, args.samples, args.tasks, tuple(args.depths), args.seed)
    allowed = model_context(args.model)
    max_len = engine_context(args.lengths, max(s.max_tokens for s in samples), allowed, args.max_model_len)
    dtype = args.dtype or default_dtype()
    gib = getattr(args, "kv_cache_gib", None)  # callers may build the Namespace themselves
    gib = None if args.server else gib if gib is not None else default_kv_cache_gib()
    return Plan(samples, settings, dtype, max_len, allowed, corpus_name, args.server, gib), builder, params


def evaluate(args: argparse.Namespace) -> dict:
    """Run the evaluation `args` describe; returns the run info, summary and the written paths."""
    from . import plots, report

    started = time.time()
    grid_plan, builder, params = plan(args)
    print(grid_plan.describe(), flush=True)
    samples, settings = grid_plan.samples, grid_plan.settings
    info = dict(model=str(args.model), server=args.server, corpus=grid_plan.corpus, chat=builder.chat,
                dtype=None if args.server else grid_plan.dtype, max_model_len=grid_plan.max_model_len,
                kv_cache_gib=grid_plan.kv_cache_gib,
                lengths=args.lengths, tasks=args.tasks, samples=args.samples, depths=args.depths, seed=args.seed,
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
    summary = report.summarize(rows)
    info["seconds"] = round(time.time() - started, 1)
    paths = report.write(args.out, info, samples, rows, summary)
    if not args.no_plots:
        paths["score_vs_budget"] = plots.score_vs_budget(summary, args.out / "score_vs_budget.png")
        for path in plots.needle_heatmaps(rows, args.out):
            paths[path.stem] = path
    return dict(run=info, summary=summary, rows=rows, paths=paths)


def show(result: dict) -> None:
    """Print the summary table and the written files (nothing after a dry run)."""
    if "md" in result["paths"]:
        print(result["paths"]["md"].read_text())
        print("wrote", ", ".join(str(p) for p in result["paths"].values()))


def main(argv: list[str] | None = None) -> int:
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
