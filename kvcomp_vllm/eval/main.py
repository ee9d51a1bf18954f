"""`kvcomp-vllm eval`: build the suite, run the policy x budget grid, write scores and plots.

    kvcomp-vllm eval --model MODEL_DIR --out results/eval \
        [--policies streaming,snapkv,pyramid,windowkv,pod] [--budgets 0.025,0.05,0.1,0.2,0.5,128,512,2048]
        [--lengths 2048,4096,8192] [--tasks needle,passkey,...] [--samples 4] [--server URL]
        [--params '{"pyramid": {"kernel": 15}}']
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from .corpus import load_corpus
from .runner import OfflineEngine, ServerEngine, grid, parse_budget
from .tasks import DEFAULT_DEPTHS, TASKS, PromptBuilder, build_suite

POLICIES = "streaming,snapkv,pyramid,windowkv,pod"
BUDGETS = "0.025,0.05,0.1,0.2,0.5,128,512,2048"


def _list(kind):
    return lambda text: [kind(x) for x in text.split(",") if x.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("--model", required=True, help="model folder (or name) with its tokenizer")
    a("--out", type=Path, default=Path("results/eval"), help="folder for results.json, summary.csv/.md, plots")
    a("--policies", type=_list(str), default=_list(str)(POLICIES), help=f"comma list (default {POLICIES})")
    a("--budgets", type=_list(parse_budget), default=_list(parse_budget)(BUDGETS),
      help=f"ratios (0.1 or 10%%) and token counts (default {BUDGETS}); pod uses the token counts as `recent`")
    a("--lengths", type=_list(int), default=[2048, 4096, 8192], help="prompt lengths in model tokens")
    a("--tasks", type=_list(str), default=list(TASKS), help=f"comma list of {', '.join(TASKS)}")
    a("--samples", type=int, default=4, help="prompts per task and length (needle: per length and depth)")
    a("--depths", type=_list(float), default=list(DEFAULT_DEPTHS), help="needle depths in [0, 1]")
    a("--seed", type=int, default=0)
    a("--corpus", type=Path, default=None, help="filler text file (.txt/.gz/.dz); default: dict-devil or generated")
    a("--no-chat", action="store_true", help="plain prompts even if the tokenizer has a chat template")
    a("--server", default=None, help="base URL of a running `vllm serve --kv-policy ...` instead of in-process")
    a("--concurrency", type=int, default=8, help="server mode: requests in flight")
    a("--dtype", default="auto")
    a("--max-model-len", type=int, default=None, help="default: the longest prompt plus 64")
    a("--kv-cache-gib", type=float, default=None,
      help="fixed KV cache size (vLLM's kv_cache_memory_bytes) instead of a memory share; on CPU this also "
           "skips vLLM's start-up check that 92%% of RAM is free, which fails on a shared machine")
    a("--pod-group-size", type=int, default=2, help="pod: layers sharing one key (must divide the layer count)")
    a("--params", type=json.loads, default={},
      help='per-policy parameters on top of the defaults, JSON: \'{"snapkv": {"kernel": 15}, "pyramid": {"kernel": 15}}\'')
    a("--no-plots", action="store_true")
    a("--quiet", action="store_true", help="no progress bars")


def evaluate(args: argparse.Namespace) -> dict:
    """Run the evaluation `args` describe; returns the run info, summary and the written paths."""
    from transformers import AutoTokenizer

    from . import plots, report

    started = time.time()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    corpus_name, paragraphs = load_corpus(args.corpus, args.seed)
    builder = PromptBuilder(tokenizer, paragraphs, chat=False if args.no_chat else None)
    samples = build_suite(builder, args.lengths, args.samples, args.tasks, tuple(args.depths), args.seed)
    params = {**getattr(args, "params", {})}  # callers may build the Namespace themselves
    if "pod" in args.policies:
        params["pod"] = {"group_size": args.pod_group_size, **params.get("pod", {})}
    settings = grid(args.policies, args.budgets, params)
    if args.server:
        engine = ServerEngine(args.server, concurrency=args.concurrency)
    else:
        max_len = args.max_model_len or max(args.lengths) + 64
        gib = getattr(args, "kv_cache_gib", None)  # callers may build the Namespace themselves
        extra = {} if gib is None else {"kv_cache_memory_bytes": int(gib * 2**30)}
        engine = OfflineEngine(args.model, dtype=args.dtype, max_model_len=max_len, **extra)
    texts = engine.run(samples, settings, progress=not args.quiet)
    rows = report.records(samples, settings, texts)
    summary = report.summarize(rows)
    info = dict(model=str(args.model), server=args.server, corpus=corpus_name, chat=builder.chat,
                lengths=args.lengths, tasks=args.tasks, samples=args.samples, depths=args.depths, seed=args.seed,
                params=params, settings=[s.label for s in settings], seconds=round(time.time() - started, 1))
    paths = report.write(args.out, info, samples, rows, summary)
    if not args.no_plots:
        paths["score_vs_budget"] = plots.score_vs_budget(summary, args.out / "score_vs_budget.png")
        for path in plots.needle_heatmaps(rows, args.out):
            paths[path.stem] = path
    return dict(run=info, summary=summary, rows=rows, paths=paths)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kvcomp-vllm eval", description=__doc__.split("\n")[0])
    add_arguments(parser)
    result = evaluate(parser.parse_args(argv))
    print((result["paths"]["md"]).read_text())
    print("wrote", ", ".join(str(p) for p in result["paths"].values()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
