"""`kvcomp-vllm eval report`: one quality page (README.md + plots) from the results.json of one or more grids.

    kvcomp-vllm eval report RESULTS[=MODEL[:LABEL]]... --out benchmarks/results/quality \
        [--tasks needle,passkey,multikey,multidoc] [--notes FILE]

RESULTS is a folder holding results.json (or the file). Results are grouped per MODEL (default: the
name of the run's model folder), one section each, and within it per LABEL (default: the folder's
name) plots of score and share of full KV against the budget, every line with its 95% band, full
KV's line, and a table.
Results given the same MODEL and LABEL are one grid run in parts (say one task each): their records
are pooled, and a prompt may appear in only one of them. Nothing is recomputed from a summary: every
number comes from the per-prompt records.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from . import plots
from .report import cell_sizes, markdown_table, method_note, task_table
from .scores import summarize

_PROMPT = ("setting", "task", "length", "depth", "index")


@dataclass
class Source:
    """The records of one grid (maybe run in parts), under its model and label."""

    model: str
    label: str
    paths: list[Path] = field(default_factory=list)
    runs: list[dict] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)


def _results_path(text: str) -> Path:
    path = Path(text)
    return path / "results.json" if path.is_dir() else path


def parse_source(text: str) -> tuple[Path, str | None, str | None]:
    """'DIR[=MODEL[:LABEL]]' -> (results.json path, model or None, label or None)."""
    where, _, name = text.partition("=")
    model, _, label = name.partition(":")
    path = _results_path(where)
    if not path.is_file():
        raise ValueError(f"{where}: no results.json there")
    return path, model or None, label or None


def load_sources(specs: list[str], tasks: list[str] | None = None) -> list[Source]:
    """The sources `specs` name, in order, each (model, label) once, records of `tasks` only (None: all)."""
    sources: dict[tuple[str, str], Source] = {}
    for spec in specs:
        path, model, label = parse_source(spec)
        data = json.loads(path.read_text())
        model = model or Path(data["run"]["model"]).name
        label = label or path.parent.name
        source = sources.setdefault((model, label), Source(model, label))
        seen = {tuple(r.get(k) for k in _PROMPT) for r in source.records}
        records = [r for r in data["records"] if tasks is None or r["task"] in tasks]
        repeated = [key for key in (tuple(r.get(k) for k in _PROMPT) for r in records) if key in seen]
        if repeated:
            raise ValueError(f"{spec}: {len(repeated)} records repeat ones of {source.paths[0]} "
                             f"(first: {repeated[0]}); pool only disjoint parts of one grid")
        if not records:
            raise ValueError(f"{spec}: no records of the tasks {', '.join(tasks or [])}")
        source.paths.append(path)
        source.runs.append(data["run"])
        source.records += records
    return list(sources.values())


def slug(text: str) -> str:
    """A file-name form of a model name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-").lower()


def _run_facts(source: Source) -> str:
    """One line of what the source's grids ran: lengths, dtype, corpus, prompts per task and length."""
    facts = []
    for path, run in zip(source.paths, source.runs):
        facts.append(f"`{path}`: lengths {', '.join(map(str, run.get('lengths', [])))}, "
                     f"{run.get('samples')} prompts per task and length, dtype {run.get('dtype') or 'not recorded'}, "
                     f"filler {run.get('corpus')}, {run.get('generations')} generations")
    return "; ".join(facts)


def build(sources: list[Source], out: Path, command: str, notes: str | None = None) -> dict[str, Path]:
    """Write `out`/README.md and two plots per source (score, share of full KV); returns the written paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    models = list(dict.fromkeys(s.model for s in sources))
    lines = ["# Answer quality per policy and KV budget", "",
             "Generated from the grids' per-prompt records (`results.json`) by:", "",
             "```bash", command, "```", "",
             "Every number has its 95% interval: per task a Wilson interval, over tasks and for the share of "
             "full KV a bootstrap over prompts (paired with full KV on the same prompts; shares are taken per "
             "task, then averaged). Each table states its n per cell.", ""]
    if notes:
        lines += [notes.strip(), ""]
    for model in models:
        mine = [s for s in sources if s.model == model]
        lines += [f"## {model}", ""]
        for source in mine:
            summary = summarize(source.records)
            lines += [f"### {source.label}", "", _run_facts(source) + ".", ""]
            for metric, what in (("score", "score"), ("relative", "share of full KV")):
                path = out / f"{slug(model)}_{slug(source.label)}_{metric}.png"
                title = f"{model}, {source.label}: {what} (mean over tasks; {cell_sizes(summary)})"
                plots.score_vs_budget(summary, path, metric=metric, title=title)
                paths[path.stem] = path
                lines += [f"![{model}, {source.label}: {what} against the KV budget]({path.name})", ""]
            lines += [f"**{cell_sizes(summary)}.**", "", markdown_table(summary), "", method_note(summary), "",
                      "<details><summary>Per task: right of n [Wilson 95%] · share of full KV [paired bootstrap 95%]"
                      "</summary>", "",
                      task_table(summary), "", "</details>", ""]
    readme = out / "README.md"
    readme.write_text("\n".join(lines))
    paths["README"] = readme
    return paths


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="kvcomp-vllm eval report", description=__doc__.split("\n")[0])
    parser.add_argument("sources", nargs="+", metavar="RESULTS[=MODEL[:LABEL]]",
                        help="a folder with results.json (or the file), its model's name and its label")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/quality"))
    parser.add_argument("--tasks", default=None, help="comma list: only these tasks' records (default: all)")
    parser.add_argument("--notes", type=Path, default=None, help="Markdown put on the page under its header")
    args = parser.parse_args(argv)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    try:
        sources = load_sources(args.sources, tasks)
        notes = args.notes.read_text() if args.notes else None
        paths = build(sources, args.out, shlex.join(["kvcomp-vllm", "eval", "report", *argv]), notes)
    except (ValueError, OSError) as err:
        parser.exit(2, f"kvcomp-vllm eval report: {err}\n")
    print("wrote", ", ".join(str(p) for p in paths.values()))
    return 0
