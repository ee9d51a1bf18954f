"""What a grid will run, checked and printed before any engine starts: its size, context and a time estimate."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from tqdm import tqdm

from .budgets import budget_label
from .runner import Setting
from .tasks import Sample

HEADROOM = 64  # default context beyond the longest prompt, when the model allows it
# The plan's default rate: the default SmolLM2 grid on one H200 (benchmarks/results/eval-smollm2-h200/,
# 20,367,360 prompt tokens in about 4.5 minutes, four engine starts included).
REFERENCE_RATE = 20_367_360 / 270
REFERENCE_RATE_NOTE = "the SmolLM2-135M grid's on one H200"


def model_context(model: str) -> int | None:
    """The context `model`'s config allows, as vLLM derives its default max_model_len (YaRN included)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model)
    config = getattr(config, "text_config", None) or config
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if rope.get("rope_type") == "yarn" and "original_max_position_embeddings" in rope:
        return int(rope["original_max_position_embeddings"] * rope.get("factor", 1.0))
    return getattr(config, "max_position_embeddings", None)


def engine_context(lengths: list[int], answer_tokens: int, allowed: int | None, requested: int | None = None) -> int:
    """The engine's max_model_len: `requested`, or the longest prompt plus `HEADROOM` within `allowed`.
    Raises ValueError, saying what fits, when the longest prompt and its answer do not."""
    longest = max(lengths)
    need = longest + answer_tokens
    if requested is not None:
        _within_model(requested, allowed)
        if requested < need:
            raise ValueError(f"--max-model-len {requested}: the longest prompt ({longest} tokens) and its "
                             f"{answer_tokens} answer tokens need {need}")
        return requested
    if allowed is not None and need > allowed:
        raise ValueError(f"--lengths: the longest prompt ({longest} tokens) and its {answer_tokens} answer tokens "
                         f"need a context of {need}, and the model allows {allowed}: prompts of up to "
                         f"{allowed - answer_tokens} tokens fit")
    return longest + HEADROOM if allowed is None else min(longest + HEADROOM, allowed)


def _within_model(requested: int, allowed: int | None) -> None:
    if allowed is not None and requested > allowed:
        raise ValueError(f"--max-model-len {requested}: the model allows {allowed}")


def fitting_lengths(lengths: list[int], answer_tokens: int, allowed: int | None,
                    requested: int | None = None) -> tuple[list[int], list[str]]:
    """The `lengths` whose prompt and answer fit the context (`requested`, else `allowed`), and why the others
    are skipped; raises ValueError when none fits."""
    if requested is not None:
        _within_model(requested, allowed)
    limit, what = (requested, "--max-model-len is") if requested is not None else (allowed, "the model allows")
    kept = [n for n in lengths if limit is None or n + answer_tokens <= limit]
    skipped = [f"length {n} skipped: it and its {answer_tokens} answer tokens need a context of "
               f"{n + answer_tokens}, and {what} {limit}" for n in lengths if n not in kept]
    if not kept:
        raise ValueError(f"--lengths: none fits; {'; '.join(skipped)}: prompts of up to "
                         f"{limit - answer_tokens} tokens fit")
    return kept, skipped


@dataclass
class Plan:
    """A grid's prompts and settings, and where they run (`server`, or in-process engines)."""

    samples: list[Sample]
    settings: list[Setting]
    dtype: str
    max_model_len: int
    model_context: int | None
    corpus: str
    server: str | None = None
    kv_cache_gib: float | None = None  # None: vLLM sizes the KV cache
    skipped: tuple[str, ...] = ()  # lengths left out, each with its reason
    notes: tuple[str, ...] = ()  # sizing lines
    rate: float | None = None  # prompt tokens per second for the time estimate; None: no estimate
    sample_count: int | None = None  # --samples as run (auto resolved)

    @property
    def prompt_tokens(self) -> int:
        return sum(s.length for s in self.samples) * len(self.settings)

    @property
    def generations(self) -> int:
        return len(self.samples) * len(self.settings)

    @property
    def engines(self) -> int:
        """In-process engines: one shared by every non-pod setting, one per pod setting."""
        if self.server:
            return 0
        pod = sum(s.policy == "pod" for s in self.settings)
        return pod + (len(self.settings) > pod)

    def describe(self) -> str:
        """The plan in a few lines: prompts, settings per row, engines, context, dtype and filler."""
        tasks = Counter(s.task for s in self.samples)
        lengths = sorted({s.length for s in self.samples})
        lines = [f"grid: {len(self.samples)} prompts x {len(self.settings)} settings = {self.generations} generations",
                 "  prompts (n per cell): " + ", ".join(f"{task} {n}" for task, n in tasks.items())
                 + f"; lengths {', '.join(map(str, lengths))}"]
        rows: dict[str, list[Setting]] = {}
        for setting in self.settings:
            rows.setdefault(setting.variant, []).append(setting)
        for name, settings in rows.items():
            first = settings[0]
            params = " ".join(f"{k}={v}" for k, v in first.params)
            what = " ".join(([first.policy] if first.name else []) + ([params] if params else []))
            what = f" ({what})" if what else ""
            budgets = ", ".join(budget_label(s.budget) for s in settings if s.budget is not None)
            lines.append(f"  {name}{what}" + (f": {budgets}" if budgets else ": the reference"))
        if self.server:
            lines.append(f"  server: {self.server}")
        else:
            context = f" of the model's {self.model_context}" if self.model_context else ""
            cache = f", KV cache {self.kv_cache_gib:g} GiB" if self.kv_cache_gib is not None else ""
            lines.append(f"  engines: {self.engines}, dtype {self.dtype}, max_model_len {self.max_model_len}{context}"
                         + cache)
        lines.append(f"  filler: {self.corpus}")
        lines += [f"  {line}" for line in self.skipped + self.notes]
        if self.rate:
            what = REFERENCE_RATE_NOTE if self.rate == REFERENCE_RATE else "--rate"
            lines.append(f"  time: about {tqdm.format_interval(self.prompt_tokens / self.rate)} for "
                         f"{self.prompt_tokens:,} prompt tokens at {self.rate:,.0f} per second ({what}; longer "
                         "prompts and larger models run slower)")
        return "\n".join(lines)

    def estimate(self, seconds: float, sample: Sample) -> str:
        """The grid's time at the rate of one prompt run alone, scaled by prompt tokens."""
        tokens = self.prompt_tokens
        total = seconds / sample.length * tokens
        starts = f", plus {self.engines - 1} more engine starts" if self.engines > 1 else ""
        return (f"first prompt alone ({sample.length} tokens, full KV): {seconds:.1f} s; at that rate the "
                f"{self.generations} generations ({tokens:,} prompt tokens) take about "
                f"{tqdm.format_interval(total)}{starts} (batching on a GPU runs faster)")
