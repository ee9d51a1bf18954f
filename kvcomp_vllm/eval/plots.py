"""PNG plots of an evaluation: score vs KV budget per policy with 95% bands, and needle heat maps per policy."""

from __future__ import annotations

from pathlib import Path

from .budgets import budget_label


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _row(record: dict) -> str:
    """The line or plot a record belongs to: its variant (results before variants: its policy)."""
    return record.get("variant", record["policy"])


METRICS = {"score": ("score", "lo", "hi"), "relative": ("relative", "rel_lo", "rel_hi")}


def score_vs_budget(summary: list[dict], path: Path, task: str = "all", metric: str = "score",
                    title: str | None = None) -> Path:
    """A panel per budget kind present (ratios, token counts); one line per variant (policy) with its 95%
    interval as a band, and full KV dashed with its band (`metric` score) or at 1 (`metric` relative).

    The x axis is logarithmic with ticks at the budgets evaluated, labelled as the CLI writes them.
    """
    plt = _pyplot()
    value, low, high = METRICS[metric]
    rows = [r for r in summary if r["task"] == task]
    fulls = [r for r in rows if r["policy"] == "full"]
    lines = list(dict.fromkeys(_row(r) for r in rows if r["policy"] != "full"))
    colours = {p: f"C{i % 10}" for i, p in enumerate(lines)}  # one colour per line in every panel
    styles = {p: "-" if i < 10 else ":" for i, p in enumerate(lines)}
    kinds = [(kind, xlabel) for kind, xlabel in ((float, "KV budget (share of the prompt)"), (int, "KV budget (tokens)"))
             if any(type(r["budget"]) is kind for r in rows)] or [(float, "KV budget (share of the prompt)")]
    fig, axes = plt.subplots(1, len(kinds), figsize=(5.5 * len(kinds), 4.2), sharey=True, squeeze=False)
    for ax, (kind, xlabel) in zip(axes[0], kinds):
        for line in lines:
            points = sorted((r["budget"], r[value], r[low], r[high]) for r in rows
                            if _row(r) == line and type(r["budget"]) is kind and r[value] is not None)
            if not points:
                continue
            xs = [p[0] for p in points]
            ax.plot(xs, [p[1] for p in points], marker="o", markersize=4, label=line, color=colours[line],
                    linestyle=styles[line])
            bands = [(x, lo, hi) for x, _, lo, hi in points if lo is not None and hi is not None]
            if bands:
                ax.fill_between([b[0] for b in bands], [b[1] for b in bands], [b[2] for b in bands],
                                color=colours[line], alpha=0.12, linewidth=0)
        for full in fulls:
            ax.axhline(1.0 if metric == "relative" else full["score"], color="black", linestyle="--", linewidth=1,
                       label="full KV")
            if metric == "score":
                ax.axhspan(full["lo"], full["hi"], color="black", alpha=0.06, linewidth=0)
        ax.set_xscale("log")
        budgets = sorted({r["budget"] for r in rows if type(r["budget"]) is kind})
        if budgets:
            ax.set_xticks(budgets, [budget_label(b).removesuffix("tok") for b in budgets])
            ax.minorticks_off()
        ax.set_xlabel(xlabel)
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel(f"{'share of full KV' if metric == 'relative' else 'score'} ({task}), 95% bands")
    if metric == "score":
        axes[0][0].set_ylim(-0.02, 1.02)
    merged = {}
    for ax in axes[0]:
        handles, labels = ax.get_legend_handles_labels()
        merged.update(zip(labels, handles))
    ncol = min(len(merged), 3 * len(kinds))  # entries per legend row that fit the figure's width
    legend_rows = -(-len(merged) // ncol) if merged else 0
    head = 0.06 if title else 0.0  # the title's share of the figure's height, above the legend
    if title:
        fig.suptitle(title, y=0.99, fontsize=10)
    fig.legend(merged.values(), merged.keys(), loc="upper center", bbox_to_anchor=(0.5, 1 - head),
               ncol=max(ncol, 1), frameon=False, fontsize=8)
    top = 1 - head - 0.06 * legend_rows
    fig.tight_layout(rect=(0, 0, 1, top))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def needle_heatmaps(rows: list[dict], out: Path) -> list[Path]:
    """One PNG per variant (policy): a panel per budget, context length (rows) x needle depth (columns), mean score."""
    plt = _pyplot()
    import numpy as np

    needle = [r for r in rows if r["task"] == "needle"]
    lengths = sorted({r["length"] for r in needle})
    depths = sorted({r["depth"] for r in needle})
    paths = []
    for policy in dict.fromkeys(_row(r) for r in needle):
        budgets = sorted({r["budget"] for r in needle if _row(r) == policy},
                         key=lambda b: (b is not None and isinstance(b, int), b or 0))
        fig, axes = plt.subplots(1, len(budgets), figsize=(2.2 + 2.4 * len(budgets), 0.9 + 0.45 * len(lengths)),
                                 squeeze=False)
        for ax, budget in zip(axes[0], budgets):
            grid = np.full((len(lengths), len(depths)), np.nan)
            for i, length in enumerate(lengths):
                for j, depth in enumerate(depths):
                    hits = [r["correct"] for r in needle if _row(r) == policy and r["budget"] == budget
                            and r["length"] == length and r["depth"] == depth]
                    if hits:
                        grid[i, j] = sum(hits) / len(hits)
            ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto", origin="lower")
            ax.set_xticks(range(len(depths)), [f"{d:g}" for d in depths], fontsize=7)
            ax.set_yticks(range(len(lengths)), [str(n) for n in lengths], fontsize=7)
            ax.set_title("full KV" if budget is None else budget_label(budget), fontsize=9)
            ax.set_xlabel("needle depth", fontsize=8)
        axes[0][0].set_ylabel("context length (tokens)", fontsize=8)
        fig.suptitle(f"needle retrieval: {policy}", fontsize=10)
        fig.tight_layout()
        path = out / f"needle_{policy}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
