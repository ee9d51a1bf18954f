"""`kvcomp-vllm eval report`: the quality page from small results.json fixtures (tables with intervals and n,
plots, grids run in parts pooled, repeats refused) and the committed page as the README's command writes it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvcomp_vllm.cli import main
from kvcomp_vllm.eval.scores import summarize
from kvcomp_vllm.eval.stats import wilson

from test_eval_plan import README, readme_eval_commands

ROOT = README.parent
PNG = b"\x89PNG\r\n\x1a\n"


def _records(table: dict) -> list[dict]:
    """Records from {setting: {task: [0/1 per prompt]}} as `report.records` writes them."""
    rows = []
    for setting, tasks in table.items():
        policy, _, budget = setting.partition("@")
        budget = None if not budget else float(budget[:-1]) / 100 if budget.endswith("%") else int(budget[:-3])
        for task, column in tasks.items():
            for index, right in enumerate(column):
                rows.append(dict(policy=policy, variant=policy, budget=budget, setting=setting, task=task,
                                 length=512, depth=None, index=index, answer="1", output="1" if right else "0",
                                 correct=bool(right)))
    return rows


def _write(folder: Path, table: dict, model: str = "/models/tiny") -> Path:
    folder.mkdir(parents=True)
    run = dict(model=model, lengths=[512], samples=4, dtype="float32", corpus="generated",
               generations=sum(len(c) for t in table.values() for c in t.values()))
    (folder / "results.json").write_text(json.dumps(dict(run=run, records=_records(table))))
    return folder


TABLE = {"full": {"needle": [1, 1, 1, 0], "passkey": [1, 0, 1, 1]},
         "snapkv@10%": {"needle": [1, 0, 1, 0], "passkey": [1, 0, 1, 1]},
         "snapkv@64tok": {"needle": [0, 0, 1, 0], "passkey": [0, 0, 0, 1]}}


def test_the_page_has_plots_and_tables_with_intervals_and_n(tmp_path, capsys):
    source = _write(tmp_path / "grid-a", TABLE)
    out = tmp_path / "page"
    assert main(["eval", "report", f"{source}=Tiny:a", "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    assert (out / "tiny_a_score.png").read_bytes()[:8] == PNG
    assert (out / "tiny_a_relative.png").read_bytes()[:8] == PNG
    page = (out / "README.md").read_text()
    assert f"kvcomp-vllm eval report {source}=Tiny:a --out {out}" in page
    assert "## Tiny" in page and "### a" in page
    assert "**n per cell: needle 4, passkey 4 (8 prompts per setting).**" in page
    summary = {(r["setting"], r["task"]): r for r in summarize(_records(TABLE))}
    snap = summary[("snapkv@10%", "all")]
    # needle 2/4 against full's 3/4, passkey 3/4 against 3/4: (2/3 + 1) / 2 = 83%.
    assert snap["relative"] == pytest.approx(5 / 6)
    assert (f"| snapkv | 0.625 [{snap['lo']:.2f}, {snap['hi']:.2f}] · 83% [{snap['rel_lo'] * 100:.0f}, "
            f"{snap['rel_hi'] * 100:.0f}] |") in page
    lo, hi = wilson(2, 4)
    needle = summary[("snapkv@10%", "needle")]
    assert (f"| snapkv@10% | 2/4 [{lo:.2f}, {hi:.2f}] · 67% [{needle['rel_lo'] * 100:.0f}, "
            f"{needle['rel_hi'] * 100:.0f}] | 3/4 [") in page
    assert "| full | 0.750 [" in page and "(reference, every budget)" in page


def test_parts_of_one_grid_are_pooled_and_repeats_refused(tmp_path):
    whole = _write(tmp_path / "whole", TABLE)
    part = {s: {"needle": t["needle"]} for s, t in TABLE.items()}
    rest = {s: {"passkey": t["passkey"]} for s, t in TABLE.items()}
    one, two = _write(tmp_path / "needle", part), _write(tmp_path / "passkey", rest)
    assert main(["eval", "report", f"{whole}=Tiny:g", "--out", str(tmp_path / "p1")]) == 0
    assert main(["eval", "report", f"{one}=Tiny:g", f"{two}=Tiny:g", "--out", str(tmp_path / "p2")]) == 0
    tables = [(tmp_path / p / "README.md").read_text().split("### g", 1)[1].split("\n\n", 2)[2] for p in ("p1", "p2")]
    assert tables[0] == tables[1]  # the same numbers from the grid run whole or in two parts
    with pytest.raises(SystemExit) as exit_:
        main(["eval", "report", f"{one}=Tiny:g", f"{one}=Tiny:g", "--out", str(tmp_path / "p3")])
    assert exit_.value.code == 2
    assert main(["eval", "report", str(one), "--tasks", "needle", "--out", str(tmp_path / "p4")]) == 0
    page = (tmp_path / "p4" / "README.md").read_text()
    assert "## tiny" in page and "### needle" in page  # the model folder's and the results folder's names


def test_the_committed_page_is_what_the_readmes_command_writes(tmp_path, monkeypatch):
    (command,) = readme_eval_commands(report=True)
    assert command[command.index("--out") + 1] == "benchmarks/results/quality"
    monkeypatch.chdir(ROOT)
    out = tmp_path / "quality"
    argv = [str(out) if a == "benchmarks/results/quality" else a for a in command]
    assert main(argv) == 0
    committed = (ROOT / "benchmarks/results/quality/README.md").read_text()
    assert (out / "README.md").read_text().replace(str(out), "benchmarks/results/quality") == committed
    for png in (ROOT / "benchmarks/results/quality").glob("*.png"):
        assert (out / png.name).exists(), png.name
