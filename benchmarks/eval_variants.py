"""Task accuracy of policy variants (any KVPolicyConfig fields) on one engine; prints a table.

    python benchmarks/eval_variants.py --model .cache/smollm2-135m --lengths 2048 --samples 4 \
        --variant 'snapkv 2.5%={"policy": "snapkv", "budget": 0.025}' \
        --variant 'windowkv 2.5% size 8={"policy": "windowkv", "budget": 0.025, "window_size": 8}'

`kvcomp-vllm eval` sweeps policies x budgets at their default parameters; this asks why one of them
does what it does, by varying its parameters at one budget. Full KV is always the first row. Every
variant runs per request on the eval's shared engine, so all see the same prompts.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from kvcomp_vllm.config import KVPolicyConfig
from kvcomp_vllm.eval.corpus import load_corpus
from kvcomp_vllm.eval.report import records, summarize
from kvcomp_vllm.eval.runner import OfflineEngine, Setting
from kvcomp_vllm.eval.tasks import DEFAULT_DEPTHS, PromptBuilder, build_suite


def parse_variant(text: str) -> Setting:
    """'label={json KVPolicyConfig fields}' -> a `Setting` named `label`."""
    label, _, settings = text.partition("=")
    settings = json.loads(settings)
    KVPolicyConfig(**settings)  # fail here, not inside the engine
    if settings["policy"] == "pod":
        raise argparse.ArgumentTypeError("pod changes the engine's cache layout; run it with `kvcomp-vllm eval`")
    params = {k: v for k, v in settings.items() if k not in ("policy", "budget")}
    return Setting(settings["policy"], settings.get("budget"), tuple(sorted(params.items())), name=label.strip())


def main() -> None:
    from transformers import AutoTokenizer

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--variant", type=parse_variant, action="append", required=True, help="'label={json settings}'")
    parser.add_argument("--tasks", default="needle")
    parser.add_argument("--lengths", default="2048")
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--depths", default=",".join(map(str, DEFAULT_DEPTHS)))
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--kv-cache-gib", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the rows and summary as JSON here")
    args = parser.parse_args()

    lengths = [int(x) for x in args.lengths.split(",")]
    depths = tuple(float(x) for x in args.depths.split(","))
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    _, paragraphs = load_corpus(None, args.seed)
    samples = build_suite(PromptBuilder(tokenizer, paragraphs), lengths, args.samples, args.tasks.split(","), depths, args.seed)
    variants = [Setting("full"), *args.variant]
    engine = OfflineEngine(args.model, dtype=args.dtype, max_model_len=max(lengths) + 64,
                           kv_cache_memory_bytes=int(args.kv_cache_gib * 2**30))
    texts = engine.run(samples, variants)
    rows = records(samples, variants, texts)
    summary = [r for r in summarize(rows) if r["task"] == "all"]
    print("| variant | settings | score | relative to full | prompts |\n|---|---|---|---|---|")
    for v in variants:
        r = next(s for s in summary if s["setting"] == v.label)
        relative = "" if r["relative"] is None else f"{r['relative']:.0%}"
        n = sum(row["setting"] == v.label for row in rows)
        print(f"| {v.label} | `{json.dumps(v.kvcomp())}` | {r['score']:.3f} | {relative} | {n} |")
    if args.out:
        args.out.write_text(json.dumps({"rows": rows, "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
