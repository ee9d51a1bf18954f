"""Run a suite through vLLM for a grid of policies x budgets, with full KV as the reference.

`grid` turns policy names, named variants (`variants.py`) and budgets into `Setting`s. `OfflineEngine` runs them in-process: one
engine started with a pyramid policy serves every non-pod setting through per-request overrides
(`SamplingParams(extra_args={"kvcomp": ...})`), batched in one `generate` call; PoD is engine-wide,
so each PoD setting gets an engine of its own. `ServerEngine` sends the same requests to a running
`vllm serve --kv-policy ...` with `kv_*` body fields. Both decode greedily, and both first run one
prompt alone, timed, for the grid's time estimate.
"""

from __future__ import annotations

import gc
import json
import os
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable
from dataclasses import dataclass, replace

from tqdm import tqdm

from ..config import KVPolicyConfig, new_names
from .budgets import budget_label
from .tasks import Sample
from .variants import Variant, messages

# Any non-pod policy can be served per request by an engine started with one tier per layer.
SHARED_ENGINE_POLICY = {"policy": "pyramid", "budget": 0.1}


@dataclass(frozen=True)
class Setting:
    """One policy at one budget (a token count or a ratio of the prompt; full has none), with the
    policy's other `KVPolicyConfig` fields as sorted (name, value) pairs; `name` names a variant's row."""

    policy: str
    budget: int | float | None = None
    params: tuple[tuple[str, object], ...] = ()
    name: str | None = None

    @property
    def variant(self) -> str:
        """The row this setting belongs to: a variant's name, else the policy."""
        return self.name or self.policy

    @property
    def label(self) -> str:
        return self.variant if self.budget is None else f"{self.variant}@{budget_label(self.budget)}"

    def kvcomp(self) -> dict:
        """The `kvcomp` settings of a request or engine. PoD's budget is its `recent` token count, unless it
        selects distant tokens (`select: snapkv`): then the budget is the selection's, as snapkv's."""
        if self.policy == "full":
            return {"policy": "full"}
        if self.policy == "pod" and not _pod_selects(self.params):
            return {"policy": "pod", "recent": int(self.budget), **dict(self.params)}
        return {"policy": self.policy, "budget": self.budget, **dict(self.params)}


def _pod_selects(params) -> bool:
    """Whether pod parameters (a dict or sorted pairs) choose distant tokens, so its budget is a selection's."""
    return dict(params).get("select", "none") != "none"


def grid(policies: list[str], budgets: list[int | float], params: dict[str, dict] | None = None,
         variants: list[Variant] = ()) -> list[Setting]:
    """Full once, then every policy and every variant at every budget (a variant's pinned budget only),
    with `params[policy]` on top of a policy's defaults. PoD takes token budgets only (as `recent`): its
    settings are engine-wide, and a ratio would need one engine per prompt length. Every setting is
    validated here, before any engine starts."""
    params = params or {}
    unknown = sorted(set(params) - set(policies))
    if unknown:
        raise ValueError(f"params for {', '.join(unknown)}: not among the evaluated policies ({', '.join(policies)})")
    clash = sorted({v.name for v in variants} & set(policies))
    if clash:
        raise ValueError(f"variant names {', '.join(clash)}: already policies of the grid; name them apart")
    rows = [(p, None, params.get(p, {}), None) for p in policies if p != "full"]
    rows += [(v.policy, v.name, v.params, v.budget) for v in variants]
    if not rows:
        raise ValueError("nothing to compare with full KV: give --policies or --variants")
    settings = [Setting("full")]
    for policy, name, fields, pinned in rows:
        for budget in budgets if pinned is None else [pinned]:
            if policy == "pod" and isinstance(budget, float) and not _pod_selects(fields):
                if pinned is not None:
                    raise ValueError(f"variant {name}: pod's budget is its `recent`, a token count, not {budget}")
                continue
            settings.append(Setting(policy, budget, tuple(sorted(fields.items())), name))
    for setting in settings:
        try:
            KVPolicyConfig(**setting.kvcomp())  # errors name fields as given, a deprecated name included
        except ValueError as err:  # pydantic's ValidationError is a ValueError
            raise ValueError(f"{setting.label}: {messages(err)}") from None
    # Deprecated names (kernel) become the new ones (pool_size) in labels, requests and results.
    return [replace(s, params=tuple(sorted(new_names(dict(s.params)).items()))) for s in settings]


FirstPrompt = Callable[[float, Sample], None]


def _time_first(generate: Callable[[], object], sample: Sample, on_first: FirstPrompt | None) -> None:
    """Run `generate` (the first sample alone, an extra generation) and report its wall time."""
    if on_first is None:
        return
    started = time.perf_counter()
    generate()
    on_first(time.perf_counter() - started, sample)


def _greedy(sample: Sample, kvcomp: dict | None):
    from vllm import SamplingParams

    extra = {"extra_args": {"kvcomp": kvcomp}} if kvcomp is not None else {}
    return SamplingParams(max_tokens=sample.max_tokens, temperature=0.0, **extra)


class OfflineEngine:
    """In-process vLLM engines over `model`; `llm_args` go to `vllm.LLM` (dtype, max_model_len, ...)."""

    def __init__(self, model: str, **llm_args):
        self.model = str(model)
        # Prefix caching off: the grid sends every prompt once per setting, and kvcomp keeps a prompt's cache
        # hits raw, so a setting would be measured on what an earlier setting's run left in the cache.
        self.llm_args = {"enforce_eager": True, "seed": 0, "enable_prefix_caching": False, **llm_args}
        os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")  # CUDA: kvcomp's hooks live in vLLM's V1 runner

    def _llm(self, kvcomp: dict):
        from vllm import LLM

        return LLM(model=self.model, additional_config={"kvcomp": kvcomp}, **self.llm_args)

    @staticmethod
    def _collect() -> None:
        """Free a dropped engine before the next starts (its teardown resets vLLM's global state)."""
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass

    def _generate(self, llm, samples: list[Sample], params: list, progress: bool) -> list[str]:
        prompts = [{"prompt_token_ids": list(s.prompt_ids)} for s in samples]
        outputs = llm.generate(prompts, sampling_params=params, use_tqdm=progress)
        return [o.outputs[0].text for o in outputs]

    def run(self, samples: list[Sample], settings: list[Setting], progress: bool = True,
            on_first: FirstPrompt | None = None) -> dict[str, list[str]]:
        """Completions per setting label, in sample order; `on_first(seconds, sample)` gets the time of
        the first sample run alone at full KV on the first engine, before the grid starts."""
        shared = [s for s in settings if s.policy != "pod"]
        results: dict[str, list[str]] = {}
        if shared:
            llm = self._llm(SHARED_ENGINE_POLICY)
            _time_first(lambda: self._generate(llm, samples[:1], [_greedy(samples[0], {"policy": "full"})], False),
                        samples[0], on_first)
            batch = [(setting, sample) for setting in shared for sample in samples]
            texts = self._generate(
                llm, [b[1] for b in batch], [_greedy(sample, st.kvcomp()) for st, sample in batch], progress
            )
            for i, setting in enumerate(shared):
                results[setting.label] = texts[i * len(samples):(i + 1) * len(samples)]
            del llm
            self._collect()
        for setting in settings:
            if setting.policy == "pod":
                llm = self._llm(setting.kvcomp())
                if not results:  # no shared engine ran: time the first PoD engine instead
                    _time_first(lambda: self._generate(llm, samples[:1], [_greedy(samples[0], None)], False),
                                samples[0], on_first)
                results[setting.label] = self._generate(llm, samples, [_greedy(s, None) for s in samples], progress)
                del llm
                self._collect()
        return results


class ServerEngine:
    """Requests to a running `vllm serve` at `url`: `kv_*` body fields carry each setting."""

    def __init__(self, url: str, model: str | None = None, concurrency: int = 8, timeout: float = 600.0):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.concurrency = concurrency
        self.model = model or self._served_model()

    def _served_model(self) -> str:
        with urllib.request.urlopen(self.url + "/v1/models", timeout=30) as response:
            return json.load(response)["data"][0]["id"]

    def complete(self, sample: Sample, setting: Setting) -> str:
        body = {
            "model": self.model,
            "prompt": list(sample.prompt_ids),
            "max_tokens": sample.max_tokens,
            "temperature": 0.0,
            "cache_salt": uuid.uuid4().hex,  # its own: no request hits what another left in the prefix cache
            **{f"kv_{k}": v for k, v in setting.kvcomp().items()},
        }
        request = urllib.request.Request(
            self.url + "/v1/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.load(response)["choices"][0]["text"]
        except urllib.error.HTTPError as err:
            raise RuntimeError(f"{setting.label}: server answered {err.code}: {err.read().decode()[:300]}") from None

    def run(self, samples: list[Sample], settings: list[Setting], progress: bool = True,
            on_first: FirstPrompt | None = None) -> dict[str, list[str]]:
        _time_first(lambda: self.complete(samples[0], Setting("full")), samples[0], on_first)
        jobs = [(setting, sample) for setting in settings for sample in samples]
        with ThreadPoolExecutor(self.concurrency) as pool:
            texts = list(tqdm(pool.map(lambda job: self.complete(job[1], job[0]), jobs), total=len(jobs),
                              disable=not progress, desc="requests"))
        return {s.label: texts[i * len(samples):(i + 1) * len(samples)] for i, s in enumerate(settings)}
