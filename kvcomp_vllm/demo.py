"""`make demo`: serve a tiny local model with `vllm serve --kv-policy pyramid` and ask it once.

Builds the model (random weights, locally trained tokenizer), starts vLLM's OpenAI server with
the plugin, sends one long-prompt completion request, and prints the answer and the per-layer
KV budgets the server logged.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

from .testing import build_tiny_model, synthetic_text
from .testing.server import log_tail, serve

MODEL_DIR = Path(".cache/tiny-llama")
LOG = Path(".cache/demo-serve.log")
SERVE_ARGS = ("--kv-policy", "pyramid", "--kv-budget", "0.1", "--max-model-len", "4096", "--enforce-eager")


def main() -> None:
    model = build_tiny_model(MODEL_DIR)
    prompt = " ".join(synthetic_text(60, seed=7))
    print(f"$ vllm serve {model} {' '.join(SERVE_ARGS)}   (log: {LOG})")
    try:
        with serve(model, *SERVE_ARGS, log=LOG) as url:
            body = {"model": str(model), "prompt": prompt, "max_tokens": 24, "temperature": 0}
            data = json.dumps(body).encode()
            request = urllib.request.Request(url + "/v1/completions", data, {"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=120) as response:
                answer = json.loads(response.read())
    except (OSError, RuntimeError) as err:  # URLError and HTTPError are OSErrors; TimeoutError too
        detail = err.read().decode(errors="replace") if isinstance(err, urllib.error.HTTPError) else ""
        sys.exit(f"demo failed: {err} {detail}{'' if 'last lines of' in str(err) else log_tail(LOG)}")
    budgets = [line.split("kvcomp: ", 1)[1] for line in LOG.read_text().splitlines() if "kvcomp: " in line]
    print("\n".join(f"server: {line}" for line in budgets))
    print(f"POST {url}/v1/completions  ({answer['usage']['prompt_tokens']} prompt tokens)")
    print(f"answer: {answer['choices'][0]['text']!r}")


if __name__ == "__main__":
    main()
