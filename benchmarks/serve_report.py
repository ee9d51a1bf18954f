"""Report of benchmarks/serve.py: one JSON, one Markdown table per workload, latency and goodput plots.

Kept apart from the runner so that tables, the SLO check and plots are testable from result dicts alone.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SLO:
    """Latency objectives: time to first token and time per output token, in milliseconds."""

    ttft_ms: float
    tpot_ms: float

    def describe(self) -> str:
        return f"p99 TTFT <= {self.ttft_ms / 1000:g} s and p99 TPOT <= {self.tpot_ms:g} ms"

    def met(self, result: dict) -> bool:
        """A rate meets the SLO where no request failed and its p99 TTFT and p99 TPOT are within it."""
        return (result.get("failed", 1) == 0 and result.get("p99_ttft_ms", math.inf) <= self.ttft_ms
                and result.get("p99_tpot_ms", math.inf) <= self.tpot_ms)


def rate_value(label: str) -> float:
    return math.inf if label == "inf" else float(label)


def lengths(workload: dict) -> str:
    """A workload's lengths as written in a report: '4096 shared + 28000 in, 1024 out'."""
    shared = f"{workload['prefix_len']} shared + " if workload.get("prefix_len") else ""
    return f"{shared}{workload['input_len']} in, {workload['output_len']} out"


def rows(runs: list[dict]) -> list[dict]:
    """The timed passes (warm-ups left out) of every configuration, each with its config's name and setting."""
    return [{**p, "config": r["config"], "prefix_caching": r.get("prefix_caching")}
            for r in runs for p in r["passes"] if not p["warmup"]]


def highest_rate(passes: list[dict], slo: SLO) -> str:
    """The highest rate among `passes` (one config, one workload) that meets the SLO; `none` if no rate does."""
    met = [rate_value(p["rate"]) for p in passes if "result" in p and slo.met(p["result"])]
    if not met:
        return "none"
    best = max(met)
    return "inf (burst)" if math.isinf(best) else f"{best:g} req/s"


def _ms(result: dict, key: str) -> str:
    value = result.get(key)
    return "—" if value is None else f"{value:.1f}"


def _hits(p: dict) -> str:
    counts = p.get("prefix_cache") or {}
    if not counts:
        return "?"
    return f"{100 * counts['hits'] / counts['queries']:.1f}%" if counts["queries"] else "—"


def _caching(enabled) -> str:
    return {True: "on", False: "off"}.get(enabled, "?")


def table(runs: list[dict], workload: str, slo: SLO) -> list[str]:
    """Markdown rows of one workload: per config and rate, throughput, latency percentiles, goodput."""
    lines = ["| config | prefix caching | rate (req/s) | completed | req/s | output tok/s | TTFT p50 (ms) | TTFT p99 (ms) "
             "| TPOT p50 (ms) | TPOT p99 (ms) | ITL p99 (ms) | E2E p99 (ms) | goodput (req/s) | prefix-cache hits | within SLO |",
             "|" + "---|" * 15]
    for run in runs:
        if "error" in run and not run["passes"]:
            lines.append(f"| {run['config']} | | does not start: {run['error'].splitlines()[0]} |" + " |" * 12)
            continue
        for p in (p for p in run["passes"] if not p["warmup"] and p["workload"] == workload):
            head = f"| {run['config']} | {_caching(run.get('prefix_caching'))} | {p['rate']} "
            if "result" not in p:
                lines.append(head + f"| failed: {p['error'].splitlines()[0]} |" + " |" * 11)
                continue
            r = p["result"]
            goodput = "—" if r.get("request_goodput") is None else f"{r['request_goodput']:.2f}"
            lines.append(
                head + f"| {r['completed']}/{p['num_prompts']} | {r['request_throughput']:.2f} | {r['output_throughput']:.1f} "
                f"| {_ms(r, 'p50_ttft_ms')} | {_ms(r, 'p99_ttft_ms')} | {_ms(r, 'p50_tpot_ms')} | {_ms(r, 'p99_tpot_ms')} "
                f"| {_ms(r, 'p99_itl_ms')} | {_ms(r, 'p99_e2el_ms')} | {goodput} | {_hits(p)} | {'yes' if slo.met(r) else 'no'} |"
            )
        if "error" in run:  # the server stopped before its last pass
            lines.append(f"| {run['config']} | | stopped: {run['error'].splitlines()[0]} |" + " |" * 12)
    return lines


def markdown(meta: dict, runs: list[dict]) -> str:
    slo = SLO(**meta["slo"])
    v = meta["versions"]
    parts = [f"# Serving benchmark: {meta['preset']}", "",
             f"Device: {v['device']}; vLLM {v['vllm']}, kvcomp-vllm {v['kvcomp-vllm']} at {v['commit']}, torch {v['torch']}.",
             f"Model: `{meta['model']}`. {meta['num_prompts']} requests per rate, vLLM's random dataset, Poisson arrivals "
             "(rate inf: all at once), --ignore-eos; each pass has its own dataset seed.",
             f"SLO: {slo.describe()}. Goodput is vLLM's (`--goodput ttft:{slo.ttft_ms:g} tpot:{slo.tpot_ms:g}`): requests "
             "per second that met both objectives themselves. *Within SLO*: the rate's p99 TTFT and p99 TPOT meet it "
             "and no request failed. Prefix-cache hits: share of the pass's prompt tokens the server's prefix cache served.", ""]
    for w in meta["workloads"]:
        title = f"## Workload {w['name']}: {lengths(w)}"
        parts += [title, "", *table(runs, w["name"], slo), ""]
    if any((p.get("prefix_cache") or {}).get("hits") for p in rows(runs) if not p.get("prefix_len")):
        parts += ["Prefix-cache hits above zero in a workload without a shared prefix: vLLM's random dataset builds each prompt from consecutive token ids "
                  "at a random start, and prompts whose starts meet share a prefix (the more often, the smaller the "
                  "vocabulary). Seeds differ per pass; starts can still meet.", ""]
    names = [w["name"] for w in meta["workloads"]]
    parts += ["## Highest rate meeting the SLO", "", "| config | " + " | ".join(f"workload {n}" for n in names) + " |",
              "|" + "---|" * (1 + len(names))]
    timed = rows(runs)
    for run in runs:
        cells = [highest_rate([p for p in timed if p["config"] == run["config"] and p["workload"] == w["name"]], slo)
                 for w in meta["workloads"]]
        parts.append(f"| {run['config']} | " + " | ".join(cells) + " |")
    parts += ["", "Commands:", "", f"    {meta['command']}"]
    for run in runs:
        if "serve_command" in run:
            env = " ".join(f"{k}={v!r}" if v == "" else f"{k}={v}" for k, v in run["env"].items())
            parts.append(f"    {env} {run['serve_command']}")
    bench = next((p["bench_command"] for p in timed), None)
    if bench:
        parts.append(f"    {bench}   # per pass: its --request-rate, --seed, lengths and --label")
    return "\n".join(parts) + "\n"


def merge(paths: list[Path]) -> tuple[dict, list[dict]]:
    """One report's meta and runs from several runs' JSON files (one device call per configuration, say):
    they must share preset, workloads, requests per rate and SLO; their commands are all kept."""
    loaded = [json.loads(Path(p).read_text()) for p in paths]
    first = loaded[0]
    for key in ("preset", "workloads", "num_prompts", "slo"):
        if differ := [str(p) for p, d in zip(paths, loaded) if d[key] != first[key]]:
            raise ValueError(f"cannot merge: {key} differs between {paths[0]} and {', '.join(differ)}")
    meta = {k: v for k, v in first.items() if k != "runs"}
    meta["command"] = "\n    ".join(dict.fromkeys(d["command"] for d in loaded))
    commits = dict.fromkeys(d["versions"]["commit"] for d in loaded)
    meta["versions"] = {**first["versions"], "commit": ", ".join(commits)}
    return meta, [run for d in loaded for run in d["runs"]]


def plot(runs: list[dict], workload: dict, slo: SLO, path: Path) -> None:
    """p50 (dashed) and p99 (solid) TTFT and TPOT against request rate, one colour per config; goodput bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timed = [p for p in rows(runs) if p["workload"] == workload["name"] and "result" in p]
    rates = sorted({p["rate"] for p in timed}, key=rate_value)
    configs = list(dict.fromkeys(p["config"] for p in timed))
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for ax, metric, name, limit in ((axes[0], "ttft", "TTFT", slo.ttft_ms), (axes[1], "tpot", "TPOT", slo.tpot_ms)):
        for i, config in enumerate(configs):
            mine = sorted(((rates.index(p["rate"]), p["result"]) for p in timed if p["config"] == config),
                          key=lambda t: t[0])
            xs = [x for x, _ in mine]
            for q, style in (("p50", "--"), ("p99", "-")):
                ax.plot(xs, [r.get(f"{q}_{metric}_ms", math.nan) for _, r in mine], style, marker="o", color=f"C{i}",
                        label=f"{config} {q}")
        ax.axhline(limit, color="black", linestyle=":", label=f"SLO (p99) {limit:g} ms")
        ax.set_yscale("log")
        ax.set_ylabel(f"{name} (ms)")
        ax.set_title(f"{name}: p50 dashed, p99 solid")
    width = 0.8 / max(len(configs), 1)
    for i, config in enumerate(configs):
        mine = {p["rate"]: p["result"].get("request_goodput") or 0.0 for p in timed if p["config"] == config}
        axes[2].bar([k + (i - (len(configs) - 1) / 2) * width for k in range(len(rates))],
                    [mine.get(r, 0.0) for r in rates], width, color=f"C{i}", label=config)
    axes[2].set_ylabel("goodput (req/s within the SLO)")
    axes[2].set_title(f"goodput (per request: TTFT <= {slo.ttft_ms / 1000:g} s, TPOT <= {slo.tpot_ms:g} ms)")
    for ax in axes:
        ax.set_xticks(range(len(rates)), rates)
        ax.set_xlabel("request rate (req/s; inf: all at once)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"workload {workload['name']}: {lengths(workload)}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(meta: dict, runs: list[dict], out: Path, stem: str) -> str:
    """Write <stem>.json, <stem>.md and <stem>-<workload>.png to `out`; returns the Markdown."""
    (out / f"{stem}.json").write_text(json.dumps({**meta, "runs": runs}, indent=2))
    text = markdown(meta, runs)
    (out / f"{stem}.md").write_text(text)
    slo = SLO(**meta["slo"])
    for w in meta["workloads"]:
        plot(runs, w, slo, out / f"{stem}-{w['name']}.png")
    return text
