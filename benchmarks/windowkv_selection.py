"""Where windowkv-per-head and snapkv keep tokens relative to a needle, per scoring layer (reference generator).

    python benchmarks/windowkv_selection.py --model .cache/smollm2-135m --budget 0.025 --prompts 6

For each needle prompt: whether the answer came out right, the share of KV heads (mean over scoring
layers) that keep the answer's first token, the first kept positions, windowkv's window sizes and its
attention-concentration measure. This is how the windowkv collapse at 2.5% was traced to single
windows spent on the attention sink.
"""

from __future__ import annotations

import argparse
from collections import Counter

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from kvcomp_vllm import KVPolicyConfig
from kvcomp_vllm.eval.corpus import load_corpus
from kvcomp_vllm.eval.tasks import PromptBuilder, build_suite
from kvcomp_vllm.policies.scoring import attention_concentration
from kvcomp_vllm.policies.selector import KeepWindow
from kvcomp_vllm.policies.windowkv_per_head import PerHeadWindows
from kvcomp_vllm.reference import generate


def recorded(log: list):
    """Wrap `KeepWindow.select`, snapkv's and windowkv-per-head's frame, so each plan (and windowkv-per-head's
    size choice) lands in `log`."""
    select = KeepWindow.select

    def recording(self, prompt, budget, heads=None):
        plan = select(self, prompt, budget, heads)
        if isinstance(self.chooser, PerHeadWindows):
            w = min(self.observation_window, prompt.prompt_len)
            scores = prompt.scores(w)
            log.append((self.chooser.window_size(scores, budget - w), attention_concentration(scores), plan.keep))
        else:
            log.append((None, None, plan.keep))
        return plan

    KeepWindow.select = recording


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--budget", type=float, default=0.025)
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--prompts", type=int, default=6)
    parser.add_argument("--corpus", default="generated", help="filler, as `kvcomp-vllm eval --corpus`")
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    samples = build_suite(PromptBuilder(tokenizer, load_corpus(args.corpus, 0)[1]), [args.length], 4, ["needle"], (0.0, 0.5, 1.0), 0)
    log: list = []
    recorded(log)
    for sample in samples[: args.prompts]:
        ids = list(sample.prompt_ids)
        answer = tokenizer(" " + sample.answer, add_special_tokens=False).input_ids
        needle = next(i for i in range(len(ids)) if ids[i : i + len(answer)] == answer)
        for policy in ("windowkv-per-head", "snapkv"):
            log.clear()
            out = generate(model, ids, KVPolicyConfig(policy=policy, budget=args.budget), sample.max_tokens,
                           eos_token_id=tokenizer.eos_token_id)
            text = tokenizer.decode(out.tokens)
            heads = sum(float((keep == needle).any(-1).float().mean()) for _, _, keep in log) / len(log)
            firsts = sorted({int(keep.min()) for _, _, keep in log})[:4]
            sizes = dict(Counter(size for size, _, _ in log))
            conc = sorted(c for _, c, _ in log if c is not None)
            conc_text = f" concentration median {conc[len(conc) // 2]:.2f}" if conc else ""
            print(f"depth {sample.depth} #{sample.index} {policy:8s} correct={sample.answer.lower() in text.lower()} "
                  f"needle at {needle}: kept by {heads:.0%} of heads; first kept {firsts}; sizes {sizes}{conc_text}")


if __name__ == "__main__":
    main()
